// A small strict JSON reader and writer (RFC 8259), Foundation-free so it can be fuzzed with the parser.
// Limits: nesting depth ≤ 64; input size is bounded by the HTTP body limit. Duplicate object keys are refused
// (they make "which value wins" ambiguous). Numbers keep their integer value when they have one.
#if canImport(Wire)
import Wire   // UTF8Text, ByteWriter (the fuzz target compiles Sources/Wire/UTF8Text.swift and ByteWriter.swift into its module instead)
#endif

public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// `integer` is set when the literal has no fraction/exponent and fits in Int64.
    case number(Double, integer: Int64?)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.number(let x, _), .number(let y, _)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.array(let x), .array(let y)): return x == y
        case (.object(let x), .object(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    public subscript(key: String) -> JSONValue? {
        guard case .object(let fields) = self else { return nil }
        // An API request looks up ~20 fields, most of them absent: other lengths are skipped first.
        for i in fields.indices where fields[i].0.sameUTF8Length(as: key) && fields[i].0 == key { return fields[i].1 }
        return nil
    }

    /// Name of the JSON type, for error messages.
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .number: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }
}

/// The top-level keys a decoder looks for (at most 64, ASCII, non-empty). A key read from the input is
/// looked up in one probe: a 128-slot table indexed by a hash of its length and three of its bytes names the
/// only candidate, which is then compared byte for byte. Slots two names share say "scan", and the lookup
/// compares against every name of that length (the request decoder's 25 names share none).
public struct JSONKeys: Sendable {
    public let names: [String]
    /// The names' UTF-8, back to back; name n is `blob[starts[n] ..< starts[n + 1]]`.
    private let blob: [UInt8]
    private let starts: [Int]
    /// Per hash slot: 0 = no name, n + 1 = name n, `scan` = several names.
    private let slots: [UInt8]
    private static let scan: UInt8 = 0xFF

    public init(_ names: [String]) {
        precondition(names.count <= 64 && Set(names).count == names.count
                     && names.allSatisfy { !$0.isEmpty && $0.utf8.allSatisfy { $0 < 0x80 } })
        self.names = names
        var blob: [UInt8] = [], starts = [0]
        var slots = [UInt8](repeating: 0, count: 128)
        for (n, name) in names.enumerated() {
            let u = Array(name.utf8)
            blob += u
            starts.append(blob.count)
            let h = u.withUnsafeBufferPointer { Self.hash($0) }
            slots[h] = slots[h] == 0 ? UInt8(n + 1) : Self.scan
        }
        self.blob = blob; self.starts = starts; self.slots = slots
    }

    @inline(__always) private static func hash(_ k: UnsafeBufferPointer<UInt8>) -> Int {
        let n = k.count
        return (n &* 12 &+ Int(k[0]) &* 3 &+ Int(k[n - 1]) &* 5 &+ Int(k[n >> 1])) & 127
    }

    /// Index of the key whose UTF-8 is `k`, if any.
    func index(_ k: UnsafeBufferPointer<UInt8>) -> Int? {
        guard !k.isEmpty else { return nil }
        let slot = slots[Self.hash(k)]
        if slot == 0 { return nil }
        return blob.withUnsafeBufferPointer { b -> Int? in
            if slot != Self.scan { return same(Int(slot) - 1, k, b) ? Int(slot) - 1 : nil }
            for n in 0..<names.count where same(n, k, b) { return n }
            return nil
        }
    }

    @inline(__always) private func same(_ n: Int, _ k: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
        let start = starts[n]
        guard starts[n + 1] - start == k.count else { return false }
        for x in 0..<k.count where b[start &+ x] != k[x] { return false }
        return true
    }

    func index(_ s: String) -> Int? {
        var s = s
        return s.withUTF8 { index($0) }
    }
}

public struct JSONError: Error, Equatable, Sendable {
    public var message: String
    public var offset: Int
}

public enum JSON {
    public static let maxDepth = 64

    public static func parse(_ bytes: [UInt8]) throws(JSONError) -> JSONValue {
        try bytes.withUnsafeBufferPointer { (b) throws(JSONError) -> JSONValue in
            var r = Reader(b: b)
            r.skipWS()
            let v = try r.value(depth: 0)
            r.skipWS()
            if r.i != b.count { throw JSONError(message: "unexpected data after the JSON value", offset: r.i) }
            return v
        }
    }

