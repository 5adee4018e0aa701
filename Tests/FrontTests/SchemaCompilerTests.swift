import Testing
import JSONSchema
@testable import Front

/// response_format json_schema: what the front compiles a schema to, and the 400s for what it cannot enforce.
@Suite("JSON schema compiler")
struct SchemaCompilerTests {
    static let chat = #"{"messages":[{"role":"user","content":"u"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","strict":true,"schema":"#

    static func program(_ schema: String) throws -> SchemaProgram {
        let body = Array((chat + schema + "}}}").utf8)
        let r = try APIDecoder.decodeGeneration(kind: .chatCompletions, body: body, id: 1, sessionHeader: nil, peer: .unknown)
        #expect(r.sampling.jsonObject)
        let sub = WorkerPool.submitRecord(for: r, defaults: SamplingDefaults(), defaultMaxTokens: 8)
        #expect(sub.sampling.jsonSchema == r.sampling.jsonSchema)
        return try SchemaProgram(decoding: r.sampling.jsonSchema)
    }

    static func error(_ schema: String) -> APIError? {
        let body = Array((chat + schema + "}}}").utf8)
        do {
            _ = try APIDecoder.decodeGeneration(kind: .chatCompletions, body: body, id: 1, sessionHeader: nil, peer: .unknown)
            return nil
        } catch { return error }
    }

