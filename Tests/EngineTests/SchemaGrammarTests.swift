import Foundation
import Testing
import JSONSchema
@testable import Engine

@Suite("JSON schema grammar")
struct SchemaGrammarTests {
    typealias N = SchemaProgram.Node
    static func lit(_ s: String) -> [UInt8] { Array(s.utf8) }
    static func prop(_ n: String, _ node: Int32) -> SchemaProgram.Property { .init(name: Array(n.utf8), node: node) }

    /// {name: string 1...20 (required), age: integer (required), tags: [string] ≤ 3, kind: "a" | "b",
    ///  opt: number | null}, no other keys.
    static func person() throws -> SchemaProgram {
        try SchemaProgram(nodes: [
            .object(properties: [prop("name", 1), prop("age", 2), prop("tags", 3), prop("kind", 5), prop("opt", 6)],
                    required: 0b11, additional: -1),
            .string(minLength: 1, maxLength: 20), .integer, .array(items: 4, minItems: 0, maxItems: 3),
            .string(minLength: 0, maxLength: SchemaProgram.unbounded), .literals([lit("\"a\""), lit("\"b\"")]),
            .anyOf([7, 8]), .number, .literals([lit("null")]),
        ])
    }

    static func grammar(_ p: SchemaProgram) -> SchemaGrammar { SchemaGrammar(SchemaGrammar.Compiled(p)) }

    /// The index of the first refused byte, or nil.
    static func feed(_ text: String, _ g: inout SchemaGrammar) -> Int? {
        for (i, b) in text.utf8.enumerated() where !g.step(b) { return i }
        return nil
    }

    static func check(_ p: SchemaProgram, valid: [String], invalid: [(String, Int)], sourceLocation: SourceLocation = #_sourceLocation) {
        for doc in valid {
            var g = grammar(p)
            let at = feed(doc, &g)
            #expect(at == nil && g.isComplete, "\(doc): refused at \(String(describing: at)), complete \(g.isComplete)", sourceLocation: sourceLocation)
            let space = g.step(0x20)
            #expect(!space, "nothing may follow the closed object", sourceLocation: sourceLocation)
        }
        for (doc, want) in invalid {
            var g = grammar(p)
            let at = feed(doc, &g)
            #expect(at == want, "\(doc): refused at \(String(describing: at)), expected \(want)", sourceLocation: sourceLocation)
        }
    }

