// The two interfaces the worker's scheduler drives. The real model (Engine) and the echo engine both
// implement them, so continuous batching, the session cache and publishing are the same code for both.
import Wire

/// One entry of a forward batch: append `tokens` to sequence `sequence`, starting at `position`
/// (= the number of tokens already in that sequence's KV cache).
public struct StepItem: Sendable {
    public var sequence: Int
    public var position: Int
    public var tokens: ArraySlice<Int32>
    public init(sequence: Int, position: Int, tokens: ArraySlice<Int32>) {
        self.sequence = sequence; self.position = position; self.tokens = tokens
    }
}

/// Token-level model: KV-cache sequences and one batched forward pass per step.
public protocol ModelRunner: AnyObject {
    var vocabSize: Int { get }
    /// Longest sequence (prompt + completion) a sequence slot can hold.
    var contextLength: Int { get }
    /// Most tokens one forward pass may carry (prefill chunks + decode tokens).
    var maxBatchTokens: Int { get }
    /// Bytes of KV cache one token occupies (for the session-cache budget).
    var kvBytesPerToken: Int { get }
    /// Reserves a sequence slot with an empty KV cache; nil when every slot is taken.
    func acquireSequence() -> Int?
    func releaseSequence(_ sequence: Int)
    /// Keeps the first `length` positions of the sequence's KV cache and forgets the rest.
    func truncateSequence(_ sequence: Int, to length: Int)
    /// Runs one forward pass over `items`, then calls `logits(i, row)` with the logits of item i's LAST
    /// token (vocabSize floats, valid only during the call), for every item in order.
    func forward(_ items: [StepItem], logits: (_ item: Int, _ row: UnsafeBufferPointer<Float>) -> Void) throws
}

/// Why a request was refused before it started.
public struct RequestRejection: Error, Sendable {
    public var code: WireErrorCode
    public var message: String
    public init(_ code: WireErrorCode, _ message: String) { self.code = code; self.message = message }
}

/// What one sampling step produced for a request.
public struct TokenOutcome: Sendable {
    public var token: Int32
    /// Text that is safe to publish now (whole UTF-8 characters, not part of a possible stop string).
    public var text: String
    /// Set when the request ends with this token.
    public var finish: FinishReason?
    /// Whether `token` counts as a completion token (end-of-generation tokens don't).
    public var counts: Bool
    public init(token: Int32, text: String, finish: FinishReason?, counts: Bool = true) {
        self.token = token; self.text = text; self.finish = finish; self.counts = counts
    }
}

/// Per-request text state: sampler, streaming detokenizer, stop strings, token limits.
public protocol GenerationState: AnyObject {
    /// Picks the next token from `logits` (vocabSize floats).
    func next(logits: UnsafeBufferPointer<Float>) -> TokenOutcome
    /// Text still held back when the request ends (an incomplete UTF-8 tail, a partial stop string).
    func flush() -> String
}

/// Text side of an engine: chat template, tokenizer, per-request generation state.
public protocol TextEngine: AnyObject {
    var modelName: String { get }
    /// Renders (chat template) and tokenizes the request's prompt, and prepares its generation state.
    /// `maxNewTokens` is the completion budget left by the context length.
    func begin(_ submit: SubmitRecord, contextLength: Int) throws(RequestRejection) -> (prompt: [Int32], state: any GenerationState)
    func tokenize(_ text: String, addSpecial: Bool, parseSpecial: Bool) -> [Int32]
    func detokenize(_ tokens: [Int32]) -> String
    /// The text bytes of one token (its vocabulary piece; empty for ids without text). For logprobs.
    func tokenBytes(_ token: Int32) -> [UInt8]
}
