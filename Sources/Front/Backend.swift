// The front's view of whatever generates text: the seam between the HTTP event loop and the rings/router/
// workers. The loop calls the backend only from its own thread; the backend's own threads talk back only
// through `wakeFD` + `drain`.

/// How a backend answers a submitted request.
public enum Admission: Sendable, Equatable {
    /// Queued on this worker; events will arrive for the request id.
    case admitted(workerID: Int)
    /// Every candidate worker's ring and queue are full → 503 with Retry-After.
    case overloaded(retryAfterSeconds: Int)
    /// Workers are still loading (or none is alive) → 503.
    case notReady(reason: String)
    /// The request can never be delivered as sent (its record exceeds what a worker's ring carries) → 400
    /// `request_too_large`; retrying it unchanged cannot succeed.
    case tooLarge(message: String)
}

public enum FinishReason: String, Sendable, Equatable {
    case stop, length, cancelled
    /// The answer is a tool call (the front's reading of a finished forced call; never from a backend).
    case toolCalls = "tool_calls"
}

public struct Usage: Sendable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    /// Prompt tokens served from the session cache (usage.prompt_tokens_details.cached_tokens).
    public var cachedTokens: Int
    public init(promptTokens: Int, completionTokens: Int, cachedTokens: Int) {
        self.promptTokens = promptTokens; self.completionTokens = completionTokens; self.cachedTokens = cachedTokens
    }
}

/// A token's text bytes (a piece may end inside a UTF-8 character) and its log-probability.
public struct LogprobToken: Sendable, Equatable {
    public var bytes: [UInt8]
    public var logprob: Float
    public init(bytes: [UInt8], logprob: Float) { self.bytes = bytes; self.logprob = logprob }
}

/// One generated token's log-probability and its step's most likely alternatives (most likely first).
public struct LogprobStep: Sendable, Equatable {
    public var token: LogprobToken
    public var top: [LogprobToken]
    public init(token: LogprobToken, top: [LogprobToken]) { self.token = token; self.top = top }
}

/// What the backend reports about a request, in order: any number of `.delta`, then exactly one of `.final`,
/// `.error`, `.tokens` or `.text`. Events for unknown ids (already cancelled) are dropped by the loop.
public enum BackendEvent: Sendable, Equatable {
    /// More generated text (valid UTF-8; may be empty).
    case delta(requestID: UInt64, text: String)
    case final(requestID: UInt64, finishReason: FinishReason, usage: Usage)
    /// The request failed (worker died, internal error). Streams already started get an SSE error event;
    /// otherwise the client gets 503.
    case error(requestID: UInt64, message: String)
    /// The worker refused the request before generating anything, with an HTTP status and the OpenAI error
    /// code of the body: 400 `context_length_exceeded` (the prompt does not fit the context), 400
    /// `invalid_request` (e.g. a role the chat template refuses), 503 (its queue is full; Retry-After is
    /// sent). If a stream has already started it is handled like `.error`.
    case rejected(requestID: UInt64, status: Int, code: String, message: String)
    /// The request moved to another worker before anything was sent (its first worker died): the response
    /// names the new one in X-Switchyard-Worker.
    case rerouted(requestID: UInt64, workerID: Int)
    /// Answer to `tokenize`.
    case tokens(requestID: UInt64, tokens: [Int32])
    /// Answer to `detokenize`.
    case text(requestID: UInt64, content: String)
    /// Log-probabilities of generated tokens (requests that asked for them), before the `.delta` carrying
    /// their text; those of tokens whose text is still held back belong to a later delta or the end.
    case logprobs(requestID: UInt64, steps: [LogprobStep])

    public var requestID: UInt64 {
        switch self {
        case .delta(let id, _), .final(let id, _, _), .error(let id, _), .rejected(let id, _, _, _), .rerouted(let id, _), .tokens(let id, _), .text(let id, _), .logprobs(let id, _): return id
        }
    }
}

public struct BackendHealth: Sendable, Equatable {
    public var workersTotal: Int
    public var workersReady: Int
    public var ready: Bool { workersTotal > 0 && workersReady == workersTotal }
    public init(workersTotal: Int, workersReady: Int) { self.workersTotal = workersTotal; self.workersReady = workersReady }
}

/// The generation backend behind the front.
///
/// Threading contract: every method is called on the front's event-loop thread only. The backend's own
/// threads (or the worker processes behind its rings) make events available and then signal `wakeFD`;
/// the loop polls `wakeFD` in io_uring (multishot POLLIN, so an idle front sleeps in the kernel) and calls
/// `drain`, which must first consume the eventfd counter and then deliver every pending event — in that order,
/// so an event published after the read always produces a new wake-up.
public protocol FrontBackend: AnyObject {
    /// An eventfd (or any pollable fd) that becomes readable when events are pending. Owned by the backend.
    var wakeFD: Int32 { get }
    /// Route and enqueue a generation request. Must not block.
    func submit(_ request: APIRequest) -> Admission
    /// Route and enqueue tokenize/detokenize; answered with `.tokens` / `.text` events.
    func tokenize(requestID: UInt64, content: String, addSpecial: Bool, parseSpecial: Bool) -> Admission
    func detokenize(requestID: UInt64, tokens: [Int32]) -> Admission
    /// The client went away: stop the request; no further events are needed (stragglers are dropped).
    func cancel(requestID: UInt64)
    /// Deliver pending events (see the contract above).
    func drain(_ deliver: (BackendEvent) -> Void)
    /// Model ids for GET /v1/models.
    var modelIDs: [String] { get }
    func health() -> BackendHealth
    /// Called on every GET /metrics before rendering: set per-worker gauges (in-flight, queue depth, ring
    /// occupancy) and counters (worker restarts) on `metrics`.
    func collectMetrics(into metrics: MetricsRegistry)

    // Supervision hooks (defaults: none). They let a backend that supervises worker processes watch their
    // pidfds and heartbeats from the loop's thread, with no thread of its own.

    /// Descriptors the loop should watch (one-shot POLLIN each, e.g. worker pidfds). Re-read after every
    /// drain, fdReadable and tick; fds that disappear from the list are un-watched (a readable fd is un-armed
    /// until it is listed again after fdReadable returns). Remove an fd from the list before closing it.
    func watchedFDs() -> [Int32]
    /// A watched fd became readable (a worker exited).
    func fdReadable(_ fd: Int32)
    /// Seconds between tick() calls (heartbeat checks, respawn backoff); nil for none.
    var tickInterval: Double? { get }
    func tick()
}

extension FrontBackend {
    public func watchedFDs() -> [Int32] { [] }
    public func fdReadable(_ fd: Int32) {}
    public var tickInterval: Double? { nil }
    public func tick() {}
}