    /// Parses a JSON object whose interesting top-level keys are known in advance (an API request's fields):
    /// each known key's value goes to `visit(index in keys, value)`; every other value is parsed (validated,
    /// nested objects included) and dropped. No String is built for a known key written without escapes and
    /// no field list for the object, so a request is decoded without a tree of its top level.
    /// Exactly as strict as `parse`: the same errors at the same offsets (duplicate keys included, also
    /// among skipped ones) — the fuzz target checks the two against each other. Returns false, visiting
    /// nothing, when the text is valid JSON but not an object (`parse` then names what it is).
    public static func parseObject(_ bytes: [UInt8], keys: JSONKeys,
                                   visit: (Int, JSONValue) -> Void) throws(JSONError) -> Bool {
        try bytes.withUnsafeBufferPointer { (b) throws(JSONError) -> Bool in
            var r = Reader(b: b)
            r.skipWS()
            if r.i < b.count && b[r.i] == 123 {
                try r.knownFields(keys, visit)
            } else {
                _ = try r.value(depth: 0)
                r.skipWS()
                if r.i != b.count { throw JSONError(message: "unexpected data after the JSON value", offset: r.i) }
                return false
            }
            r.skipWS()
            if r.i != b.count { throw JSONError(message: "unexpected data after the JSON value", offset: r.i) }
            return true
        }
    }

    private struct Reader {
        let b: UnsafeBufferPointer<UInt8>
        var i = 0

        func fail(_ m: String) -> JSONError { JSONError(message: m, offset: i) }

        mutating func skipWS() {
            while i < b.count, b[i] == 32 || b[i] == 9 || b[i] == 10 || b[i] == 13 { i += 1 }
        }

        mutating func value(depth: Int) throws(JSONError) -> JSONValue {
            guard i < b.count else { throw fail("unexpected end of JSON") }
            switch b[i] {
            case 123: // {
                if depth >= JSON.maxDepth { throw fail("JSON nested too deeply") }
                i += 1
                var fields: [(String, JSONValue)] = []
                // The top-level object (a request's fields) in one allocation; nested objects grow as needed,
                // so a body of many tiny objects cannot make the parser reserve 8 fields apiece.
                if depth == 0 { fields.reserveCapacity(8) }
                // Duplicate-key check: linear for small objects, a set once an object grows (bounded cost).
                var seen: Set<String>? = nil
                skipWS()
                if i < b.count && b[i] == 125 { i += 1; return .object(fields) }
                while true {
                    skipWS()
                    guard i < b.count, b[i] == 34 else { throw fail("expected a string key") }
                    let k = try string()
                    if seen == nil && fields.count >= 16 { seen = Set(fields.map { $0.0 }) }
                    if seen != nil {
                        if seen?.insert(k).inserted == false { throw fail("duplicate key \"\(k)\"") }
                    } else {
                        for (existing, _) in fields where existing == k { throw fail("duplicate key \"\(k)\"") }
                    }
                    skipWS()
                    guard i < b.count, b[i] == 58 else { throw fail("expected ':'") }
                    i += 1
                    skipWS()
                    fields.append((k, try value(depth: depth + 1)))
                    skipWS()
                    guard i < b.count else { throw fail("unexpected end of JSON") }
                    if b[i] == 44 { i += 1; continue }
                    if b[i] == 125 { i += 1; return .object(fields) }
                    throw fail("expected ',' or '}'")
                }
            case 91: // [
                if depth >= JSON.maxDepth { throw fail("JSON nested too deeply") }
                i += 1
                var items: [JSONValue] = []
                skipWS()
                if i < b.count && b[i] == 93 { i += 1; return .array(items) }
                while true {
                    skipWS()
                    items.append(try value(depth: depth + 1))
                    skipWS()
                    guard i < b.count else { throw fail("unexpected end of JSON") }
                    if b[i] == 44 { i += 1; continue }
                    if b[i] == 93 { i += 1; return .array(items) }
                    throw fail("expected ',' or ']'")
                }
            case 34: return .string(try string())
            case 116: try literal("true"); return .bool(true)
            case 102: try literal("false"); return .bool(false)
            case 110: try literal("null"); return .null
            case 45, 48...57: return try number()
            default: throw fail("unexpected character")
            }
        }

