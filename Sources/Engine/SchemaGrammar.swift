// Structured outputs (`response_format: {"type": "json_schema"}`): the answer is one JSON object that
// validates against the request's schema, compiled by the front into a SchemaProgram. Like JSON mode
// (JSONConstraint.swift) this is a pushdown automaton over bytes that the token table masks with; here each
// container and scalar knows its schema node:
// - objects take only their properties (and other keys when `additionalProperties` allows them), each at
//   most once, in any order; '}' only once every required property is there; ',' only while a key can follow;
// - arrays take between minItems and maxItems items; strings between minLength and maxLength characters;
//   `integer` is written without fraction or exponent; `enum` / `const` values are written exactly as the
//   compiler serialized them (compact JSON);
// - `anyOf` runs its alternatives side by side (a small set of stacks) until the bytes tell them apart.
// A value is never started where no finite value of its schema fits in the remaining nesting depth, so the
// grammar cannot lead generation into a dead end. Keys are written without escapes. Whitespace runs between
// JSON tokens are capped as in JSON mode, and free values (`{}` schemas) use JSON mode's grammar.

import JSONSchema

/// The state of one answer under a schema. A value type: checking a token copies it.
public struct SchemaGrammar: Sendable, Equatable {
    /// The program, shared by every copy of the state.
    public final class Compiled: Sendable {
        let program: SchemaProgram
        let nodes: [SchemaProgram.Node]
        let minDepth: [UInt8]
        /// For each anyOf node, the nodes its value can actually be: nested anyOfs followed through, each
        /// node once, cycles without a container in them dropped (A = anyOf[A, string] is a string). A value
        /// start forks only over these, so shared or self-referring alternatives cannot multiply the work
        /// or recurse.
        let leaves: [[Int32]]
        public init(_ program: SchemaProgram) {
            self.program = program; nodes = program.nodes; minDepth = program.minDepth
            var leaves = [[Int32]](repeating: [], count: nodes.count)
            for (i, node) in nodes.enumerated() {
                guard case .anyOf = node else { continue }
                var out: [Int32] = [], seen = Set<Int32>([Int32(i)]), pending: [Int32] = []
                if case .anyOf(let alts) = node { pending = alts.reversed() }
                while let a = pending.popLast() {
                    guard seen.insert(a).inserted else { continue }
                    if case .anyOf(let more) = nodes[Int(a)] { pending += more.reversed() } else { out.append(a) }
                }
                leaves[i] = out
            }
            self.leaves = leaves
        }
    }

    enum Kind: UInt8, Sendable { case object, array, string, number, literal, any }

    struct Frame: Sendable, Equatable {
        var kind: Kind
        /// object: 0 '{' seen (key or '}'), 1 after ',' (key), 2 in a key, 3 before ':', 4 before the value,
        /// 5 after a value. array: 0 after '[', 1 after ',', 2 after an item.
        var phase: UInt8 = 0
        var node: Int32
        /// array: items so far; string: characters so far; literal: bytes matched; object: key bytes so far.
        var count: UInt32 = 0
        /// object: properties seen.
        var seen: UInt64 = 0
        /// object key / literal: candidates still matching (a bit per property / literal).
        var cand: UInt64 = 0
        /// object: the node of the value that follows the key just read.
        var valueNode: Int32 = -1
        /// object: a running hash (FNV-1a) of the key being read, and the hashes of the other keys (not
        /// properties) already used, so that none is used twice.
        var keyHash: UInt64 = 0
        var otherKeys: [UInt64] = []
        var lex = StringLexer()
        /// number: where in the number (JSONObjectGrammar.Num's raw value); integer: no fraction or exponent.
        var num: UInt8 = 0
        var integer = false
        /// any: JSON mode's grammar for a free value.
        var free = JSONObjectGrammar()
    }

    struct Thread: Sendable, Equatable {
        var frames: [Frame] = []
        var started = false
        var depth: UInt8 = 0
        var whitespace: UInt16 = 0
        var done: Bool { started && frames.isEmpty }
    }