    static func lit(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test func compilesTheSupportedKeywords() throws {
        let p = try Self.program(#"""
            {"type":"object","title":"Person","properties":{
               "name":{"type":"string","minLength":1,"maxLength":20,"description":"d"},
               "age":{"type":"integer"},
               "tags":{"type":"array","items":{"type":"string"},"maxItems":3},
               "kind":{"enum":["a","b",1.5,null]},
               "opt":{"anyOf":[{"type":"number"},{"type":"null"}],"default":null},
               "flag":{"type":["boolean","null"]},
               "c":{"const":"x\"y"}},
             "required":["name","age"],"additionalProperties":false}
            """#)
        guard case .object(let props, let required, let additional) = p.nodes[0] else { Issue.record("root \(p.nodes[0])"); return }
        #expect(props.map { String(decoding: $0.name, as: UTF8.self) } == ["name", "age", "tags", "kind", "opt", "flag", "c"])
        #expect(required == 0b11 && additional == -1)
        let node = { (k: Int) in p.nodes[Int(props[k].node)] }
        #expect(node(0) == .string(minLength: 1, maxLength: 20))
        #expect(node(1) == .integer)
        guard case .array(let items, 0, 3) = node(2) else { Issue.record("tags \(node(2))"); return }
        #expect(p.nodes[Int(items)] == .string(minLength: 0, maxLength: SchemaProgram.unbounded))
        #expect(node(3) == .literals([Self.lit("\"a\""), Self.lit("\"b\""), Self.lit("1.5"), Self.lit("null")]))
        guard case .anyOf(let alts) = node(4), alts.count == 2 else { Issue.record("opt \(node(4))"); return }
        #expect(p.nodes[Int(alts[0])] == .number && p.nodes[Int(alts[1])] == .literals([Self.lit("null")]))
        guard case .anyOf(let flag) = node(5) else { Issue.record("flag \(node(5))"); return }
        #expect(flag.map { p.nodes[Int($0)] } == [.literals([Self.lit("true"), Self.lit("false")]), .literals([Self.lit("null")])])
        #expect(node(6) == .literals([Self.lit(#""x\"y""#)]))
    }

    @Test func refsDefsAndDefaults() throws {
        // Pydantic's shape: $defs and $ref, a recursive model, additionalProperties absent (other keys allowed).
        let p = try Self.program(#"""
            {"$defs":{"Node":{"type":"object","properties":{"v":{"type":"integer"},
               "next":{"anyOf":[{"$ref":"#/$defs/Node"},{"type":"null"}]}},"required":["v","next"]}},
             "type":"object","properties":{"head":{"$ref":"#/$defs/Node"}},"required":["head"]}
            """#)
        guard case .object(let props, 1, let additional) = p.nodes[0] else { Issue.record("root \(p.nodes[0])"); return }
        #expect(additional >= 0 && p.nodes[Int(additional)] == .any)
        guard case .anyOf(let head) = p.nodes[Int(props[0].node)], case .object(let inner, 0b11, _) = p.nodes[Int(head[0])] else {
            Issue.record("head \(p.nodes[Int(props[0].node)])"); return
        }
        guard case .anyOf(let next) = p.nodes[Int(inner[1].node)], case .anyOf(let back) = p.nodes[Int(next[0])] else {
            Issue.record("next"); return
        }
        #expect(back == [head[0]], "the recursive $ref points back at the same node")
        #expect(p.minDepth[0] == 2)
        // Root by $ref, and "#" recursion.
        _ = try Self.program(##"{"$ref":"#/definitions/R","definitions":{"R":{"type":"object","properties":{"r":{"$ref":"#"}}}}}"##)
        // A required property not listed takes the additional properties' schema.
        let q = try Self.program(#"{"type":"object","additionalProperties":{"type":"integer"},"required":["n"]}"#)
        guard case .object(let qp, 1, let qa) = q.nodes[0] else { Issue.record("\(q.nodes[0])"); return }
        #expect(qp == [.init(name: Self.lit("n"), node: qa)] && q.nodes[Int(qa)] == .integer)
    }

    /// Review findings: reference cycles and chains, const null, enum siblings, oneOf, type lists.
    @Test func edgeCasesCompileToWhatTheyMean() throws {
        for cyclic in [##"{"$ref":"#"}"##, ##"{"allOf":[{"$ref":"#"}]}"##,
                       ##"{"$ref":"#/$defs/A","$defs":{"A":{"$ref":"#/$defs/B"},"B":{"$ref":"#/$defs/A"}}}"##] {
            #expect(Self.error(cyclic)?.status == 400, "\(cyclic)")
        }
        let chain = (0..<4000).map { "\"A\($0)\":{\"$ref\":\"#/$defs/A\($0 + 1)\"}" }.joined(separator: ",")
        let long = ##"{"type":"object","properties":{"x":{"$ref":"#/$defs/A0"}},"$defs":{"## + chain + ##","A4000":{"type":"string"}}}"##
        #expect(Self.error(long)?.message.contains("nests") == true)
        // const null admits null only; with another type, nothing.
        let n = try Self.program(#"{"type":"object","properties":{"x":{"const":null},"y":{"enum":[1,null],"const":null}}}"#)
        guard case .object(let props, _, _) = n.nodes[0] else { Issue.record("\(n.nodes[0])"); return }
        #expect(n.nodes[Int(props[0].node)] == .literals([Self.lit("null")]) && n.nodes[Int(props[1].node)] == .literals([Self.lit("null")]))
        #expect(Self.error(#"{"type":"object","properties":{"x":{"type":"string","const":null}}}"#)?.message.contains("enum/const") == true)
        #expect(Self.error(#"{"type":"object","properties":{"x":{"type":"string","enum":["a","abc"],"maxLength":2}}}"#)?.message.contains("maxLength beside enum") == true)
        // oneOf: exact only when the alternatives cannot overlap.
        #expect(Self.error(#"{"type":"object","properties":{"x":{"oneOf":[{"type":"integer"},{"type":"number"}]}}}"#)?.message.contains("oneOf") == true)
        _ = try Self.program(#"{"type":"object","properties":{"x":{"oneOf":[{"type":"integer"},{"type":"string"},{"type":"null"}]}}}"#)
        _ = try Self.program(##"""
            {"type":"object","properties":{"pet":{"oneOf":[{"$ref":"#/$defs/Cat"},{"$ref":"#/$defs/Dog"}],
              "discriminator":{"propertyName":"kind","mapping":{"cat":"#/$defs/Cat","dog":"#/$defs/Dog"}}}},
             "$defs":{"Cat":{"type":"object","properties":{"kind":{"const":"cat"},"lives":{"type":"integer"}},"required":["kind"]},
                      "Dog":{"type":"object","properties":{"kind":{"enum":["dog"]},"good":{"type":"boolean"}},"required":["kind"]}}}
            """##)
        #expect(Self.error(#"{"type":"object","properties":{"x":{"oneOf":[{"type":"object"},{"type":"object","properties":{"a":{}}}]}}}"#) != nil)
        // Type lists take the keywords of the types they apply to.
        let t = try Self.program(#"{"type":"object","properties":{"s":{"type":["string","null"],"maxLength":5},"o":{"type":["object","null"],"properties":{"a":{"type":"integer"}},"required":["a"]}}}"#)
        guard case .object(let tp, _, _) = t.nodes[0], case .anyOf(let sAlts) = t.nodes[Int(tp[0].node)] else { Issue.record("\(t.nodes)"); return }
        #expect(sAlts.map { t.nodes[Int($0)] } == [.string(minLength: 0, maxLength: 5), .literals([Self.lit("null")])])
        #expect(Self.error(#"{"type":"object","properties":{"x":{"type":["integer","null"],"maxLength":3}}}"#)?.message.contains("does not apply") == true)
        // Integral numbers as integers, wherever they are written so.
        let i = try Self.program(#"{"type":"object","properties":{"e":{"type":"integer","enum":[1e20, 2.0]},"a":{"type":"array","maxItems":2.0}}}"#)
        guard case .object(let ip, _, _) = i.nodes[0] else { return }
        #expect(i.nodes[Int(ip[0].node)] == .literals([Self.lit("1e+20"), Self.lit("2.0")]))
    }

    @Test func refusesWhatItCannotEnforce() {
        let cases: [(String, String)] = [
            (#"{"type":"object","properties":{"a":{"type":"string","pattern":"^x"}}}"#, "pattern"),
            (#"{"type":"object","properties":{"a":{"type":"integer","minimum":1}}}"#, "minimum"),
            (#"{"type":"object","properties":{"a":{"type":"string","format":"date-time"}}}"#, "format"),
            (#"{"type":"array","items":{}}"#, "root schema must be of type"),
            (#"{"anyOf":[{"type":"object"},{"type":"object"}]}"#, "root schema must be of type"),
            (##"{"type":"object","properties":{"a":{"$ref":"#/$defs/Missing"}}}"##, "points nowhere"),
            (#"{"type":"object","properties":{"a":{"$ref":"http://x/s.json"}}}"#, "only local $ref"),
            (#"{"type":"object","properties":{"a":{"allOf":[{"type":"string"},{"maxLength":2}]}}}"#, "allOf"),
            (#"{"type":"object","properties":{"a\"b":{}}}"#, "property name"),
            (#"{"type":"object","properties":{"a":{"type":"string","minLength":3,"maxLength":2}}}"#, "minLength"),
            (#"{"type":"object","properties":{"a":{"type":"strin"}}}"#, "unknown type"),
            (#"{"type":"object","properties":{"a":{"type":"string","items":{}}}}"#, "items does not apply"),
            (#"{"type":"object","properties":{"a":false}}"#, "false"),
            (##"{"type":"object","properties":{"a":{"$ref":"#"}},"required":["a"]}"##, "no JSON value satisfies"),
            (#"{"type":"object","additionalProperties":false,"required":["z"]}"#, "additionalProperties is false"),
            (#"{"type":"object","properties":{"e":{"type":"string","enum":[1,2]}}}"#, "enum"),
            (#"{"type":"object","properties":{"a":{"type":"array","minItems":-1}}}"#, "minItems"),
            (#"{"type":"object","properties":{"a":{"type":"array","items":[{}]}}}"#, "tuple"),
            (#""object""#, "a schema must be an object"),
        ]
        for (schema, needle) in cases {
            let e = Self.error(schema)
            #expect(e?.status == 400 && e?.param == "response_format" && (e?.message.contains(needle) ?? false),
                    "\(schema): \(String(describing: e?.message))")
        }
        // More properties than the grammar tracks, and too many nodes.
        let many = (0...SchemaProgram.maxProperties).map { "\"p\($0)\":{}" }.joined(separator: ",")
        #expect(Self.error(#"{"type":"object","properties":{"# + many + "}}")?.message.contains("properties") == true)
        let alts = "{\"anyOf\":[" + Array(repeating: #"{"type":"integer"}"#, count: SchemaProgram.maxAnyOf).joined(separator: ",") + "]}"
        let wide = (0..<SchemaProgram.maxProperties).map { "\"p\($0)\":" + alts }.joined(separator: ",")
        #expect(Self.error(#"{"type":"object","properties":{"# + wide + "}}")?.message.contains("nodes") == true)
    }
}