        /// The top-level object of `parseObject` (at its '{'): `value(depth: 0)`'s checks, in the same order.
        mutating func knownFields(_ keys: JSONKeys, _ visit: (Int, JSONValue) -> Void) throws(JSONError) {
            i += 1
            var found: UInt64 = 0        // bit k: keys[k] seen
            var others: [String] = []    // unknown keys seen (for the duplicate check), rare in requests
            var seen: Set<String>? = nil
            skipWS()
            if i < b.count && b[i] == 125 { i += 1; return }
            while true {
                skipWS()
                guard i < b.count, b[i] == 34 else { throw fail("expected a string key") }
                // A plain (escape-free) key is matched from the input bytes; anything else is decoded first.
                var j = i + 1
                while j < b.count {
                    let c = b[j]
                    if c == 34 || c == 92 || c < 32 { break }
                    j += 1
                }
                var k: Int? = nil
                if j < b.count && b[j] == 34, let m = keys.index(UnsafeBufferPointer(rebasing: b[(i + 1)..<j])) {
                    k = m
                    i = j + 1
                } else {
                    let s = try string()
                    if let m = keys.index(s) {
                        k = m
                    } else {
                        if seen == nil && others.count >= 16 { seen = Set(others) }
                        if seen != nil {
                            if seen?.insert(s).inserted == false { throw fail("duplicate key \"\(s)\"") }
                        } else {
                            for existing in others where existing == s { throw fail("duplicate key \"\(s)\"") }
                        }
                        others.append(s)
                    }
                }
                if let k {
                    if found & (1 << UInt64(k)) != 0 { throw fail("duplicate key \"\(keys.names[k])\"") }
                    found |= 1 << UInt64(k)
                }
                skipWS()
                guard i < b.count, b[i] == 58 else { throw fail("expected ':'") }
                i += 1
                skipWS()
                let v = try value(depth: 1)
                if let k { visit(k, v) }
                skipWS()
                guard i < b.count else { throw fail("unexpected end of JSON") }
                if b[i] == 44 { i += 1; continue }
                if b[i] == 125 { i += 1; return }
                throw fail("expected ',' or '}'")
            }
        }

        mutating func literal(_ word: StaticString) throws(JSONError) {
            let n = word.utf8CodeUnitCount
            guard i + n <= b.count else { throw fail("invalid literal") }
            let p = word.utf8Start
            for k in 0..<n where b[i + k] != p[k] { throw fail("invalid literal") }
            i += n
        }

        mutating func number() throws(JSONError) -> JSONValue {
            let start = i
            var negative = false
            if b[i] == 45 { negative = true; i += 1 }
            guard i < b.count, b[i] >= 48 && b[i] <= 57 else { throw fail("invalid number") }
            if b[i] == 48 {
                i += 1
                if i < b.count, b[i] >= 48 && b[i] <= 57 { throw fail("leading zeros are not allowed") }
            } else {
                while i < b.count, b[i] >= 48 && b[i] <= 57 { i += 1 }
            }
            var isInteger = true
            if i < b.count && b[i] == 46 {
                isInteger = false
                i += 1
                guard i < b.count, b[i] >= 48 && b[i] <= 57 else { throw fail("invalid number") }
                while i < b.count, b[i] >= 48 && b[i] <= 57 { i += 1 }
            }
            if i < b.count && (b[i] == 101 || b[i] == 69) {
                isInteger = false
                i += 1
                if i < b.count && (b[i] == 43 || b[i] == 45) { i += 1 }
                guard i < b.count, b[i] >= 48 && b[i] <= 57 else { throw fail("invalid number") }
                while i < b.count, b[i] >= 48 && b[i] <= 57 { i += 1 }
            }
            if i - start > 64 { throw fail("number literal too long") }
            // Integers of up to 15 digits (every count and limit an API request carries) are read directly:
            // exact in both Int64 and Double, without a String and two text-to-number conversions.
            let digits = i - start - (negative ? 1 : 0)
            if isInteger && digits <= 15 {
                var v: Int64 = 0
                for k in (negative ? start + 1 : start)..<i { v = v * 10 + Int64(b[k] - 48) }
                if negative { v = -v }
                return .number(negative && v == 0 ? -0.0 : Double(v), integer: v)
            }
            let text = String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
            guard let d = Double(text), d.isFinite else { throw fail("number out of range") }
            var integer: Int64? = nil
            if isInteger {
                integer = Int64(text)   // nil when it does not fit
                _ = negative
            }
            return .number(d, integer: integer)
        }