    let compiled: Compiled
    var threads: [Thread]
    /// Alternatives kept at once (anyOf); more are dropped (only pathological schemas get there).
    static let maxThreads = 16

    public init(_ compiled: Compiled) {
        self.compiled = compiled
        threads = [Thread()]
    }

    public static func == (a: SchemaGrammar, b: SchemaGrammar) -> Bool { a.compiled === b.compiled && a.threads == b.threads }

    /// The root object is closed: only the end of generation may follow.
    public var isComplete: Bool { threads.contains { $0.done } }

    /// Feeds one byte; false if the schema refuses it here. After a refusal the state is not meaningful:
    /// callers step a copy (as the token table does) and drop it.
    public mutating func step(_ b: UInt8) -> Bool {
        var out: [Thread] = []
        if threads.count == 1 {
            // One alternative (the usual case): in place, so that the bytes of a token after its first
            // do not copy the stack again.
            var ts = threads
            threads = []
            let ok = ts.withUnsafeMutableBufferPointer { stepInPlace(&$0[0], b, spill: &out) }
            guard ok || !out.isEmpty else { threads = ts; return false }
            threads = ok ? ts + out : out
        } else {
            for t in threads { step(t, b, into: &out) }
            guard !out.isEmpty else { return false }
            threads = out
        }
        if threads.count > 1 { dedupe() }
        return true
    }

    private mutating func dedupe() {
        var kept: [Thread] = []
        for t in threads where !kept.contains(t) {
            if kept.count == Self.maxThreads { break }
            kept.append(t)
        }
        threads = kept
    }

    private func step(_ t: Thread, _ b: UInt8, into out: inout [Thread]) {
        var t = t
        if stepInPlace(&t, b, spill: &out) { out.append(t) }
    }

