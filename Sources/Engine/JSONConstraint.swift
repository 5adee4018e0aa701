// JSON mode (OpenAI's `response_format: {"type": "json_object"}`): the answer is constrained to one JSON
// object, byte by byte. Before each sampling step every token whose bytes the grammar would refuse from
// its current state gets logit -inf; the end-of-generation tokens are allowed only once the object is
// closed, and then nothing else is. Values are not checked against any schema.
//
// The grammar is a pushdown automaton over bytes (RFC 8259): objects, arrays, strings with escapes
// (\" \\ \/ \b \f \n \r \t \uXXXX, surrogates only in high-low pairs; other text must be well-formed UTF-8,
// control bytes are refused), numbers, true / false / null, whitespace. Nesting is at most 64 deep (a bit
// per level). A run of whitespace outside strings is capped at 32 + 4 bytes per open container (room for a
// newline and indentation at any depth), so a model cannot pad forever instead of finishing.
//
// A user's stop string still ends an answer where it matches, inside the object too (as OpenAI's JSON mode
// does); log-probabilities are the model's, from the unmasked row.

/// The state of one JSON object being generated. A value type of a few words: checking a token copies it.
public struct JSONObjectGrammar: Sendable, Equatable {
    public static let maxDepth = 64
    public static let maxWhitespaceRun = 32
    /// Whitespace a run may add per open container (indentation).
    public static let whitespacePerLevel = 4

    enum Mode: UInt8, Sendable {
        case start          // before the top-level '{'
        case keyOrClose     // after '{': '"' or '}'
        case key            // after ',' in an object: '"'
        case colon          // after a key: ':'
        case value          // a value must start
        case valueOrClose   // after '[': a value or ']'
        case afterValue     // after a value inside a container: ',' or the container's closer
        case string         // inside a string (`lex`: escapes, surrogates, UTF-8)
        case number         // inside a number (`sub` is where)
        case literal        // inside true / false / null (`literal`, `count` bytes matched)
        case done           // the top-level object is closed
    }
    // Number sub-states.
    enum Num: UInt8, Sendable { case minus, zero, int, dot, frac, exp, expSign, expDigits }

    var mode: Mode = .start
    /// One bit per open container, bit `depth - 1` the innermost: 1 = object, 0 = array.
    var stack: UInt64 = 0
    var depth: UInt8 = 0
    /// The string being read is an object key (a ':' follows it).
    var inKey = false
    var sub: Num = .minus
    var count: UInt8 = 0
    var literal: UInt8 = 0     // 0 true, 1 false, 2 null
    var whitespace: UInt16 = 0
    /// Inside a string: its lexer (escapes, surrogate pairs, well-formed UTF-8; shared with SchemaGrammar).
    var lex = StringLexer()

    public init() {}

    /// The grammar of any one JSON value (not only an object): a free value inside a schema.
    init(value: Void) { mode = .value }

    /// Inside a number that may end here (the next byte then belongs to what follows).
    var numberCanEnd: Bool { mode == .number && JSONNumberLexer.canEnd(sub.rawValue) }

    /// The top-level object is closed: only the end of generation may follow.
    public var isComplete: Bool { mode == .done }

    /// The longest whitespace run allowed here.
    var whitespaceLimit: UInt16 { UInt16(Self.maxWhitespaceRun + Self.whitespacePerLevel * Int(depth)) }

    /// Whether whitespace (of any kind) can come next and the state does not change by it other than the run
    /// count: the structural modes, between tokens of the JSON text.
    var betweenTokens: Bool {
        switch mode {
        case .start, .keyOrClose, .key, .colon, .value, .valueOrClose, .afterValue: return true
        default: return false
        }
    }

    private static let literals: [[UInt8]] = [Array("true".utf8), Array("false".utf8), Array("null".utf8)]