    @Test func objectsTakeTheirPropertiesOnceAndNeedTheRequiredOnes() throws {
        Self.check(try Self.person(), valid: [
            #"{"name":"Al","age":30}"#,
            "{ \"age\": -3,\n  \"name\": \"Zoë\", \"tags\": [\"x\", \"\"], \"kind\": \"b\", \"opt\": null }",
            #"{"name":"a","age":0,"opt":1.5e3,"tags":[]}"#,
        ], invalid: [
            (#"{"age":1}"#, 8),                       // '}' without name
            (#"{"name":"","age":1}"#, 9),             // minLength 1
            (#"{"name":"a","age":1.5}"#, 19),          // integer: no fraction
            (#"{"name":"a","name":"b"}"#, 13),        // a key twice: no unseen property starts with "n"
            (#"{"nam":1}"#, 5),                        // not a property
            (#"{"x":1}"#, 2),
            (#"{"name":"a","age":1,"tags":["a","b","c","d"]}"#, 39),   // maxItems 3: the third ','
            (#"{"name":"a","age":1,"name":"b"}"#, 21),
            (#"{"name":"a","age":1,"kind":"c"}"#, 28),
            (#"{"name":"a","age":1,"opt":true}"#, 26),
            (#"{"name":"a","age":1,"opt":"1"}"#, 26),
            (#"{"name":1}"#, 8),
            ("[", 0), (#"{"name":"a","age":1,}"#, 20),
        ])
    }

    @Test func stringLengthsCountCharacters() throws {
        let p = try SchemaProgram(nodes: [.object(properties: [Self.prop("s", 1)], required: 1, additional: -1),
                                          .string(minLength: 2, maxLength: 2)])
        Self.check(p, valid: [#"{"s":"é😀"}"#, #"{"s":"\u00e9x"}"#, #"{"s":"\ud83d\ude00\n"}"#, #"{"s":"ab"}"#],
                   invalid: [(#"{"s":"abc"}"#, 8), (#"{"s":"a"}"#, 7), (#"{"s":"\ud83d\ude00\n\t"}"#, 20)])
    }

    @Test func literalsNumbersAndFreeValues() throws {
        let p = try SchemaProgram(nodes: [
            .object(properties: [Self.prop("e", 1), Self.prop("m", 2), Self.prop("i", 3)], required: 0, additional: -1),
            .literals([Self.lit("1"), Self.lit("12"), Self.lit("{\"k\":[true]}")]), .any, .integer,
        ])
        Self.check(p, valid: [#"{"e":12}"#, #"{"e":1}"#, #"{"e":1 }"#, #"{"e":{"k":[true]}}"#, #"{"m":{"k":[1,{"z":null}]},"e":1}"#,
                              #"{"m":[0,{"a":1}]}"#,
                              #"{"m":12}"#, #"{"m":-0.5e-7,"i":-0}"#, #"{"m":"x","i":10}"#, #"{}"#],
                   invalid: [(#"{"e":13}"#, 6), (#"{"e":2}"#, 5), (#"{"e":{"k": [true]}}"#, 10), (#"{"i":01}"#, 6),
                             (#"{"i":1e3}"#, 6), (#"{"m":}"#, 5), (#"{"m":1,}"#, 7),
                             (#"{"m":[0}"#, 7), (#"{"m":{"a":1]}"#, 11)])   // a number inside a free value does not end it
    }

    @Test func additionalPropertiesAnyOfAndRecursion() throws {
        // Other keys with an integer schema.
        let extra = try SchemaProgram(nodes: [.object(properties: [Self.prop("a", 1)], required: 0, additional: 2),
                                              .literals([Self.lit("true")]), .integer])
        Self.check(extra, valid: [#"{"x":1,"y":2,"a":true}"#, #"{"ab":3}"#, #"{"é":4}"#, #"{"x":1,"xx":2}"#],
                   invalid: [(#"{"x":"s"}"#, 5), (#"{"a":1}"#, 5), (#"{"a":true,"a":true}"#, 12), (#"{"":1}"#, 2), (#"{"\n":1}"#, 2),
                             (#"{"x":1,"y":2,"x":3}"#, 15)])   // another key used twice: its closing quote
        // anyOf of two objects told apart by a literal.
        let tagged = try SchemaProgram(nodes: [
            .object(properties: [Self.prop("v", 1)], required: 1, additional: -1), .anyOf([2, 5]),
            .object(properties: [Self.prop("t", 3), Self.prop("x", 4)], required: 0b11, additional: -1),
            .literals([Self.lit("\"a\"")]), .integer,
            .object(properties: [Self.prop("t", 6), Self.prop("y", 7)], required: 0b01, additional: -1),
            .literals([Self.lit("\"b\"")]), .string(minLength: 0, maxLength: SchemaProgram.unbounded),
        ])
        Self.check(tagged, valid: [#"{"v":{"t":"b","y":"s"}}"#, #"{"v":{"t":"a","x":1}}"#, #"{"v":{"x":1,"t":"a"}}"#, #"{"v":{"t":"b"}}"#],
                   invalid: [(#"{"v":{"t":"a","y":"s"}}"#, 15), (#"{"v":{"t":"a"}}"#, 13), (#"{"v":{"x":"s"}}"#, 10)])
        // A tree: {child: tree | null}, required.
        let tree = try SchemaProgram(nodes: [.object(properties: [Self.prop("child", 1)], required: 1, additional: -1),
                                             .anyOf([0, 2]), .literals([Self.lit("null")])])
        #expect(tree.minDepth[0] == 1)
        Self.check(tree, valid: [#"{"child":{"child":{"child":null}}}"#], invalid: [(#"{"child":{}}"#, 10)])
        // Nesting stops where the shortest value would not fit any more: at the limit only null is allowed.
        var g = Self.grammar(tree)
        let deep = String(repeating: #"{"child":"#, count: SchemaProgram.maxDepth)
        #expect(Self.feed(deep, &g) == nil)
        var probe = g   // a refused byte leaves the state it was fed to meaningless: probe a copy
        let brace = probe.step(0x7B)
        #expect(!brace)
        #expect(Self.feed("null" + String(repeating: "}", count: SchemaProgram.maxDepth), &g) == nil && g.isComplete)
    }

    /// Review findings: anyOf cycles and shared alternatives, other keys whose schema cannot fit, long keys.
    @Test func anyOfCyclesSharedAlternativesAndKeyLimits() throws {
        // A = anyOf[A, string]: a string (no recursion).
        let left = try SchemaProgram(nodes: [.object(properties: [Self.prop("x", 1)], required: 1, additional: -1),
                                             .anyOf([1, 2]), .string(minLength: 0, maxLength: SchemaProgram.unbounded)])
        Self.check(left, valid: [#"{"x":"a"}"#], invalid: [(#"{"x":1}"#, 5)])
        // Four levels of 16 references each to the next level, then a string: one alternative in the end.
        var nodes: [SchemaProgram.Node] = [.object(properties: [Self.prop("x", 1)], required: 1, additional: -1)]
        for level in 0..<4 { nodes.append(.anyOf(Array(repeating: Int32(level + 2), count: 16))) }
        nodes.append(.string(minLength: 0, maxLength: SchemaProgram.unbounded))
        let shared = try SchemaProgram(nodes: nodes)
        var g = Self.grammar(shared)
        #expect(Self.feed(#"{"x":"#, &g) == nil)
        let quote = g.step(0x22)
        #expect(quote && g.threads.count == 1)
        // Other keys whose schema has no value (or no room) are not offered: only the properties.
        let bad = try SchemaProgram(nodes: [.object(properties: [Self.prop("a", 1)], required: 0, additional: 2),
                                            .string(minLength: 0, maxLength: SchemaProgram.unbounded),
                                            .object(properties: [Self.prop("b", 2)], required: 1, additional: -1)])
        Self.check(bad, valid: [#"{"a":"x"}"#, #"{}"#], invalid: [(#"{"z":1}"#, 2), (#"{"a":"x","a"#, 8)])   // no key can follow: the ","
        // Other keys may be longer than any property name, so a seen long name does not corner a key.
        let long = String(repeating: "n", count: SchemaProgram.maxNameLength)
        let free = try SchemaProgram(nodes: [.object(properties: [Self.prop(long, 1)], required: 0, additional: 1), .any])
        Self.check(free, valid: ["{\"\(long)\":1,\"\(long)x\":2}", "{\"" + String(repeating: "k", count: 263) + "é\":1}"],
                   invalid: [("{\"" + String(repeating: "k", count: 300) + "\":1}", 2 + SchemaProgram.maxNameLength + 8)])
    }

    /// A forced tool call: the root is an anyOf of `{"name": <literal>, "arguments": {...}}` objects.
    @Test func aRootAnyOfOfObjects() throws {
        let p = try SchemaProgram(nodes: [
            .anyOf([1, 4]),
            .object(properties: [Self.prop("name", 2), Self.prop("arguments", 3)], required: 0b11, additional: -1),
            .literals([Self.lit("\"get_weather\"")]),
            .object(properties: [Self.prop("city", 7)], required: 1, additional: -1),
            .object(properties: [Self.prop("name", 5), Self.prop("arguments", 6)], required: 0b11, additional: -1),
            .literals([Self.lit("\"get_time\"")]),
            .object(properties: [], required: 0, additional: -1),
            .string(minLength: 0, maxLength: SchemaProgram.unbounded),
        ])
        Self.check(p, valid: [#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#, #"{"arguments":{},"name":"get_time"}"#],
                   invalid: [(#"{"name":"get_date""#, 13), (#"{"name":"get_time","arguments":{"city":"x"}}"#, 32),
                             (#"{"name":"get_weather","arguments":{}}"#, 35), ("[", 0)])
        #expect(throws: SchemaProgramError.self) { try SchemaProgram(nodes: [.anyOf([1, 2]), .object(properties: [], required: 0, additional: -1), .integer]) }
    }

    @Test func unsatisfiableAndMalformedProgramsAreRefused() throws {
        // A required property of the object's own schema has no finite value.
        #expect(throws: SchemaProgramError.unsatisfiable) {
            try SchemaProgram(nodes: [.object(properties: [Self.prop("a", 0)], required: 1, additional: -1)])
        }
        #expect(throws: SchemaProgramError.self) { try SchemaProgram(nodes: [.string(minLength: 0, maxLength: 1)]) }
        #expect(throws: SchemaProgramError.self) { try SchemaProgram(nodes: [.object(properties: [Self.prop("a", 5)], required: 0, additional: -1)]) }
        #expect(throws: SchemaProgramError.self) { try SchemaProgram(nodes: [.object(properties: [Self.prop("a\"", 0)], required: 0, additional: -1)]) }
        // The binary form round-trips, and every cut or corrupted copy is refused or decodes to a valid
        // program, never a crash.
        let p = try Self.person()
        let bytes = p.encoded()
        #expect(try SchemaProgram(decoding: bytes) == p)
        for n in 0..<bytes.count { #expect(throws: SchemaProgramError.self) { try SchemaProgram(decoding: Array(bytes[0..<n])) } }
        var rng = TestRNG(seed: 3)
        for _ in 0..<2000 {
            var b = bytes
            for _ in 0..<3 { b[Int(rng.next() % UInt64(b.count))] = UInt8(truncatingIfNeeded: rng.next()) }
            if let q = try? SchemaProgram(decoding: b) {
                var g = Self.grammar(q)
                _ = Self.feed(#"{"name":"a","age":1,"tags":["x"]}"#, &g)
            }
        }
    }

    /// With the real vocabulary: random logits masked for the person schema, sampled and fed back, stay a
    /// prefix of a valid answer; the mask is exact (every 7th token: allowed iff the grammar takes its bytes)
    /// and completed answers parse and carry the required keys.
    @Test func maskedRandomWalksFollowTheSchema() throws {
        let gguf = try GGUFFile(path: try TestPaths.model())
        let tok = try Tokenizer(config: TokenizerConfig(gguf: gguf))
        let table = JSONTokenTable(tokenizer: tok)
        let compiled = SchemaGrammar.Compiled(try Self.person())
        var rng = TestRNG(seed: 11)
        var completed = 0
        var logits = [Float](repeating: 0, count: tok.vocabSize)
        var masked = logits
        for walk in 0..<6 {
            var g = SchemaGrammar(compiled)
            var text: [UInt8] = []
            var sampler = try Sampler(params: SamplingParams(temperature: 1, topK: 0, topP: 1, minP: 0, seed: UInt64(walk)),
                                      vocabSize: tok.vocabSize)
            for _ in 0..<200 {
                for i in logits.indices { logits[i] = rng.float(-4, 4) }
                for (c, boost) in [("}", 10), ("]", 10), ("\"", 9), ("1", 6), (",", 5), ("name", 6), ("age", 6)] as [(String, Float)] {
                    if let id = tok.tokenID(c) { logits[Int(id)] += boost }
                }
                let result = logits.withUnsafeBufferPointer { l in masked.withUnsafeMutableBufferPointer { table.mask(l, state: g, into: $0) } }
                #expect(!result.fallback && (result.text > 0) != g.isComplete, "text tokens allowed: \(result.text), complete: \(g.isComplete)")
                expectExactMask(masked, g, tok, from: walk, context: "after \(String(decoding: text, as: UTF8.self).debugDescription): ")
                let t = masked.withUnsafeBufferPointer { sampler.sample($0) }
                if tok.isEndOfGeneration(t) { #expect(g.isComplete); break }
                #expect(table.advance(&g, token: t), "the sampled token \(t) was refused")
                tok.appendTokenBytes(t, to: &text)
            }
            if g.isComplete {
                completed += 1
                let obj = try? JSONSerialization.jsonObject(with: Data(text)) as? [String: Any]
                #expect(obj?["name"] is String && obj?["age"] is Int, "\(String(decoding: text, as: UTF8.self))")
                #expect(Set(obj.map { Array($0.keys) } ?? []).isSubset(of: ["name", "age", "tags", "kind", "opt"]))
            }
        }
        #expect(completed >= 2, "only \(completed) of 6 walks closed their object")
    }
}
