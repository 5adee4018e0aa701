// A JSON Schema compiled for constrained decoding (`response_format: {"type": "json_schema"}`): a table of
// nodes the front builds from the request's schema (Front/SchemaCompiler.swift), carries to the worker in
// the submit record as bytes (`encoded()` / `init(decoding:)`), and the engine's SchemaGrammar walks byte by
// byte. Pure value types, no I/O. The node kinds are the subset of JSON Schema the grammar enforces; the
// compiler refuses every keyword outside it, so a schema is either enforced whole or refused.

public struct SchemaProgram: Sendable, Equatable {
    public struct Property: Sendable, Equatable {
        /// The key's bytes as they appear between the quotes (the compiler refuses names that would need
        /// escaping: '"', '\\' and control characters).
        public var name: [UInt8]
        public var node: Int32
        public init(name: [UInt8], node: Int32) { self.name = name; self.node = node }
    }

    public enum Node: Sendable, Equatable {
        /// Any JSON value.
        case any
        /// `properties` (at most `maxProperties`, each key at most once, in any order), `required` a bit per
        /// property index, `additional` the node of other keys (-1: no other keys).
        case object(properties: [Property], required: UInt64, additional: Int32)
        case array(items: Int32, minItems: UInt32, maxItems: UInt32)
        /// Lengths in characters (code points), as JSON Schema counts them.
        case string(minLength: UInt32, maxLength: UInt32)
        case number
        /// An integer written without fraction or exponent.
        case integer
        /// One of these JSON texts, written exactly (`enum`, `const`, `boolean`, `null`).
        case literals([[UInt8]])
        /// Any one of these nodes.
        case anyOf([Int32])
    }

    public static let maxNodes = 4096
    public static let maxProperties = 64
    public static let maxLiterals = 64
    public static let maxNameLength = 256
    public static let maxLiteralLength = 4096
    public static let maxAnyOf = 64
    /// Containers (objects and arrays) open at once while generating.
    public static let maxDepth = 32
    public static let unbounded = UInt32.max
    static let unsatisfiable: UInt8 = 255

    /// nodes[0] is the root: an object, or an anyOf whose alternatives are objects (a forced tool call:
    /// one object shape per function).
    public private(set) var nodes: [Node]
    /// For each node, how many containers deep its shortest value is (0 for scalars, 1 for `{}`), or 255
    /// when no finite value satisfies it.
    public private(set) var minDepth: [UInt8]

    /// Checks the table (indices in range, limits, a satisfiable object root) and computes `minDepth`.
    public init(nodes: [Node]) throws(SchemaProgramError) {
        guard !nodes.isEmpty, nodes.count <= Self.maxNodes else { throw .invalid("node count \(nodes.count) outside 1...\(Self.maxNodes)") }
        let n = Int32(nodes.count)
        func ref(_ i: Int32) throws(SchemaProgramError) { guard i >= 0 && i < n else { throw .invalid("node index \(i) out of range") } }
        for node in nodes {
            switch node {
            case .object(let props, let required, let additional):
                guard props.count <= Self.maxProperties else { throw .invalid("more than \(Self.maxProperties) properties") }
                if props.count < 64 { guard required >> UInt64(props.count) == 0 else { throw .invalid("required bit past the properties") } }
                if additional != -1 { try ref(additional) }
                for (k, p) in props.enumerated() {
                    try ref(p.node)
                    guard Self.isAllowedName(p.name) else { throw .invalid("property name not allowed") }
                    for q in props[..<k] where q.name == p.name { throw .invalid("duplicate property name") }
                }
            case .array(let items, let lo, let hi):
                try ref(items)
                guard lo <= hi else { throw .invalid("minItems > maxItems") }
            case .string(let lo, let hi):
                guard lo <= hi else { throw .invalid("minLength > maxLength") }
            case .literals(let lits):
                guard !lits.isEmpty, lits.count <= Self.maxLiterals else { throw .invalid("literal count outside 1...\(Self.maxLiterals)") }
                for l in lits { guard !l.isEmpty, l.count <= Self.maxLiteralLength else { throw .invalid("literal length") } }
            case .anyOf(let alts):
                guard !alts.isEmpty, alts.count <= Self.maxAnyOf else { throw .invalid("anyOf size outside 1...\(Self.maxAnyOf)") }
                for a in alts { try ref(a) }
            case .any, .number, .integer:
                break
            }
        }
        // The root's values are objects (self-delimiting: the answer is over when the root closes).
        var pending: [Int32] = [0], visited = Set<Int32>()
        while let i = pending.popLast() {
            guard visited.insert(i).inserted else { continue }
            switch nodes[Int(i)] {
            case .object: break
            case .anyOf(let alts): pending += alts
            default: throw .invalid("the root must be an object (or an anyOf of objects)")
            }
        }
        self.nodes = nodes
        minDepth = Self.depths(nodes)
        guard minDepth[0] != Self.unsatisfiable else { throw .unsatisfiable }
    }

