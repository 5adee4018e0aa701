// An in-process backend for tests and benchmarks: a worker thread echoes the prompt back word by word.
// It exercises the whole FrontBackend contract (eventfd wake-ups, drain, cancel, tokenize) without rings or
// worker processes.
import CSwitchyardSys
import Glibc
import Synchronization

public final class EchoBackend: FrontBackend, @unchecked Sendable {
    // @unchecked Sendable: `state` is behind a Mutex; `efd` is written by the worker thread and read by the
    // loop (eventfd reads/writes are thread-safe); the remaining fields are immutable after init.
    public struct Options: Sendable {
        public var workers = 2
        /// Pause between deltas (0 = none).
        public var delayPerWord: Double = 0
        /// Refuse with .overloaded when this many requests are queued or running.
        public var maxInFlight = 1024
        public var ready = true
        /// Fail every generation request after this many deltas (nil = never): tests the SSE error path.
        public var failAfterDeltas: Int? = nil
        public init() {}
    }

    private struct Job {
        var id: UInt64
        var words: [String]
        var next = 0
        var promptTokens: Int
        var maxTokens: Int
        var sentDeltas = 0
        /// Log-probabilities asked for: each word is a certain pick (log-probability 0, its own only alternative).
        var logprobs = false
        enum Kind { case generate, tokenize, detokenize }
        var kind: Kind
        var content: String = ""
        var tokens: [Int32] = []
    }

    private struct State {
        var jobs: [Job] = []
        var events: [BackendEvent] = []
        var cancelled: Set<UInt64> = []
        var stop = false
        var nextWorker = 0
        var ready: Bool
        var submitted = 0
        var cancelCount = 0
        var cancelledIDs: [UInt64] = []
    }

    public let wakeFD: Int32
    private let options: Options
    private let state: Mutex<State>
    private let jobFD: Int32         // eventfd that wakes the echo thread
    private var thread: pthread_t? = nil

    public init(options: Options = Options()) {
        self.options = options
        wakeFD = sy_fr_eventfd(1)
        jobFD = sy_fr_eventfd(0)
        state = Mutex(State(ready: options.ready))
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        pthread_create(&t, nil, { arg in
            guard let arg else { return nil }
            let me = Unmanaged<EchoBackend>.fromOpaque(arg).takeRetainedValue()
            me.loop()
            return nil
        }, box.toOpaque())
        thread = t
    }

    /// Stops the echo thread and closes the eventfds. Call once, after the server's run() returned.
    public func stop() {
        state.withLock { $0.stop = true }
        var one: UInt64 = 1
        _ = write(jobFD, &one, 8)
        if let t = thread { pthread_join(t, nil) }
        thread = nil
        close(jobFD)
        close(wakeFD)
    }

    public func setReady(_ ready: Bool) { state.withLock { $0.ready = ready } }
    /// Ids passed to cancel(), in order (tests).
    public var cancelledRequests: [UInt64] { state.withLock { $0.cancelledIDs } }
    public var submittedCount: Int { state.withLock { $0.submitted } }

    // MARK: FrontBackend

    public var modelIDs: [String] { ["echo"] }

    public func health() -> BackendHealth {
        let r = state.withLock { $0.ready }
        return BackendHealth(workersTotal: options.workers, workersReady: r ? options.workers : 0)
    }

    public func submit(_ request: APIRequest) -> Admission {
        var prompt = request.prompt
        if request.kind == .chatCompletions { prompt = request.messages.last?.content ?? "" }
        // A prompt of token ids (no tokenizer here): its ids, as words.
        if let ids = request.promptTokens { prompt = ids.map(String.init).joined(separator: " ") }
        let words = Self.split(prompt)
        var job = Job(id: request.id, words: words, promptTokens: words.count,
                      maxTokens: request.sampling.maxTokens ?? Int.max, kind: .generate)
        job.logprobs = request.sampling.logprobs != nil
        return enqueue(job)
    }

    public func tokenize(requestID: UInt64, content: String, addSpecial: Bool, parseSpecial: Bool) -> Admission {
        enqueue(Job(id: requestID, words: [], promptTokens: 0, maxTokens: 0, kind: .tokenize, content: content))
    }

    public func detokenize(requestID: UInt64, tokens: [Int32]) -> Admission {
        enqueue(Job(id: requestID, words: [], promptTokens: 0, maxTokens: 0, kind: .detokenize, tokens: tokens))
    }

    public func cancel(requestID: UInt64) {
        state.withLock {
            $0.cancelled.insert(requestID)
            $0.cancelCount += 1
            $0.cancelledIDs.append(requestID)
        }
    }