    @inline(__always) private static func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 }

    private var innermostIsObject: Bool { depth > 0 && (stack >> UInt64(depth - 1)) & 1 == 1 }

    private mutating func push(object: Bool) -> Bool {
        guard Int(depth) < Self.maxDepth else { return false }
        if object { stack |= 1 << UInt64(depth) } else { stack &= ~(1 << UInt64(depth)) }
        depth += 1
        return true
    }

    /// A value just ended (a string, number, literal or a closed container).
    private mutating func valueEnded() {
        mode = depth == 0 ? .done : .afterValue
    }

    private mutating func close(_ b: UInt8) -> Bool {
        let object = innermostIsObject
        guard depth > 0, (b == 0x7D && object) || (b == 0x5D && !object) else { return false }
        depth -= 1
        valueEnded()
        return true
    }

    /// Starts a value with byte `b` (mode `.value` or `.valueOrClose`).
    private mutating func startValue(_ b: UInt8) -> Bool {
        switch b {
        case 0x7B: guard push(object: true) else { return false }; mode = .keyOrClose
        case 0x5B: guard push(object: false) else { return false }; mode = .valueOrClose
        case 0x22: inKey = false; mode = .string; lex = StringLexer()
        case 0x2D, 0x30...0x39: mode = .number; sub = Num(rawValue: JSONNumberLexer.step(JSONNumberLexer.start, b, integer: false)!)!
        case 0x74, 0x66, 0x6E:
            mode = .literal; literal = b == 0x74 ? 0 : (b == 0x66 ? 1 : 2); count = 1
        default: return false
        }
        return true
    }

    /// Feeds one byte; false (state unchanged in meaning: the caller discards it) if JSON refuses it here.
    public mutating func step(_ b: UInt8) -> Bool {
        switch mode {
        case .string:
            switch lex.step(b) {
            case .refused: return false
            case .closed: if inKey { mode = .colon } else { valueEnded() }; whitespace = 0; return true
            case .char, .more: return true
            }
        case .number:
            if let next = JSONNumberLexer.step(sub.rawValue, b, integer: false) { sub = Num(rawValue: next)!; return true }
            // The number ends here if it can; the byte then belongs to what follows it.
            guard numberCanEnd else { return false }
            valueEnded()
            whitespace = 0
            return step(b)
        case .literal:
            let word = Self.literals[Int(literal)]
            guard b == word[Int(count)] else { return false }
            count += 1
            if Int(count) == word.count { valueEnded() }
            return true
        default:
            break
        }
        // Structural modes: whitespace may come first (capped).
        if Self.isSpace(b) {
            guard mode != .done, whitespace < whitespaceLimit else { return false }
            whitespace += 1
            return true
        }
        whitespace = 0
        switch mode {
        case .start:
            guard b == 0x7B, push(object: true) else { return false }
            mode = .keyOrClose
            return true
        case .keyOrClose:
            if b == 0x7D { return close(b) }
            guard b == 0x22 else { return false }
            inKey = true; mode = .string; lex = StringLexer()
            return true
        case .key:
            guard b == 0x22 else { return false }
            inKey = true; mode = .string; lex = StringLexer()
            return true
        case .colon:
            guard b == 0x3A else { return false }
            mode = .value
            return true
        case .value:
            return startValue(b)
        case .valueOrClose:
            if b == 0x5D { return close(b) }
            return startValue(b)
        case .afterValue:
            if b == 0x2C { mode = innermostIsObject ? .key : .value; return true }
            return close(b)
        case .done:
            return false
        default:
            return false
        }
    }

}

/// A byte-level grammar the token table masks with (JSON mode, a JSON schema).
public protocol TokenGrammar: Sendable {
    /// Feeds one byte; false if the grammar refuses it here.
    mutating func step(_ b: UInt8) -> Bool
    /// The answer is whole: only the end of generation may follow.
    var isComplete: Bool { get }
    /// Between JSON tokens, where whitespace changes nothing but the run count: how much more may come.
    /// nil elsewhere.
    var whitespaceRoom: Int? { get }
    /// Inside a string between characters: how many printable-ASCII bytes other than '"' and '\\' may
    /// follow as they are (each is one character). 0 elsewhere.
    var plainStringRoom: Int { get }
}

extension TokenGrammar {
    /// Whether all of `bytes` can follow the current state (the state is not changed). Empty: false.
    public func accepts(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard !bytes.isEmpty else { return false }
        var g = self
        for b in bytes where !g.step(b) { return false }
        return true
    }
}

extension JSONObjectGrammar: TokenGrammar {
    public var whitespaceRoom: Int? {
        betweenTokens && mode != .done ? Int(whitespaceLimit) - Int(whitespace) : nil
    }
    public var plainStringRoom: Int { mode == .string && lex.atCharBoundary ? Int.max : 0 }
}

/// The vocabulary as JSON mode needs it, built once per model: every token's bytes in one flat buffer,
/// and which tokens are special (never allowed) or end the generation (allowed once the object is closed).
public final class JSONTokenTable: Sendable {
    let bytes: [UInt8]
    let starts: [Int32]       // token i is bytes[starts[i] ..< starts[i + 1]]
    let kind: [UInt8]         // 0 text, 1 special (never), 2 end of generation
    /// Text tokens a string may hold as they are (printable ASCII without '"' and '\\'): inside a string,
    /// between characters, where most of an answer's tokens are chosen, these need no simulation.
    let plainInString: [Bool]
    /// How many whitespace bytes each token starts with (most tokens of a vocabulary start with a space):
    /// between JSON tokens these only count against the run limit, and the first byte after them decides.
    let leadingSpace: [UInt16]
    public var vocabSize: Int { kind.count }

