// Wire: the record formats that travel between the front and a worker over the shared-memory rings.
//
// The ring itself frames records (an 8-byte header with length and type); this module defines the
// type codes and the payload layout inside a record. No I/O happens here.
//
// Encoding: little-endian, fixed-width integers, every variable-length field prefixed by its length.
// The peer is untrusted (it may be buggy or dying), so every decoder checks each length against the
// bytes that remain and fails with a `WireError` naming the field — it never reads out of bounds.

/// Record type codes. Requests flow front → worker, responses worker → front.
public enum RecordType: UInt32, Sendable, CaseIterable {
    // front → worker
    case submit = 1
    case cancel = 2
    case tokenize = 3
    case detokenize = 4
    // worker → front
    case delta = 17
    case done = 18
    case error = 19
    case tokens = 20
    case text = 21
    case ready = 22
    case logprobs = 23
}

public enum WireError: Error, Equatable, CustomStringConvertible, Sendable {
    case truncated(field: String, needed: Int, remaining: Int)
    case invalidValue(field: String, value: UInt64)
    case tooLarge(field: String, length: Int, limit: Int)
    case invalidUTF8(field: String)
    case trailingBytes(Int)
    case unknownType(UInt32)
    case bufferTooSmall(needed: Int, available: Int)

    public var description: String {
        switch self {
        case .truncated(let f, let n, let r): "wire record truncated in \(f): needs \(n) bytes, \(r) remain"
        case .invalidValue(let f, let v): "wire record has invalid \(f) (\(v))"
        case .tooLarge(let f, let l, let lim): "wire record field \(f) is \(l) long, limit \(lim)"
        case .invalidUTF8(let f): "wire record field \(f) is not valid UTF-8"
        case .trailingBytes(let n): "wire record has \(n) unexpected trailing bytes"
        case .unknownType(let t): "unknown wire record type \(t)"
        case .bufferTooSmall(let n, let a): "wire encode needs \(n) bytes, buffer has \(a)"
        }
    }
}

/// Explicit limits: a record that exceeds them is refused by both encoder and decoder.
public enum WireLimits {
    public static let maxText = 4 << 20           // prompt text, message content, deltas
    public static let maxMessages = 4096
    public static let maxStops = 16
    public static let maxStopLength = 256
    public static let maxSessionKey = 256
    public static let maxTokens = 1 << 20          // ids in a tokens/detokenize record
    /// Most alternatives per generated token in a logprobs record (OpenAI's top_logprobs bound).
    public static let maxTopLogprobs = 20
    /// Most bytes of one token's text in a logprobs record (vocabulary pieces are far shorter).
    public static let maxTokenBytes = 4096
    /// Most token entries in one logprobs record (the worker sends one per sampled token).
    public static let maxLogprobEntries = 4096
    /// Most logit_bias entries in a submit.
    public static let maxLogitBiases = 1024
    /// A compiled JSON schema (JSONSchema.SchemaProgram's binary form).
    public static let maxSchemaBytes = 256 << 10
}

// MARK: - Request side

public enum PromptKind: UInt8, Sendable {
    case completion = 0   // raw prompt text (POST /v1/completions)
    case chat = 1         // messages, rendered by the worker's chat template (POST /v1/chat/completions)
}

public struct WireMessage: Equatable, Sendable {
    public var role: String
    public var content: String
    public init(role: String, content: String) { self.role = role; self.content = content }
}

/// Sampling parameters as sent on the wire. `seed == nil` means "pick one" (the worker derives it from
/// the request id so a run is still reproducible from the logs).
public struct WireSampling: Equatable, Sendable {
    public var temperature: Float
    public var topP: Float
    public var minP: Float
    public var topK: Int32
    public var maxTokens: UInt32
    public var seed: UInt64?
    public var stop: [String]
    /// Log-probabilities of the generated tokens: nil = none; n = each token's, with its n most likely
    /// alternatives (0...WireLimits.maxTopLogprobs). On the wire one byte: 0 = none, n + 1.
    public var logprobs: UInt8?
    /// OpenAI's penalties on tokens already generated (0 = off).
    public var presencePenalty: Float = 0
    public var frequencyPenalty: Float = 0
    /// Added to the logits of these tokens before sampling.
    public var logitBias: [WireLogitBias] = []
    /// JSON mode (response_format json_object): the answer is constrained to one JSON object.
    public var jsonObject = false
    /// Structured outputs (response_format json_schema): the compiled schema the answer must validate
    /// against (JSONSchema.SchemaProgram's binary form); empty = none. Set only with `jsonObject`.
    public var jsonSchema: [UInt8] = []
    public init(temperature: Float = 1, topP: Float = 1, minP: Float = 0, topK: Int32 = 0,
                maxTokens: UInt32 = 256, seed: UInt64? = nil, stop: [String] = [], logprobs: UInt8? = nil) {
        self.temperature = temperature; self.topP = topP; self.minP = minP; self.topK = topK
        self.maxTokens = maxTokens; self.seed = seed; self.stop = stop; self.logprobs = logprobs
    }
}

