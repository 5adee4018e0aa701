// The echo engine (`--engine echo`): no model. Tokens are UTF-8 bytes; a request's answer is its prompt
// (a completion's text, or a chat's last user message) streamed back token by token, cut at the first of the
// request's stop strings as the model's answers are. It runs through the same scheduler, rings and front as
// the real model, so transport and front are tested on their own.
import Engine
import Wire

public final class EchoRunner: ModelRunner {
    public let vocabSize = 257            // 256 byte tokens + end of text
    public let contextLength: Int
    public let maxBatchTokens: Int
    public let kvBytesPerToken = 4
    var lengths: [Int]                    // "KV" length per slot; -1 = free
    public private(set) var forwardCalls = 0
    public private(set) var lastBatchSize = 0

    public init(slots: Int = 64, contextLength: Int = 1 << 16, maxBatchTokens: Int = 4096) {
        self.contextLength = contextLength
        self.maxBatchTokens = maxBatchTokens
        lengths = [Int](repeating: -1, count: slots)
    }

    public func acquireSequence() -> Int? {
        guard let i = lengths.firstIndex(of: -1) else { return nil }
        lengths[i] = 0
        return i
    }

    public func releaseSequence(_ sequence: Int) { lengths[sequence] = -1 }

    public func truncateSequence(_ sequence: Int, to length: Int) {
        lengths[sequence] = min(lengths[sequence], length)
    }

    public var freeSlots: Int { lengths.reduce(0) { $0 + ($1 < 0 ? 1 : 0) } }

    public func forward(_ items: [StepItem], logits: (_ item: Int, _ row: UnsafeBufferPointer<Float>) -> Void) throws {
        forwardCalls += 1
        lastBatchSize = items.count
        for item in items {
            guard lengths[item.sequence] == item.position else {
                throw RequestRejection(.internalError, "echo: sequence \(item.sequence) is at \(lengths[item.sequence]), not \(item.position)")
            }
            lengths[item.sequence] += item.tokens.count
        }
        // Uniform logits: the echo state ignores them.
        uniform.withUnsafeBufferPointer { row in
            for i in items.indices { logits(i, row) }
        }
    }
    let uniform = [Float](repeating: 0, count: 257)
}

public final class EchoText: TextEngine {
    public let modelName = "echo"
    public init() {}

    public func begin(_ submit: SubmitRecord, contextLength: Int) throws(RequestRejection) -> (prompt: [Int32], state: any GenerationState) {
        let text: String
        switch submit.kind {
        case .completion where !submit.promptTokens.isEmpty:
            // Byte tokens as given (the scheduler checked them against the 257 ids): the answer is their
            // bytes (the end-of-text token 256 has none).
            let prompt = submit.promptTokens
            return (prompt, EchoState(answer: detokenize(prompt), maxTokens: Int(submit.sampling.maxTokens), stops: submit.sampling.stop))
        case .completion:
            text = submit.prompt
        case .chat:
            guard let last = submit.messages.last(where: { $0.role == "user" }) else {
                throw RequestRejection(.invalidRequest, "a chat request needs at least one user message")
            }
            text = last.content
        }
        // The prompt's byte tokens in one allocation, with room for the answer (the scheduler appends the
        // sampled tokens to this array); the state reads the answer from the text itself.
        let maxTokens = Int(submit.sampling.maxTokens)
        var t = text
        let prompt: [Int32] = t.withUTF8 { u in
            if u.isEmpty { return [256] }
            var a: [Int32] = []
            a.reserveCapacity(u.count + min(maxTokens, 1024) + 1)
            for c in u { a.append(Int32(c)) }
            return a
        }
        return (prompt, EchoState(answer: text, maxTokens: maxTokens, stops: submit.sampling.stop))
    }

    public func tokenize(_ text: String, addSpecial: Bool, parseSpecial: Bool) -> [Int32] {
        text.utf8.map { Int32($0) }
    }

    public func detokenize(_ tokens: [Int32]) -> String {
        String(decoding: tokens.compactMap { (0...255).contains($0) ? UInt8($0) : nil }, as: UTF8.self)
    }

    /// A byte token is its byte; the end-of-text token (256) has no text.
    public func tokenBytes(_ token: Int32) -> [UInt8] { (0...255).contains(token) ? [UInt8(token)] : [] }
}

/// Streams `answer`'s UTF-8 one byte-token per step, publishing whole UTF-8 characters only, through the same
/// stop-string matcher as the model (text that may begin a stop string is held back; a match ends with `stop`).
final class EchoState: GenerationState {
    var answer: String
    let maxTokens: Int
    var emitted = 0
    var held: [UInt8] = []
    var stops: StopMatcher
    var stopped = false

    init(answer: String, maxTokens: Int, stops: [String] = []) {
        self.answer = answer; self.maxTokens = maxTokens
        self.stops = StopMatcher(stops: stops)
    }

    func next(logits: UnsafeBufferPointer<Float>) -> TokenOutcome {
        // Native strings are contiguous UTF-8 (small ones inline): a byte by offset without an array copy.
        let b: UInt8? = answer.withUTF8 { u in emitted < u.count ? u[emitted] : nil }
        guard let b else { return TokenOutcome(token: 256, text: "", finish: .stop, counts: false) }
        emitted += 1
        var text = ""
        if b < 0x80 && held.isEmpty {
            text = String(Unicode.Scalar(b))   // ASCII: a whole character by itself
        } else {
            held.append(b)
            if let s = String(validating: held, as: UTF8.self) { text = s; held.removeAll(keepingCapacity: true) }
        }
        if !stops.isEmpty && !text.isEmpty {
            let out = stops.push(text)
            if out.stop != nil {
                stopped = true
                return TokenOutcome(token: Int32(b), text: out.text, finish: .stop)
            }
            text = out.text
        }
        let finish: FinishReason? = emitted >= maxTokens ? .length : nil
        return TokenOutcome(token: Int32(b), text: text, finish: finish)
    }

    func flush() -> String {
        defer { held.removeAll() }
        guard !stopped else { return "" }
        let rest = held.isEmpty ? "" : String(decoding: held, as: UTF8.self)
        if stops.isEmpty { return rest }
        let tail = stops.push(rest)
        if tail.stop != nil { stopped = true; return tail.text }
        return tail.text + stops.finish().text
    }
}
