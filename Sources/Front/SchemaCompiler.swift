// response_format json_schema: compiles the request's JSON Schema into the SchemaProgram the worker's
// grammar enforces (JSONSchema/SchemaProgram.swift, Engine/SchemaGrammar.swift). Every keyword is either
// enforced or refused with a 400 naming it and where it is, so an answer never silently ignores part of a
// schema. Enforced: type (one or a list), properties, required, additionalProperties (absent = any other key
// is allowed, as JSON Schema says), items, minItems, maxItems, minLength, maxLength, enum, const, anyOf,
// oneOf (as anyOf: its alternatives must not overlap for that to be exact), allOf with one schema, $ref to
// "#", "#/$defs/…" or "#/definitions/…" (recursion included). Annotations (title, description, default,
// examples, $schema, $id, $comment, deprecated, readOnly, writeOnly) are ignored.
#if canImport(JSONSchema)   // the fuzz target (fuzz/run) compiles it into its own module
import JSONSchema
#endif

enum SchemaCompiler {
    static let annotations: Set<String> = ["title", "description", "default", "examples", "$schema", "$id", "$comment",
                                           "deprecated", "readOnly", "writeOnly", "$defs", "definitions"]
    static let keywords: Set<String> = ["type", "properties", "required", "additionalProperties", "items", "minItems",
                                        "maxItems", "minLength", "maxLength", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"]

    static let param = "response_format"

    /// The program for `schema` (the `schema` member of response_format.json_schema).
    static func compile(_ schema: JSONValue) throws(APIError) -> SchemaProgram {
        var c = Compiler(root: schema, param: param, prefix: "response_format.json_schema.schema")
        let root = try c.index(schema, path: "#")
        precondition(root == 0)
        // The root must be an object (OpenAI's rule too): a $ref or a one-schema allOf to one is fine.
        let r = c.resolved(root)
        guard case .object = c.nodes[Int(r)] else {
            throw .invalid(param, "response_format.json_schema.schema: the root schema must be of type \"object\"")
        }
        if r != 0 { c.nodes[0] = c.nodes[Int(r)] }
        do {
            return try SchemaProgram(nodes: c.nodes)
        } catch {
            throw .invalid(param, "response_format.json_schema.schema: \(error)")
        }
    }

    /// A forced tool call (tool_choice "required" or a named function): the answer is one JSON object
    /// `{"name": <function>, "arguments": {...}}` whose arguments validate against that function's
    /// `parameters` (each its own schema document: its $refs resolve inside it; absent: no arguments).
    static func compileToolCall(_ tools: [(name: String, parameters: JSONValue?)]) throws(APIError) -> SchemaProgram {
        var c = Compiler(root: .null, param: "tools", prefix: "tools")
        _ = try c.reserve("#")   // node 0: the root, filled in last
        var alts: [Int32] = []
        for (k, tool) in tools.enumerated() {
            c.prefix = "tools[\(k)].function.parameters"
            let args = try c.reserve("#")
            if let parameters = tool.parameters {
                c.root = parameters
                c.refs = [:]
                c.rootNode = args
                c.nodes[Int(args)] = try c.build(parameters, path: "#")
                guard case .object = c.nodes[Int(c.resolved(args))] else {
                    throw .invalid("tools", "tools[\(k)].function.parameters: the schema must be of type \"object\"")
                }
            } else {
                c.nodes[Int(args)] = .object(properties: [], required: 0, additional: -1)
            }
            var name = JSONWriter(capacity: 80)
            name.string(tool.name)
            let nameNode = try c.reserve("#")
            c.nodes[Int(nameNode)] = .literals([name.bytes])
            let call = try c.reserve("#")
            c.nodes[Int(call)] = .object(properties: [.init(name: Array("name".utf8), node: nameNode),
                                                      .init(name: Array("arguments".utf8), node: args)],
                                         required: 0b11, additional: -1)
            alts.append(call)
        }
        c.nodes[0] = alts.count == 1 ? c.nodes[Int(alts[0])] : .anyOf(alts)
        do {
            return try SchemaProgram(nodes: c.nodes)
        } catch {
            throw .invalid("tools", "tools: \(error)")
        }
    }

    struct Compiler {
        /// The schema document "#" refers to, and its node.
        var root: JSONValue
        var rootNode: Int32 = 0
        /// The request field errors name, and the message's prefix.
        let param: String
        var prefix: String
        var nodes: [SchemaProgram.Node] = []
        /// $ref → the node of its target (registered before the target is compiled: recursion terminates).
        var refs: [String: Int32] = [:]
        var anyNode: Int32 = -1

        init(root: JSONValue, param: String, prefix: String) { self.root = root; self.param = param; self.prefix = prefix }

        func fail(_ path: String, _ message: String) -> APIError {
            .invalid(param, "\(prefix) at \(path.prefix(200)): \(message)")
        }

        /// Follows one-alternative anyOf links ($ref, one-schema allOf) to the node they stand for.
        func resolved(_ i: Int32) -> Int32 {
            var r = i, hops = 0
            while case .anyOf(let alts) = nodes[Int(r)], alts.count == 1, hops < nodes.count { r = alts[0]; hops += 1 }
            return r
        }

        mutating func reserve(_ path: String) throws(APIError) -> Int32 {
            guard nodes.count < SchemaProgram.maxNodes else {
                throw fail(path, "the schema compiles to more than \(SchemaProgram.maxNodes) nodes")
            }
            nodes.append(.any)
            return Int32(nodes.count - 1)
        }

        mutating func any() throws(APIError) -> Int32 {
            if anyNode < 0 { anyNode = try reserve("#") }
            return anyNode
        }

        /// A node for schema `v` (at `path`, for messages).
        mutating func index(_ v: JSONValue, path: String) throws(APIError) -> Int32 {
            let i = try reserve(path)
            nodes[Int(i)] = try build(v, path: path)
            return i
        }

        mutating func build(_ v: JSONValue, path: String) throws(APIError) -> SchemaProgram.Node {
            switch v {
            case .bool(true): return .any
            case .bool(false): throw fail(path, "the schema false admits no value")
            case .object(let fields):
                for (k, _) in fields where !SchemaCompiler.keywords.contains(k) && !SchemaCompiler.annotations.contains(k) {
                    throw fail(path, "unsupported keyword '\(k.prefix(64))' (supported: \(SchemaCompiler.keywords.sorted().joined(separator: ", ")))")
                }
                return try buildObject(v, path: path)
            default:
                throw fail(path, "a schema must be an object or a boolean, not \(v.typeName)")
            }
        }

        func has(_ v: JSONValue, _ key: String) -> Bool { if let x = v[key], x != .null { return true } else { return false } }

        mutating func buildObject(_ v: JSONValue, path: String) throws(APIError) -> SchemaProgram.Node {
            let structural = SchemaCompiler.keywords.filter { has(v, $0) }
            if let ref = v["$ref"], ref != .null {
                guard structural == ["$ref"] else { throw fail(path, "$ref beside other keywords is not supported") }
                guard case .string(let r) = ref else { throw fail(path, "$ref must be a string") }
                return .anyOf([try target(r, path: path)])
            }
            for key in ["anyOf", "oneOf", "allOf"] where has(v, key) {
                guard structural == [key] else {
                    throw fail(path, "\(key) beside other keywords (\(structural.sorted().joined(separator: ", "))) is not supported")
                }
                guard case .array(let subs) = v[key]!, !subs.isEmpty else { throw fail(path, "\(key) must be a non-empty array of schemas") }
                if key == "allOf" && subs.count != 1 { throw fail(path, "allOf with more than one schema is not supported") }
                guard subs.count <= SchemaProgram.maxAnyOf else { throw fail(path, "\(key) has more than \(SchemaProgram.maxAnyOf) schemas") }
                var alts: [Int32] = []
                for (k, s) in subs.enumerated() { alts.append(try index(s, path: "\(path)/\(key)/\(k)")) }
                return .anyOf(alts)
            }
            var types: [String]
            switch v["type"] {
            case nil, .null?:
                // No type: what the other keywords describe, or any value.
                if has(v, "enum") || has(v, "const") { types = [] }
                else if has(v, "properties") || has(v, "required") || has(v, "additionalProperties") { types = ["object"] }
                else if has(v, "items") || has(v, "minItems") || has(v, "maxItems") { types = ["array"] }
                else if has(v, "minLength") || has(v, "maxLength") { types = ["string"] }
                else { return .any }
            case .string(let t)?: types = [t]
            case .array(let ts)?:
                types = []
                for t in ts {
                    guard case .string(let s) = t else { throw fail(path, "type must be a string or an array of strings") }
                    if !types.contains(s) { types.append(s) }
                }
                guard !types.isEmpty else { throw fail(path, "type must not be an empty array") }
            default: throw fail(path, "type must be a string or an array of strings")
            }
            let known = ["object", "array", "string", "number", "integer", "boolean", "null"]
            for t in types where !known.contains(t) { throw fail(path, "unknown type '\(t.prefix(64))'") }
            if has(v, "enum") || has(v, "const") { return try literals(v, types: types, path: path) }
            if types.count == 1 { return try single(types[0], v, path: path) }
            var alts: [Int32] = []
            for t in types {
                let i = try reserve(path)
                nodes[Int(i)] = try single(t, v, path: path)
                alts.append(i)
            }
            return .anyOf(alts)
        }

        /// enum / const: the values (of the listed types, if any) written as compact JSON.
        mutating func literals(_ v: JSONValue, types: [String], path: String) throws(APIError) -> SchemaProgram.Node {
            var values: [JSONValue] = []
            if let c = v["const"], c != .null || v["enum"] == nil { values.append(c) }
            if let e = v["enum"], e != .null {
                guard case .array(let vs) = e, !vs.isEmpty else { throw fail(path, "enum must be a non-empty array") }
                if has(v, "const") {
                    values = vs.filter { $0 == values[0] }
                } else {
                    values = vs
                }
            }
            if !types.isEmpty { values = values.filter { types.contains(Self.typeName($0)) || (Self.typeName($0) == "integer" && types.contains("number")) } }
            guard !values.isEmpty else { throw fail(path, "no value of enum/const matches the schema's type") }
            guard values.count <= SchemaProgram.maxLiterals else { throw fail(path, "more than \(SchemaProgram.maxLiterals) enum values") }
            var lits: [[UInt8]] = []
            for x in values {
                var w = JSONWriter(capacity: 64)
                w.value(x)
                let bytes = w.bytes
                guard bytes.count <= SchemaProgram.maxLiteralLength else { throw fail(path, "an enum value longer than \(SchemaProgram.maxLiteralLength) bytes") }
                if !lits.contains(bytes) { lits.append(bytes) }
            }
            return .literals(lits)
        }

        static func typeName(_ v: JSONValue) -> String {
            switch v {
            case .null: return "null"
            case .bool: return "boolean"
            case .number(let d, let i): return i != nil || (d.rounded() == d && abs(d) < 1e15) ? "integer" : "number"
            case .string: return "string"
            case .array: return "array"
            case .object: return "object"
            }
        }

        func count(_ v: JSONValue, _ key: String, path: String) throws(APIError) -> UInt32? {
            guard let x = v[key], x != .null else { return nil }
            guard case .number(_, let i?) = x, i >= 0, i <= Int64(UInt32.max - 1) else {
                throw fail(path, "\(key) must be a non-negative integer")
            }
            return UInt32(i)
        }

        /// Keywords that belong to other types than `t` are refused: they would not constrain anything.
        func only(_ v: JSONValue, _ allowed: [String], type t: String, path: String) throws(APIError) {
            let typed = ["properties", "required", "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength"]
            for k in typed where has(v, k) && !allowed.contains(k) {
                throw fail(path, "\(k) does not apply to type \(t)")
            }
        }

        mutating func single(_ t: String, _ v: JSONValue, path: String) throws(APIError) -> SchemaProgram.Node {
            switch t {
            case "object":
                try only(v, ["properties", "required", "additionalProperties"], type: t, path: path)
                var props: [SchemaProgram.Property] = []
                if let p = v["properties"], p != .null {
                    guard case .object(let fields) = p else { throw fail(path, "properties must be an object") }
                    guard fields.count <= SchemaProgram.maxProperties else {
                        throw fail(path, "more than \(SchemaProgram.maxProperties) properties")
                    }
                    for (name, s) in fields {
                        let bytes = Array(name.utf8)
                        guard !bytes.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C }),
                              bytes.count <= SchemaProgram.maxNameLength else {
                            throw fail(path, "property name '\(name.prefix(64))' is not supported (quotes, backslashes, control characters or over \(SchemaProgram.maxNameLength) bytes)")
                        }
                        if props.contains(where: { $0.name == bytes }) { throw fail(path, "property '\(name.prefix(64))' is listed twice") }
                        props.append(.init(name: bytes, node: try index(s, path: "\(path)/properties/\(name.prefix(64))")))
                    }
                }
                var additional: Int32
                switch v["additionalProperties"] {
                case nil, .null?, .bool(true)?: additional = try any()
                case .bool(false)?: additional = -1
                case let s?: additional = try index(s, path: "\(path)/additionalProperties")
                }
                var required: UInt64 = 0
                if let r = v["required"], r != .null {
                    guard case .array(let names) = r else { throw fail(path, "required must be an array of strings") }
                    for n in names {
                        guard case .string(let name) = n else { throw fail(path, "required must be an array of strings") }
                        let bytes = Array(name.utf8)
                        var k = props.firstIndex { $0.name == bytes }
                        if k == nil {
                            // Required but not listed: a key of the additional properties' schema.
                            guard additional >= 0 else { throw fail(path, "required property '\(name.prefix(64))' is not in properties and additionalProperties is false") }
                            guard !bytes.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C }), bytes.count <= SchemaProgram.maxNameLength,
                                  props.count < SchemaProgram.maxProperties else {
                                throw fail(path, "required property '\(name.prefix(64))' is not supported")
                            }
                            props.append(.init(name: bytes, node: additional))
                            k = props.count - 1
                        }
                        required |= 1 << UInt64(k!)
                    }
                }
                return .object(properties: props, required: required, additional: additional)
            case "array":
                try only(v, ["items", "minItems", "maxItems"], type: t, path: path)
                var items: Int32
                switch v["items"] {
                case nil, .null?, .bool(true)?: items = try any()
                case .array?: throw fail(path, "items as an array (tuple validation) is not supported")
                case let s?: items = try index(s, path: "\(path)/items")
                }
                let lo = try count(v, "minItems", path: path) ?? 0
                let hi = try count(v, "maxItems", path: path) ?? SchemaProgram.unbounded
                guard lo <= hi else { throw fail(path, "minItems is greater than maxItems") }
                return .array(items: items, minItems: lo, maxItems: hi)
            case "string":
                try only(v, ["minLength", "maxLength"], type: t, path: path)
                let lo = try count(v, "minLength", path: path) ?? 0
                let hi = try count(v, "maxLength", path: path) ?? SchemaProgram.unbounded
                guard lo <= hi else { throw fail(path, "minLength is greater than maxLength") }
                return .string(minLength: lo, maxLength: hi)
            case "number": try only(v, [], type: t, path: path); return .number
            case "integer": try only(v, [], type: t, path: path); return .integer
            case "boolean": try only(v, [], type: t, path: path); return .literals([Array("true".utf8), Array("false".utf8)])
            default: try only(v, [], type: t, path: path); return .literals([Array("null".utf8)])
            }
        }

        /// A JSON pointer token: "~1" is "/", "~0" is "~" (RFC 6901).
        static func unescapePointer(_ raw: Substring) -> String {
            var out = ""
            var tilde = false
            for ch in raw {
                if tilde { out.append(ch == "1" ? "/" : (ch == "0" ? "~" : ch)); tilde = false }
                else if ch == "~" { tilde = true }
                else { out.append(ch) }
            }
            if tilde { out.append("~") }
            return out
        }

        /// The node of a $ref's target ("#", "#/$defs/Name", "#/definitions/Name", or a longer JSON pointer).
        mutating func target(_ ref: String, path: String) throws(APIError) -> Int32 {
            if let i = refs[ref] { return i }
            guard ref == "#" || ref.hasPrefix("#/") else { throw fail(path, "only local $ref (\"#\" or \"#/…\") is supported, not '\(ref.prefix(64))'") }
            var node = root
            if ref != "#" {
                for raw in ref.dropFirst(2).split(separator: "/", omittingEmptySubsequences: false) {
                    let key = Self.unescapePointer(raw)
                    switch node {
                    case .object:
                        guard let next = node[key] else { throw fail(path, "$ref '\(ref.prefix(64))' points nowhere") }
                        node = next
                    case .array(let a):
                        guard let k = Int(key), a.indices.contains(k) else { throw fail(path, "$ref '\(ref.prefix(64))' points nowhere") }
                        node = a[k]
                    default: throw fail(path, "$ref '\(ref.prefix(64))' points nowhere")
                    }
                }
            }
            if ref == "#" { return rootNode }
            let i = try reserve(path)
            refs[ref] = i
            nodes[Int(i)] = try build(node, path: ref)
            return i
        }
    }
}