public struct WireLogitBias: Equatable, Sendable {
    public var token: Int32
    public var bias: Float
    public init(token: Int32, bias: Float) { self.token = token; self.bias = bias }
}

public struct SubmitRecord: Equatable, Sendable {
    public var requestID: UInt64
    public var kind: PromptKind
    /// Session key (X-Session-Id, session_id or user); empty = no session cache for this request.
    public var sessionKey: String
    public var sampling: WireSampling
    /// For `.completion`: the prompt text. For `.chat`: unused (empty).
    public var prompt: String
    /// For `.completion`: the prompt as token ids, used as they are instead of `prompt` when not empty.
    public var promptTokens: [Int32]
    /// For `.chat`: the messages. For `.completion`: empty.
    public var messages: [WireMessage]
    public init(requestID: UInt64, kind: PromptKind, sessionKey: String, sampling: WireSampling,
                prompt: String = "", messages: [WireMessage] = [], promptTokens: [Int32] = []) {
        self.requestID = requestID; self.kind = kind; self.sessionKey = sessionKey
        self.sampling = sampling; self.prompt = prompt; self.messages = messages; self.promptTokens = promptTokens
    }
}

public struct CancelRecord: Equatable, Sendable {
    public var requestID: UInt64
    public init(requestID: UInt64) { self.requestID = requestID }
}

public struct TokenizeRecord: Equatable, Sendable {
    public var requestID: UInt64
    public var addSpecial: Bool
    public var parseSpecial: Bool
    public var content: String
    public init(requestID: UInt64, addSpecial: Bool, parseSpecial: Bool, content: String) {
        self.requestID = requestID; self.addSpecial = addSpecial; self.parseSpecial = parseSpecial
        self.content = content
    }
}

/// Detokenize request (front → worker) and tokenize answer (worker → front) share this shape.
public struct TokensRecord: Equatable, Sendable {
    public var requestID: UInt64
    public var tokens: [Int32]
    public init(requestID: UInt64, tokens: [Int32]) { self.requestID = requestID; self.tokens = tokens }
}

// MARK: - Response side

/// A piece of generated text: always whole UTF-8 characters (the worker holds incomplete sequences).
public struct DeltaRecord: Equatable, Sendable {
    public var requestID: UInt64
    /// Tokens generated so far for this request, including this delta's.
    public var completionTokens: UInt32
    public var text: String
    public init(requestID: UInt64, completionTokens: UInt32, text: String) {
        self.requestID = requestID; self.completionTokens = completionTokens; self.text = text
    }
}

/// One token and its log-probability under the model (log-softmax of the raw logits: temperature and the
/// truncation samplers do not change it), with the token's text as bytes (a piece may end inside a UTF-8
/// character).
public struct WireTokenLogprob: Equatable, Sendable {
    public var token: Int32
    public var bytes: [UInt8]
    public var logprob: Float
    public init(token: Int32, bytes: [UInt8], logprob: Float) {
        self.token = token; self.bytes = bytes; self.logprob = logprob
    }
}

/// A generated token's log-probability and the most likely alternatives at its step (most likely first).
public struct LogprobEntry: Equatable, Sendable {
    public var sampled: WireTokenLogprob
    public var top: [WireTokenLogprob]
    public init(sampled: WireTokenLogprob, top: [WireTokenLogprob]) { self.sampled = sampled; self.top = top }
}

/// Log-probabilities of generated tokens (requests that asked for them), sent before the delta that
/// carries those tokens' text; tokens whose text is still held back (an unfinished character, a possible
/// stop string) are sent all the same and belong to the next delta or to the end of the answer.
public struct LogprobsRecord: Equatable, Sendable {
    public var requestID: UInt64
    public var entries: [LogprobEntry]
    public init(requestID: UInt64, entries: [LogprobEntry]) { self.requestID = requestID; self.entries = entries }
}

public enum FinishReason: UInt8, Sendable {
    case stop = 0        // EOS / end-of-turn token or a stop string
    case length = 1      // max_tokens or the context limit
    case cancelled = 2   // the front cancelled it (client went away)
    case error = 3       // see the error record sent before it