    public init(tokenizer: Tokenizer) {
        var bytes: [UInt8] = []
        var starts: [Int32] = [0]
        var kind: [UInt8] = []
        for id in 0..<Int32(tokenizer.vocabSize) {
            tokenizer.appendTokenBytes(id, to: &bytes)
            starts.append(Int32(bytes.count))
            kind.append(tokenizer.isEndOfGeneration(id) ? 2 : (tokenizer.isSpecial(id) ? 1 : 0))
        }
        self.bytes = bytes; self.starts = starts; self.kind = kind
        plainInString = (0..<kind.count).map { i in
            let piece = bytes[Int(starts[i]) ..< Int(starts[i + 1])]
            return kind[i] == 0 && !piece.isEmpty && piece.allSatisfy { $0 >= 0x20 && $0 < 0x80 && $0 != 0x22 && $0 != 0x5C }
        }
        leadingSpace = (0..<kind.count).map { i in
            UInt16(bytes[Int(starts[i]) ..< Int(starts[i + 1])].prefix { $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }.count)
        }
    }

    /// Writes `logits` with every token the grammar refuses from `state` set to -infinity into `out`
    /// (same length; ids past the table are refused). Returns how many tokens stay allowed; when none
    /// would (cannot happen with a byte-level vocabulary), the end-of-generation tokens are allowed.
    /// The result's `text`: text tokens left allowed; `fallback`: none was (cannot happen with a byte-level
    /// vocabulary), so the end-of-generation tokens were allowed instead.
    public func mask(_ logits: UnsafeBufferPointer<Float>, state: JSONObjectGrammar,
                     into out: UnsafeMutableBufferPointer<Float>) -> (text: Int, fallback: Bool) {
        maskAny(logits, state: state, into: out)
    }

    /// The same for a JSON schema's grammar.
    public func mask(_ logits: UnsafeBufferPointer<Float>, state: SchemaGrammar,
                     into out: UnsafeMutableBufferPointer<Float>) -> (text: Int, fallback: Bool) {
        maskAny(logits, state: state, into: out)
    }

    func maskAny<G: TokenGrammar>(_ logits: UnsafeBufferPointer<Float>, state: G,
                                  into out: UnsafeMutableBufferPointer<Float>) -> (text: Int, fallback: Bool) {
        // Which first bytes can follow at all (a 256-bit set on the stack): most tokens are refused on their
        // first byte. Between JSON tokens a token's leading whitespace only counts against the run limit, so
        // there the byte after it is the one looked up.
        var firstOK = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        for b in 0..<256 {
            var g = state
            if g.step(UInt8(b)) {
                switch b >> 6 {
                case 0: firstOK.0 |= 1 << UInt64(b & 63)
                case 1: firstOK.1 |= 1 << UInt64(b & 63)
                case 2: firstOK.2 |= 1 << UInt64(b & 63)
                default: firstOK.3 |= 1 << UInt64(b & 63)
                }
            }
        }
        @inline(__always) func ok(_ b: UInt8) -> Bool {
            let word = switch b >> 6 { case 0: firstOK.0; case 1: firstOK.1; case 2: firstOK.2; default: firstOK.3 }
            return (word >> UInt64(b & 63)) & 1 == 1
        }
        var text = 0
        let n = min(logits.count, kind.count)
        let complete = state.isComplete
        let plainRoom = state.plainStringRoom
        let spaceRoom = state.whitespaceRoom ?? -1
        let between = spaceRoom >= 0
        bytes.withUnsafeBufferPointer { all in
            for i in 0..<n {
                var allowed = false
                switch kind[i] {
                case 2: allowed = complete
                case 1: allowed = false
                default:
                    if complete { break }
                    let s = Int(starts[i]), e = Int(starts[i + 1])
                    if plainInString[i] && e - s <= plainRoom { allowed = true; break }
                    guard e > s else { break }
                    if between {
                        let lead = Int(leadingSpace[i])
                        guard lead <= spaceRoom else { break }
                        if lead == e - s { allowed = true; break }   // whitespace only, within the room
                        guard ok(all[s + lead]) else { break }
                    } else {
                        guard ok(all[s]) else { break }
                    }
                    allowed = state.accepts(UnsafeBufferPointer(rebasing: all[s..<e]))
                }
                out[i] = allowed ? logits[i] : -.infinity
                if allowed && kind[i] == 0 { text += 1 }
            }
        }
        for i in n..<out.count { out[i] = -.infinity }
        if text == 0 && !complete {
            for i in 0..<n where kind[i] == 2 { out[i] = logits[i] }
            return (0, true)
        }
        return (text, false)
    }

    /// Advances `state` over token `id`'s bytes (false if the grammar refuses them; `state` may then be
    /// part-way: the caller advances a copy).
    public func advance<G: TokenGrammar>(_ state: inout G, token id: Int32) -> Bool {
        guard id >= 0, Int(id) < kind.count else { return false }
        if kind[Int(id)] != 0 { return kind[Int(id)] == 2 && state.isComplete }
        let s = Int(starts[Int(id)]), e = Int(starts[Int(id) + 1])
        for k in s..<e where !state.step(bytes[k]) { return false }
        return true
    }
}