        mutating func hex4() throws(JSONError) -> UInt32 {
            guard i + 4 <= b.count else { throw fail("invalid \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                guard let d = HTTPRequestParser.hexValue(b[i]) else { throw fail("invalid \\u escape") }
                v = v * 16 + UInt32(d)
                i += 1
            }
            return v
        }

        mutating func string() throws(JSONError) -> String {
            i += 1 // opening quote
            // Fast path: no escape before the closing quote (the common case) → one String straight from the
            // input bytes, no intermediate array.
            var j = i
            while j < b.count {
                let c = b[j]
                if c == 34 || c == 92 || c < 32 { break }
                j += 1
            }
            if j < b.count && b[j] == 34 {
                guard let s = UTF8Text.string(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(b)[i..<j])) else {
                    throw fail("invalid UTF-8 in string")
                }
                i = j + 1
                return s
            }
            var out: [UInt8] = []
            while true {
                guard i < b.count else { throw fail("unterminated string") }
                let c = b[i]
                if c == 34 { i += 1; break }
                if c < 32 { throw fail("control character in string") }
                if c != 92 { out.append(c); i += 1; continue }
                i += 1
                guard i < b.count else { throw fail("unterminated string") }
                let e = b[i]
                i += 1
                switch e {
                case 34: out.append(34)
                case 92: out.append(92)
                case 47: out.append(47)
                case 98: out.append(8)
                case 102: out.append(12)
                case 110: out.append(10)
                case 114: out.append(13)
                case 116: out.append(9)
                case 117:
                    var scalar = try hex4()
                    if scalar >= 0xD800 && scalar < 0xDC00 {
                        guard i + 2 <= b.count, b[i] == 92, b[i + 1] == 117 else { throw fail("unpaired surrogate") }
                        i += 2
                        let low = try hex4()
                        guard low >= 0xDC00 && low < 0xE000 else { throw fail("unpaired surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if scalar >= 0xDC00 && scalar < 0xE000 {
                        throw fail("unpaired surrogate")
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw fail("invalid code point") }
                    out.append(contentsOf: String(Character(u)).utf8)
                default: throw fail("invalid escape")
                }
            }
            // Strict UTF-8: invalid sequences are refused rather than silently repaired.
            guard let s = out.withUnsafeBytes({ UTF8Text.string($0) }) else { throw fail("invalid UTF-8 in string") }
            return s
        }
    }
}

/// Appends JSON text to a byte buffer without intermediate Strings.
public struct JSONWriter: ~Copyable {
    public var out: ByteWriter
    /// 512 bytes hold a whole non-streaming completion with a short answer (with usage) without regrowing.
    public init(capacity: Int = 512) { out = ByteWriter(capacity: capacity) }
    /// Empties the writer, keeping its buffer.
    public mutating func reset() { out.reset() }
    /// The text as a new array (cold paths; the event loop uses `withBytes`).
    public var bytes: [UInt8] { out.bytes }
    public func withBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R { try out.withBytes(body) }

    public mutating func raw(_ s: StaticString) { out.append(s) }
    /// Disfavoured, so a literal takes the StaticString overload (no String to bridge per call).
    @_disfavoredOverload
    public mutating func raw(_ s: String) {
        var s = s
        s.withUTF8 { out.append(UnsafeRawBufferPointer($0)) }
    }
    public mutating func int(_ v: Int) { out.appendDecimal(v) }   // no String on the way
    public mutating func double(_ v: Double) { raw(v.isFinite ? String(v) : "null") }

    public mutating func string(_ s: String) {
        out.append(34)
        var s = s
        s.withUTF8 { u in
            // Most strings need no escape: copy their UTF-8 in one go.
            var plain = true
            for c in u where c < 32 || c == 34 || c == 92 { plain = false; break }
            if plain { out.append(UnsafeRawBufferPointer(u)); return }
            for c in u {
                switch c {
                case 34: out.append(92); out.append(34)
                case 92: out.append(92); out.append(92)
                case 10: out.append(92); out.append(110)
                case 13: out.append(92); out.append(114)
                case 9: out.append(92); out.append(116)
                case 0..<32:
                    out.append("\\u")
                    out.appendHex(Int(c), minDigits: 4)
                default: out.append(c)
                }
            }
        }
        out.append(34)
    }

    public mutating func value(_ v: JSONValue) {
        switch v {
        case .null: raw("null")
        case .bool(let b): if b { raw("true") } else { raw("false") }
        case .number(let d, let i): if let i { raw(String(i)) } else { double(d) }
        case .string(let s): string(s)
        case .array(let a):
            out.append(91)
            for (k, x) in a.enumerated() { if k > 0 { out.append(44) }; value(x) }
            out.append(93)
        case .object(let o):
            out.append(123)
            for (k, (key, x)) in o.enumerated() {
                if k > 0 { out.append(44) }
                string(key); out.append(58); value(x)
            }
            out.append(125)
        }
    }
}