    public func drain(_ deliver: (BackendEvent) -> Void) {
        // Consume the wake-up first, then take the queue: anything published later signals again.
        var v: UInt64 = 0
        _ = read(wakeFD, &v, 8)
        let events = state.withLock { st -> [BackendEvent] in
            let e = st.events
            st.events.removeAll(keepingCapacity: true)
            return e
        }
        for e in events { deliver(e) }
    }

    public func collectMetrics(into metrics: MetricsRegistry) {
        let (jobs, _) = state.withLock { ($0.jobs.count, $0.cancelCount) }
        for w in 0..<options.workers {
            metrics.set(MetricsRegistry.workerInFlight, help: "Requests running on each worker", labels: [("worker", String(w))],
                        Double(w == 0 ? jobs : 0))
            metrics.set(MetricsRegistry.workerQueueDepth, help: "Requests queued for each worker", labels: [("worker", String(w))], 0)
            metrics.add(MetricsRegistry.workerRestarts, help: "Worker restarts", labels: [("worker", String(w))], 0)
            metrics.set(MetricsRegistry.ringOccupancy, help: "Ring occupancy (fraction)", labels: [("worker", String(w)), ("ring", "request")], 0)
        }
    }

    // MARK: echo thread

    private func enqueue(_ job: Job) -> Admission {
        let result: Admission = state.withLock { st in
            if !st.ready { return .notReady(reason: "echo workers loading") }
            if st.jobs.count >= options.maxInFlight { return .overloaded(retryAfterSeconds: 1) }
            st.jobs.append(job)
            st.submitted += 1
            st.nextWorker = (st.nextWorker + 1) % max(1, options.workers)
            return .admitted(workerID: st.nextWorker)
        }
        if case .admitted = result {
            var one: UInt64 = 1
            _ = write(jobFD, &one, 8)
        }
        return result
    }

    private func loop() {
        while true {
            var v: UInt64 = 0
            _ = read(jobFD, &v, 8)   // blocks until there is work (or stop)
            while true {
                let (stop, more) = step()
                if stop { return }
                var one: UInt64 = 1
                _ = write(wakeFD, &one, 8)
                if !more { break }
                if options.delayPerWord > 0 { usleep(UInt32(options.delayPerWord * 1e6)) }
            }
        }
    }

    /// Advances every job by one word. Returns (stop, jobs remain).
    private func step() -> (Bool, Bool) {
        state.withLock { st in
            if st.stop { return (true, false) }
            var remaining: [Job] = []
            for var j in st.jobs {
                if st.cancelled.remove(j.id) != nil { continue }
                switch j.kind {
                case .tokenize:
                    st.events.append(.tokens(requestID: j.id, tokens: Array(j.content.utf8).map { Int32($0) }))
                    continue
                case .detokenize:
                    let bytes = j.tokens.map { UInt8(truncatingIfNeeded: $0) }
                    st.events.append(.text(requestID: j.id, content: String(decoding: bytes, as: UTF8.self)))
                    continue
                case .generate:
                    break
                }
                if let f = options.failAfterDeltas, j.sentDeltas >= f {
                    st.events.append(.error(requestID: j.id, message: "echo worker failed"))
                    continue
                }
                if j.next < j.words.count && j.next < j.maxTokens {
                    if j.logprobs {
                        let word = LogprobToken(bytes: Array(j.words[j.next].utf8), logprob: 0)
                        st.events.append(.logprobs(requestID: j.id, steps: [LogprobStep(token: word, top: [word])]))
                    }
                    st.events.append(.delta(requestID: j.id, text: j.words[j.next]))
                    j.next += 1
                    j.sentDeltas += 1
                    remaining.append(j)
                } else {
                    let reason: FinishReason = j.next < j.words.count ? .length : .stop
                    st.events.append(.final(requestID: j.id, finishReason: reason,
                                            usage: Usage(promptTokens: j.promptTokens, completionTokens: j.next, cachedTokens: 0)))
                }
            }
            st.jobs = remaining
            return (false, !remaining.isEmpty)
        }
    }

    /// "a b  c" → ["a", " b", "  c"]: concatenating the deltas gives the prompt back exactly.
    static func split(_ s: String) -> [String] {
        var out: [String] = []
        var cur = ""
        var prevWasWord = false
        for ch in s {
            let space = ch == " " || ch == "\n" || ch == "\t"
            if space && prevWasWord && !cur.isEmpty { out.append(cur); cur = "" }
            prevWasWord = !space
            cur.append(ch)
        }
        if !cur.isEmpty { out.append(cur) }
        return out
    }
}