    @inline(__always) static func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 }
    @inline(__always) static func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }

    /// Whitespace between JSON tokens counts against the run limit (true: taken, false: over it); nil if
    /// `b` is not whitespace (the run is over).
    private func space(_ t: inout Thread, _ b: UInt8) -> Bool? {
        guard Self.isSpace(b) else { t.whitespace = 0; return nil }
        guard t.whitespace < whitespaceLimit(t) else { return false }
        t.whitespace += 1
        return true
    }

    func whitespaceLimit(_ t: Thread) -> UInt16 {
        UInt16(JSONObjectGrammar.maxWhitespaceRun + JSONObjectGrammar.whitespacePerLevel * Int(t.depth))
    }

    /// Advances `t` over `b`. Returns true when `t` itself survives (changed in place); alternatives that
    /// a value start forks (anyOf) are appended to `spill`.
    private func stepInPlace(_ t: inout Thread, _ b: UInt8, spill: inout [Thread]) -> Bool {
        if !t.started {
            if let taken = space(&t, b) { return taken }
            t.started = true
            return startValue(&t, node: 0, b, spill: &spill)
        }
        guard let last = t.frames.indices.last else { return false }   // done: nothing more
        let nodes = compiled.nodes
        switch t.frames[last].kind {
        case .string:
            switch t.frames[last].lex.step(b) {
            case .refused: return false
            case .closed:
                guard t.frames[last].count >= minLength(t.frames[last].node) else { return false }
                pop(&t)
                return true
            case .char:
                guard t.frames[last].count < maxLength(t.frames[last].node) else { return false }
                t.frames[last].count += 1
                return true
            case .more:
                return true
            }
        case .number:
            if let sub = JSONNumberLexer.step(t.frames[last].num, b, integer: t.frames[last].integer) {
                t.frames[last].num = sub
                return true
            }
            guard JSONNumberLexer.canEnd(t.frames[last].num) else { return false }
            pop(&t)
            return stepInPlace(&t, b, spill: &spill)
        case .literal:
            guard case .literals(let lits) = nodes[Int(t.frames[last].node)] else { return false }
            let pos = Int(t.frames[last].count)
            var next: UInt64 = 0, complete = false
            var c = t.frames[last].cand
            while c != 0 {
                let k = c.trailingZeroBitCount
                c &= c - 1
                let l = lits[k]
                if l.count > pos && l[pos] == b { next |= 1 << UInt64(k) }
                if l.count == pos { complete = true }
            }
            if next != 0 {
                t.frames[last].cand = next
                t.frames[last].count += 1
                settleLiteral(&t, lits)
                return true
            }
            // A complete number literal ends at the byte after it, which belongs to what follows.
            guard complete else { return false }
            pop(&t)
            return stepInPlace(&t, b, spill: &spill)
        case .any:
            var g = t.frames[last].free
            if g.step(b) {
                if g.isComplete { pop(&t) } else { t.frames[last].free = g }
                return true
            }
            // Only a number that is the whole free value ends it here (one inside its array or object does not).
            guard t.frames[last].free.numberCanEnd && t.frames[last].free.depth == 0 else { return false }
            pop(&t)
            return stepInPlace(&t, b, spill: &spill)
        case .object:
            guard case .object(let props, let required, let additional) = nodes[Int(t.frames[last].node)] else { return false }
            let phase = t.frames[last].phase
            if phase == 2 {   // in a key
                let f = t.frames[last]
                if b == 0x22 {
                    guard f.lex.atCharBoundary else { return false }
                    var exact = -1
                    var c = f.cand
                    while c != 0 {
                        let k = c.trailingZeroBitCount
                        c &= c - 1
                        if props[k].name.count == Int(f.count) { exact = k; break }
                    }
                    if exact >= 0 {
                        guard (f.seen >> UInt64(exact)) & 1 == 0, fits(t, props[exact].node, after: 0) else { return false }
                        t.frames[last].seen |= 1 << UInt64(exact)
                        t.frames[last].valueNode = props[exact].node
                    } else {
                        guard additional >= 0, f.count > 0, fits(t, additional, after: 0) else { return false }
                        // A key used twice is refused, unless the key is at its length cap (then closing it
                        // is the only way on: a repeated key is still JSON).
                        if f.otherKeys.contains(f.keyHash) && f.count < UInt32(SchemaProgram.maxNameLength + 8) { return false }
                        t.frames[last].otherKeys.append(f.keyHash)
                        t.frames[last].valueNode = additional
                    }
                    t.frames[last].phase = 3
                    return true
                }
                // Other keys may run a little past the longest property name, so that typing a seen name does
                // not corner the key; the cap applies between characters.
                guard b != 0x5C, f.count < UInt32(SchemaProgram.maxNameLength + 8) || !f.lex.atCharBoundary else { return false }
                guard t.frames[last].lex.step(b) != .refused else { return false }
                var next: UInt64 = 0
                var c = f.cand
                let pos = Int(f.count)
                while c != 0 {
                    let k = c.trailingZeroBitCount
                    c &= c - 1
                    if props[k].name.count > pos && props[k].name[pos] == b { next |= 1 << UInt64(k) }
                }
                if additional < 0 || !fits(t, additional, after: 0) {
                    // Only the properties: some unseen one that fits must still match.
                    guard next & ~f.seen & fittingProperties(t, props) != 0 else { return false }
                }
                t.frames[last].cand = next
                t.frames[last].count += 1
                t.frames[last].keyHash = (f.keyHash ^ UInt64(b)) &* 0x100000001B3
                return true
            }
            if let taken = space(&t, b) { return taken }
            let f = t.frames[last]
            switch (phase, b) {
            case (0, 0x7D), (5, 0x7D):
                guard f.seen & required == required else { return false }
                t.depth -= 1
                pop(&t)
                return true
            case (0, 0x22), (1, 0x22):
                guard keyPossible(t, f, props, additional) else { return false }
                t.frames[last].phase = 2
                t.frames[last].count = 0
                t.frames[last].keyHash = 0xCBF29CE484222325
                t.frames[last].cand = props.count == 64 ? ~0 : (1 << UInt64(props.count)) - 1
                t.frames[last].lex = StringLexer()
                return true
            case (3, 0x3A):
                t.frames[last].phase = 4
                return true
            case (4, _):
                t.frames[last].phase = 5
                return startValue(&t, node: f.valueNode, b, spill: &spill)
            case (5, 0x2C):
                guard keyPossible(t, f, props, additional) else { return false }
                t.frames[last].phase = 1
                return true
            default:
                return false
            }
        case .array:
            guard case .array(let items, let lo, let hi) = nodes[Int(t.frames[last].node)] else { return false }
            if let taken = space(&t, b) { return taken }
            let f = t.frames[last]
            switch (f.phase, b) {
            case (0, 0x5D), (2, 0x5D):
                guard f.count >= lo else { return false }
                t.depth -= 1
                pop(&t)
                return true
            case (2, 0x2C):
                guard f.count < hi else { return false }
                t.frames[last].phase = 1
                return true
            case (0, _), (1, _):
                guard f.count < hi, fits(t, items, after: 0) else { return false }
                t.frames[last].count += 1
                t.frames[last].phase = 2
                return startValue(&t, node: items, b, spill: &spill)
            default:
                return false
            }
        }
    }

    /// Whether a value of `node` fits below the containers open in `t` (plus `after` more).
    private func fits(_ t: Thread, _ node: Int32, after: Int) -> Bool {
        Int(t.depth) + after + Int(compiled.minDepth[Int(node)]) <= SchemaProgram.maxDepth
    }

    /// The properties whose values fit one level below the object at the top of `t`.
    private func fittingProperties(_ t: Thread, _ props: [SchemaProgram.Property]) -> UInt64 {
        var m: UInt64 = 0
        for (k, p) in props.enumerated() where Int(t.depth) + Int(compiled.minDepth[Int(p.node)]) <= SchemaProgram.maxDepth {
            m |= 1 << UInt64(k)
        }
        return m
    }

    /// Whether another key may start in the object `f` (an unseen property, or any key if others are allowed).
    private func keyPossible(_ t: Thread, _ f: Frame, _ props: [SchemaProgram.Property], _ additional: Int32) -> Bool {
        if additional >= 0 && Int(t.depth) + Int(compiled.minDepth[Int(additional)]) <= SchemaProgram.maxDepth { return true }
        return ~f.seen & fittingProperties(t, props) != 0
    }

    private func minLength(_ node: Int32) -> UInt32 {
        if case .string(let lo, _) = compiled.nodes[Int(node)] { return lo }
        return 0
    }

    private func maxLength(_ node: Int32) -> UInt32 {
        if case .string(_, let hi) = compiled.nodes[Int(node)] { return hi }
        return .max
    }

    /// A value ended: the frame goes; the enclosing container is already in its "after a value" phase.
    private func pop(_ t: inout Thread) {
        t.frames.removeLast()
        t.whitespace = 0
    }

    /// After a literal byte: if every candidate left is matched whole and none is a number (which could go
    /// on), the literal is over.
    private func settleLiteral(_ t: inout Thread, _ lits: [[UInt8]]) {
        let f = t.frames[t.frames.count - 1]
        var c = f.cand
        while c != 0 {
            let k = c.trailingZeroBitCount
            c &= c - 1
            if lits[k].count > Int(f.count) { return }
            let first = lits[k][0]
            if first == 0x2D || Self.isDigit(first) { return }
        }
        pop(&t)
    }

    /// Starts a value of `node` with its first byte `b` (not whitespace). anyOf: the first alternative that
    /// takes `b` continues in `t`, the others are appended to `spill`.
    private func startValue(_ t: inout Thread, node: Int32, _ b: UInt8, spill: inout [Thread]) -> Bool {
        let nodes = compiled.nodes
        switch nodes[Int(node)] {
        case .anyOf:
            var first: Thread? = nil
            for a in compiled.leaves[Int(node)] where fits(t, a, after: 0) {
                var u = t
                if startValue(&u, node: a, b, spill: &spill) {   // a leaf: never forks further
                    if first == nil { first = u } else if spill.count < Self.maxThreads { spill.append(u) }
                }
            }
            guard let first else { return false }
            t = first
            return true
        case .object:
            guard b == 0x7B, Int(t.depth) < SchemaProgram.maxDepth else { return false }
            t.depth += 1
            t.frames.append(Frame(kind: .object, node: node))
            return true
        case .array:
            guard b == 0x5B, Int(t.depth) < SchemaProgram.maxDepth else { return false }
            t.depth += 1
            t.frames.append(Frame(kind: .array, node: node))
            return true
        case .string:
            guard b == 0x22 else { return false }
            t.frames.append(Frame(kind: .string, node: node))
            return true
        case .number, .integer:
            let integer = nodes[Int(node)] == .integer
            guard let sub = JSONNumberLexer.step(JSONNumberLexer.start, b, integer: integer) else { return false }
            var f = Frame(kind: .number, node: node)
            f.num = sub; f.integer = integer
            t.frames.append(f)
            return true
        case .literals(let lits):
            var c: UInt64 = 0
            for (k, l) in lits.enumerated() where l[0] == b { c |= 1 << UInt64(k) }
            guard c != 0 else { return false }
            var f = Frame(kind: .literal, node: node)
            f.cand = c; f.count = 1
            t.frames.append(f)
            settleLiteral(&t, lits)
            return true
        case .any:
            var g = JSONObjectGrammar(value: ())
            guard g.step(b) else { return false }
            if g.isComplete { return true }
            var f = Frame(kind: .any, node: node)
            f.free = g
            t.frames.append(f)
            return true
        }
    }
}