    public var openAIName: String {
        switch self {
        case .stop: "stop"
        case .length: "length"
        case .cancelled: "cancelled"
        case .error: "error"
        }
    }
}

public struct DoneRecord: Equatable, Sendable {
    public var requestID: UInt64
    public var finish: FinishReason
    public var promptTokens: UInt32
    public var completionTokens: UInt32
    /// Prompt tokens served from the session's KV cache instead of being prefilled.
    public var cachedTokens: UInt32
    /// Time from admission in the worker to the first token, and of the whole request (ns).
    public var firstTokenNanos: UInt64
    public var totalNanos: UInt64
    public init(requestID: UInt64, finish: FinishReason, promptTokens: UInt32, completionTokens: UInt32,
                cachedTokens: UInt32, firstTokenNanos: UInt64 = 0, totalNanos: UInt64 = 0) {
        self.requestID = requestID; self.finish = finish; self.promptTokens = promptTokens
        self.completionTokens = completionTokens; self.cachedTokens = cachedTokens
        self.firstTokenNanos = firstTokenNanos; self.totalNanos = totalNanos
    }
}

public enum WireErrorCode: UInt16, Sendable {
    case invalidRequest = 400      // e.g. bad template role, an empty prompt
    /// The prompt does not fit the model's context: HTTP 400 with OpenAI's code `context_length_exceeded`
    /// (clients such as LangChain look for that code to trim a conversation).
    case contextLengthExceeded = 1400
    case overloaded = 503          // the worker's batch and queue are full
    case internalError = 500

    public init(raw: UInt16) { self = WireErrorCode(rawValue: raw) ?? .internalError }

    /// Whether an error with this code is a refusal of a request the worker never admitted: no done record
    /// follows it (the request ends with the error). An internal error can strike a running request, whose
    /// done record then still comes.
    public var isRefusal: Bool {
        switch self {
        case .invalidRequest, .contextLengthExceeded, .overloaded: true
        case .internalError: false
        }
    }
}

public struct ErrorRecord: Equatable, Sendable {
    public var requestID: UInt64
    public var code: WireErrorCode
    public var message: String
    public init(requestID: UInt64, code: WireErrorCode, message: String) {
        self.requestID = requestID; self.code = code; self.message = message
    }
}

public struct TextRecord: Equatable, Sendable {
    public var requestID: UInt64
    public var text: String
    public init(requestID: UInt64, text: String) { self.requestID = requestID; self.text = text }
}

/// Sent once by a worker after its model is mapped and a warm-up step ran.
public struct ReadyRecord: Equatable, Sendable {
    public var workerID: UInt32
    public var pid: Int32
    public var numaNode: Int32
    public var contextLength: UInt32
    public var modelName: String
    public var cpus: [Int32]
    public init(workerID: UInt32, pid: Int32, numaNode: Int32, contextLength: UInt32, modelName: String,
                cpus: [Int32]) {
        self.workerID = workerID; self.pid = pid; self.numaNode = numaNode
        self.contextLength = contextLength; self.modelName = modelName; self.cpus = cpus
    }
}

/// Every record, tagged — what `decode(type:payload:)` returns.
public enum Record: Equatable, Sendable {
    case submit(SubmitRecord)
    case cancel(CancelRecord)
    case tokenize(TokenizeRecord)
    case detokenize(TokensRecord)
    case delta(DeltaRecord)
    case done(DoneRecord)
    case error(ErrorRecord)
    case tokens(TokensRecord)
    case text(TextRecord)
    case ready(ReadyRecord)
    case logprobs(LogprobsRecord)

    public var type: RecordType {
        switch self {
        case .submit: .submit
        case .cancel: .cancel
        case .tokenize: .tokenize
        case .detokenize: .detokenize
        case .delta: .delta
        case .done: .done
        case .error: .error
        case .tokens: .tokens
        case .text: .text
        case .ready: .ready
        case .logprobs: .logprobs
        }
    }

    /// The request this record belongs to (0 for `ready`).
    public var requestID: UInt64 {
        switch self {
        case .submit(let r): r.requestID
        case .cancel(let r): r.requestID
        case .tokenize(let r): r.requestID
        case .detokenize(let r): r.requestID
        case .delta(let r): r.requestID
        case .done(let r): r.requestID
        case .error(let r): r.requestID
        case .tokens(let r): r.requestID
        case .text(let r): r.requestID
        case .logprobs(let r): r.requestID
        case .ready: 0
        }
    }
}
