// response_format json_schema: compiles the request's JSON Schema into the SchemaProgram the worker's
// grammar enforces (JSONSchema/SchemaProgram.swift, Engine/SchemaGrammar.swift). Every keyword is either
// enforced or refused with a 400 naming it and where it is, so an answer never silently ignores part of a
// schema. Enforced: type (one or a list), properties, required, additionalProperties (absent = any other key
// is allowed, as JSON Schema says), items, minItems, maxItems, minLength, maxLength, enum, const, anyOf,
// oneOf (when its alternatives cannot overlap: different types, or objects told apart by a required
// property's distinct constants, as a discriminated union; then it is anyOf), allOf with one schema, $ref to
// "#", "#/$defs/…" or "#/definitions/…" (recursion included). Annotations (title, description, default,
// examples, $schema, $id, $comment, deprecated, readOnly, writeOnly) are ignored.
#if canImport(JSONSchema)   // the fuzz target (fuzz/run) compiles it into its own module
import JSONSchema
#endif

enum SchemaCompiler {
    static let annotations: Set<String> = ["title", "description", "default", "examples", "$schema", "$id", "$comment",
                                           "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "discriminator"]
    /// How deep schemas may nest, counting each $ref followed (a chain of references is nesting too).
    static let maxNesting = 128
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
        /// build() calls open now.
        var nesting = 0

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
            nesting += 1
            defer { nesting -= 1 }
            guard nesting <= SchemaCompiler.maxNesting else {
                throw fail(path, "the schema nests (or chains $ref) more than \(SchemaCompiler.maxNesting) deep")
            }
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

        /// Whether keyword `key` is there: `const` even when it is null (const null admits only null), the
        /// others when not null.
        func has(_ v: JSONValue, _ key: String) -> Bool {
            guard let x = v[key] else { return false }
            return key == "const" || x != .null
        }

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
                if key == "oneOf" && !disjoint(alts) {
                    throw fail(path, "oneOf whose alternatives may overlap is not supported (it is enforced as anyOf only when they cannot: different types, or objects told apart by a required property's distinct const values); use anyOf")
                }
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
            if has(v, "enum") || has(v, "const") {
                for k in Self.typedKeywords where has(v, k) { throw fail(path, "\(k) beside enum/const is not supported") }
                return try literals(v, types: types, path: path)
            }
            try only(v, types: types, path: path)
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
            if let c = v["const"] { values.append(c) }
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
            case .number(let d, let i): return i != nil || (d.isFinite && d.rounded() == d) ? "integer" : "number"
            case .string: return "string"
            case .array: return "array"
            case .object: return "object"
            }
        }

        func count(_ v: JSONValue, _ key: String, path: String) throws(APIError) -> UInt32? {
            guard let x = v[key], x != .null else { return nil }
            guard case .number(let d, _) = x, d.isFinite, d.rounded() == d, d >= 0, d < Double(UInt32.max) else {
                throw fail(path, "\(key) must be a non-negative integer")
            }
            return UInt32(d)
        }

        static let typedKeywords = ["properties", "required", "additionalProperties", "items", "minItems", "maxItems",
                                    "minLength", "maxLength"]
        static func applies(_ keyword: String, to type: String) -> Bool {
            switch type {
            case "object": return ["properties", "required", "additionalProperties"].contains(keyword)
            case "array": return ["items", "minItems", "maxItems"].contains(keyword)
            case "string": return ["minLength", "maxLength"].contains(keyword)
            default: return false
            }
        }

        /// Keywords that belong to none of `types` are refused: they would not constrain anything. (With a
        /// list of types each keyword applies to the types it belongs to, as in {"type": ["string", "null"],
        /// "maxLength": 5}.)
        func only(_ v: JSONValue, types: [String], path: String) throws(APIError) {
            for k in Self.typedKeywords where has(v, k) && !types.contains(where: { Self.applies(k, to: $0) }) {
                throw fail(path, "\(k) does not apply to type \(types.joined(separator: " or "))")
            }
        }

        /// The JSON types a node's values can have ("integer" within "number"), and for an object the
        /// required properties' single constant values (a discriminator).
        func kinds(_ i: Int32, _ seen: inout Set<Int32>) -> Set<String> {
            guard seen.insert(i).inserted else { return [] }
            switch nodes[Int(i)] {
            case .any: return ["object", "array", "string", "number", "boolean", "null"]
            case .object: return ["object"]
            case .array: return ["array"]
            case .string: return ["string"]
            case .number, .integer: return ["number"]
            case .literals(let lits):
                return Set(lits.map { l -> String in
                    switch l[0] {
                    case 0x7B: return "object"
                    case 0x5B: return "array"
                    case 0x22: return "string"
                    case 0x74, 0x66: return "boolean"
                    case 0x6E: return "null"
                    default: return "number"
                    }
                })
            case .anyOf(let alts):
                var out = Set<String>()
                for a in alts { out.formUnion(kinds(a, &seen)) }
                return out
            }
        }

        /// Whether no JSON value can match two of `alts`: their types are disjoint, or they are objects (only)
        /// with a required property that each fixes to different constant values.
        func disjoint(_ alts: [Int32]) -> Bool {
            var sets: [Set<String>] = []
            for a in alts { var seen = Set<Int32>(); sets.append(kinds(a, &seen)) }
            var pairwise = true
            for x in 0..<sets.count { for y in (x + 1)..<sets.count where !sets[x].isDisjoint(with: sets[y]) { pairwise = false } }
            if pairwise { return true }
            // Objects told apart by a discriminator property: required in each, a literal set in each, the
            // sets disjoint.
            let objects = alts.map { resolved($0) }
            var tags: [[String: Set<[UInt8]>]] = []
            for o in objects {
                guard case .object(let props, let required, _) = nodes[Int(o)] else { return false }
                var t: [String: Set<[UInt8]>] = [:]
                for (k, p) in props.enumerated() where (required >> UInt64(k)) & 1 == 1 {
                    if case .literals(let lits) = nodes[Int(resolved(p.node))] { t[String(decoding: p.name, as: UTF8.self)] = Set(lits) }
                }
                tags.append(t)
            }
            for name in tags.first?.keys ?? [:].keys where tags.allSatisfy({ $0[name] != nil }) {
                var union = Set<[UInt8]>(), total = 0
                for t in tags { union.formUnion(t[name]!); total += t[name]!.count }
                if union.count == total { return true }
            }
            return false
        }

        mutating func single(_ t: String, _ v: JSONValue, path: String) throws(APIError) -> SchemaProgram.Node {
            switch t {
            case "object":
                var props: [SchemaProgram.Property] = []
                if let p = v["properties"], p != .null {
                    guard case .object(let fields) = p else { throw fail(path, "properties must be an object") }
                    guard fields.count <= SchemaProgram.maxProperties else {
                        throw fail(path, "more than \(SchemaProgram.maxProperties) properties")
                    }
                    for (name, s) in fields {
                        let bytes = Array(name.utf8)
                        guard SchemaProgram.isAllowedName(bytes) else {
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
                            guard SchemaProgram.isAllowedName(bytes), props.count < SchemaProgram.maxProperties else {
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
                let lo = try count(v, "minLength", path: path) ?? 0
                let hi = try count(v, "maxLength", path: path) ?? SchemaProgram.unbounded
                guard lo <= hi else { throw fail(path, "minLength is greater than maxLength") }
                return .string(minLength: lo, maxLength: hi)
            case "number": return .number
            case "integer": return .integer
            case "boolean": return .literals([Array("true".utf8), Array("false".utf8)])
            default: return .literals([Array("null".utf8)])
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