    /// A property name the grammar matches byte for byte: UTF-8, at most `maxNameLength` bytes, nothing
    /// that would need escaping in a JSON key ('"', '\\', control characters).
    public static func isAllowedName(_ name: [UInt8]) -> Bool {
        name.count <= maxNameLength && !name.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C }) && isValidUTF8(name)
    }

    static func isValidUTF8(_ bytes: [UInt8]) -> Bool {
        var it = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&it) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    /// Least fixpoint of the shortest value's depth: a node is satisfiable once its parts are.
    static func depths(_ nodes: [Node]) -> [UInt8] {
        var d = [UInt8](repeating: unsatisfiable, count: nodes.count)
        var changed = true
        while changed {
            changed = false
            for (i, node) in nodes.enumerated() {
                var v: Int
                switch node {
                case .any, .number, .integer, .string, .literals: v = 0
                case .object(let props, let required, _):
                    v = 1
                    for (k, p) in props.enumerated() where (required >> UInt64(k)) & 1 == 1 {
                        v = max(v, 1 + Int(d[Int(p.node)]))
                    }
                case .array(let items, let lo, _):
                    v = lo == 0 ? 1 : 1 + Int(d[Int(items)])
                case .anyOf(let alts):
                    v = alts.map { Int(d[Int($0)]) }.min() ?? Int(unsatisfiable)
                }
                let nv = UInt8(min(v, Int(unsatisfiable)))
                if nv < d[i] { d[i] = nv; changed = true }
            }
        }
        // Deeper than the grammar's container limit counts as unsatisfiable.
        return d.map { $0 > UInt8(maxDepth) ? unsatisfiable : $0 }
    }
}

public enum SchemaProgramError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalid(String)
    case truncated
    /// No finite JSON value satisfies the schema (e.g. a required property whose schema refers to itself).
    case unsatisfiable
    public var description: String {
        switch self {
        case .invalid(let m): return "invalid schema program: \(m)"
        case .truncated: return "schema program truncated"
        case .unsatisfiable: return "no JSON value satisfies this schema within \(SchemaProgram.maxDepth) levels of nesting"
        }
    }
}

// MARK: - Binary form (little-endian), carried in the submit record

extension SchemaProgram {
    /// u32 node count, then per node a kind byte and its fields (see `init(decoding:)`).
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func bytes(_ b: [UInt8]) { u32(UInt32(b.count)); out.append(contentsOf: b) }
        u32(UInt32(nodes.count))
        for node in nodes {
            switch node {
            case .any: out.append(0)
            case .object(let props, let required, let additional):
                out.append(1); u32(UInt32(props.count))
                for p in props { bytes(p.name); u32(UInt32(bitPattern: p.node)) }
                u64(required); u32(UInt32(bitPattern: additional))
            case .array(let items, let lo, let hi): out.append(2); u32(UInt32(bitPattern: items)); u32(lo); u32(hi)
            case .string(let lo, let hi): out.append(3); u32(lo); u32(hi)
            case .number: out.append(4)
            case .integer: out.append(5)
            case .literals(let lits): out.append(6); u32(UInt32(lits.count)); for l in lits { bytes(l) }
            case .anyOf(let alts): out.append(7); u32(UInt32(alts.count)); for a in alts { u32(UInt32(bitPattern: a)) }
            }
        }
        return out
    }

    /// Decodes and checks what `encoded()` wrote; never reads outside `bytes`.
    public init(decoding bytes: [UInt8]) throws(SchemaProgramError) {
        var at = 0
        func u8() throws(SchemaProgramError) -> UInt8 {
            guard at < bytes.count else { throw .truncated }
            defer { at += 1 }
            return bytes[at]
        }
        func u32() throws(SchemaProgramError) -> UInt32 {
            guard bytes.count - at >= 4 else { throw .truncated }
            var v: UInt32 = 0
            for k in 0..<4 { v |= UInt32(bytes[at + k]) << UInt32(8 * k) }
            at += 4
            return v
        }
        func u64() throws(SchemaProgramError) -> UInt64 {
            let lo = try u32(), hi = try u32()
            return UInt64(lo) | UInt64(hi) << 32
        }
        func count(_ limit: Int) throws(SchemaProgramError) -> Int {
            let n = Int(try u32())
            guard n <= limit else { throw .invalid("count \(n) over \(limit)") }
            return n
        }
        func blob(_ limit: Int) throws(SchemaProgramError) -> [UInt8] {
            let n = try count(limit)
            guard bytes.count - at >= n else { throw .truncated }
            defer { at += n }
            return Array(bytes[at..<(at + n)])
        }
        let n = try count(Self.maxNodes)
        var nodes: [Node] = []
        nodes.reserveCapacity(n)
        for _ in 0..<n {
            switch try u8() {
            case 0: nodes.append(.any)
            case 1:
                let k = try count(Self.maxProperties)
                var props: [Property] = []
                for _ in 0..<k { props.append(Property(name: try blob(Self.maxNameLength), node: Int32(bitPattern: try u32()))) }
                nodes.append(.object(properties: props, required: try u64(), additional: Int32(bitPattern: try u32())))
            case 2: nodes.append(.array(items: Int32(bitPattern: try u32()), minItems: try u32(), maxItems: try u32()))
            case 3: nodes.append(.string(minLength: try u32(), maxLength: try u32()))
            case 4: nodes.append(.number)
            case 5: nodes.append(.integer)
            case 6:
                let k = try count(Self.maxLiterals)
                var lits: [[UInt8]] = []
                for _ in 0..<k { lits.append(try blob(Self.maxLiteralLength)) }
                nodes.append(.literals(lits))
            case 7:
                let k = try count(Self.maxAnyOf)
                var alts: [Int32] = []
                for _ in 0..<k { alts.append(Int32(bitPattern: try u32())) }
                nodes.append(.anyOf(alts))
            case let kind: throw .invalid("unknown node kind \(kind)")
            }
        }
        guard at == bytes.count else { throw .invalid("\(bytes.count - at) trailing bytes") }
        try self.init(nodes: nodes)
    }
}