extension SchemaGrammar: TokenGrammar {
    public var whitespaceRoom: Int? {
        var room = Int.max
        for t in threads {
            if t.done { return nil }
            if t.started, let f = t.frames.last {
                switch f.kind {
                case .object: if f.phase == 2 { return nil }
                case .array: break
                default: return nil
                }
            }
            room = min(room, Int(whitespaceLimit(t)) - Int(t.whitespace))
        }
        return room
    }

    public var plainStringRoom: Int {
        var room = Int.max
        for t in threads {
            guard let f = t.frames.last, f.kind == .string, f.lex.atCharBoundary else { return 0 }
            room = min(room, Int(maxLength(f.node)) - Int(f.count))
        }
        return room
    }
}

/// A JSON number, byte by byte (RFC 8259: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?; `integer`: without
/// fraction or exponent). States are JSONObjectGrammar.Num's raw values, plus `start`.
enum JSONNumberLexer {
    static let start: UInt8 = 255

    /// The state after `b`, or nil if `b` cannot continue the number.
    static func step(_ s: UInt8, _ b: UInt8, integer: Bool) -> UInt8? {
        typealias N = JSONObjectGrammar.Num
        let minus = N.minus.rawValue, zero = N.zero.rawValue, int = N.int.rawValue, dot = N.dot.rawValue
        let frac = N.frac.rawValue, exp = N.exp.rawValue, expSign = N.expSign.rawValue, expDigits = N.expDigits.rawValue
        let digit = b >= 0x30 && b <= 0x39
        switch s {
        case start: return b == 0x2D ? minus : (b == 0x30 ? zero : (digit ? int : nil))
        case minus: return b == 0x30 ? zero : (digit ? int : nil)
        case int where digit: return int
        case zero, int:
            if integer { return nil }
            if b == 0x2E { return dot }
            return b == 0x65 || b == 0x45 ? exp : nil
        case dot: return digit ? frac : nil
        case frac: return digit ? frac : (b == 0x65 || b == 0x45 ? exp : nil)
        case exp: return b == 0x2B || b == 0x2D ? expSign : (digit ? expDigits : nil)
        case expSign, expDigits: return digit ? expDigits : nil
        default: return nil
        }
    }

    /// Whether a number in state `s` is complete (it may end here).
    static func canEnd(_ s: UInt8) -> Bool {
        typealias N = JSONObjectGrammar.Num
        return s == N.zero.rawValue || s == N.int.rawValue || s == N.frac.rawValue || s == N.expDigits.rawValue
    }
}

/// A JSON string's bytes after its opening quote: escapes, surrogate pairs, well-formed UTF-8, no control
/// bytes. Reports where characters begin, so lengths can be counted in code points.
struct StringLexer: Sendable, Equatable {
    enum Outcome: Equatable { case refused, closed, char, more }
    var utf8Need: UInt8 = 0
    var utf8Lo: UInt8 = 0x80
    var utf8Hi: UInt8 = 0xBF
    /// 0 text, 1 after '\', 2 in \uXXXX (`hex` digits left).
    var escape: UInt8 = 0
    var hex: UInt8 = 0
    var code: UInt16 = 0
    var wantLow = false

    /// Between characters (no escape or UTF-8 sequence open, no low surrogate owed).
    var atCharBoundary: Bool { utf8Need == 0 && escape == 0 && !wantLow }

    mutating func step(_ b: UInt8) -> Outcome {
        if utf8Need > 0 {
            guard b >= utf8Lo && b <= utf8Hi else { return .refused }
            utf8Need -= 1; utf8Lo = 0x80; utf8Hi = 0xBF
            return .more
        }
        switch escape {
        case 1:
            if wantLow { guard b == 0x75 else { return .refused }; escape = 2; hex = 4; code = 0; return .more }
            switch b {
            case 0x22, 0x5C, 0x2F, 0x62, 0x66, 0x6E, 0x72, 0x74: escape = 0; return .more
            case 0x75: escape = 2; hex = 4; code = 0; return .more
            default: return .refused
            }
        case 2:
            let v: UInt8
            switch b {
            case 0x30...0x39: v = b - 0x30
            case 0x61...0x66: v = b - 0x61 + 10
            case 0x41...0x46: v = b - 0x41 + 10
            default: return .refused
            }
            code = code << 4 | UInt16(v)
            hex -= 1
            if hex == 2 {
                let isHigh = code >= 0xD8 && code <= 0xDB, isLow = code >= 0xDC && code <= 0xDF
                if wantLow != isLow { return .refused }
                wantLow = isHigh
            }
            if hex == 0 { escape = 0 }
            return .more
        default:
            break
        }
        if wantLow { guard b == 0x5C else { return .refused }; escape = 1; return .more }
        switch b {
        case 0x22: return .closed
        case 0x5C: escape = 1; return .char   // an escape is one character (a surrogate pair too: its low half is not counted)
        case 0x20...0x7F: return .char
        case 0xC2...0xDF: utf8Need = 1
        case 0xE0: utf8Need = 2; utf8Lo = 0xA0
        case 0xE1...0xEC, 0xEE, 0xEF: utf8Need = 2
        case 0xED: utf8Need = 2; utf8Hi = 0x9F
        case 0xF0: utf8Need = 3; utf8Lo = 0x90
        case 0xF1...0xF3: utf8Need = 3
        case 0xF4: utf8Need = 3; utf8Hi = 0x8F
        default: return .refused
        }
        return .char
    }
}

/// What a request's answer is constrained to, with its state: one JSON object (JSON mode) or one that
/// validates against a schema.
public enum ResponseConstraint: Sendable {
    case jsonObject(JSONObjectGrammar)
    case schema(SchemaGrammar)

    public var isComplete: Bool {
        switch self {
        case .jsonObject(let g): return g.isComplete
        case .schema(let g): return g.isComplete
        }
    }

    /// `table.mask` for the current state.
    public func mask(_ table: JSONTokenTable, _ logits: UnsafeBufferPointer<Float>,
                     into out: UnsafeMutableBufferPointer<Float>) -> (text: Int, fallback: Bool) {
        switch self {
        case .jsonObject(let g): return table.mask(logits, state: g, into: out)
        case .schema(let g): return table.mask(logits, state: g, into: out)
        }
    }

    /// Advances over token `id`; false (and unchanged) if the grammar refuses it.
    public mutating func advance(_ table: JSONTokenTable, token id: Int32) -> Bool {
        switch self {
        case .jsonObject(var g):
            guard table.advance(&g, token: id) else { return false }
            self = .jsonObject(g)
        case .schema(var g):
            guard table.advance(&g, token: id) else { return false }
            self = .schema(g)
        }
        return true
    }
}
