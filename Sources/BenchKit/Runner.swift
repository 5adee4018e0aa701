// The `switchyard-bench serve` load generator: closed loop (C clients back to back) or open loop (seeded
// Poisson/gamma arrivals), multi-turn sessions, one blocking ClientKit connection per client thread.
import ClientKit
import Foundation

/// How requests are issued.
public enum LoadMode: Sendable {
    /// `concurrency` clients, each sending its next request as soon as the previous one finished.
    case closedLoop(concurrency: Int)
    /// Requests start at seeded arrival times; at most `maxInFlight` at once (a later arrival waits for a free
    /// client — the wait counts in its latency, since the clock starts at the scheduled arrival).
    case openLoop(ArrivalProcess, maxInFlight: Int)
}

public struct ServeBenchConfig: Sendable {
    public var endpoint: Endpoint
    public var workload: SessionWorkload
    public var mode: LoadMode
    public var maxTokens: Int = 64
    public var temperature: Double?
    public var model: String?
    /// Stop after this many measured requests (nil: no limit; one of requests/duration is required).
    public var requests: Int?
    /// Stop issuing after this many seconds.
    public var duration: Double?
    /// Requests sent first and excluded from every figure.
    public var warmup: Int = 0
    public var slo: GoodputSLO?
    public var timeout: Double = 300

    public init(endpoint: Endpoint, workload: SessionWorkload, mode: LoadMode) {
        self.endpoint = endpoint
        self.workload = workload
        self.mode = mode
    }
}

/// What a run produced.
public struct ServeBenchResult: Sendable {
    public var records: [RequestRecord]
    public var summary: BenchSummary
    /// (seconds since the first measured request, TTFT ms) per measured request, for the plot.
    public var ttftOverTime: [(Double, Double)]
}

/// Progress snapshot for the live line.
public struct BenchProgress: Sendable {
    public var elapsedS: Double
    public var done: Int
    public var errors: Int
    public var inFlight: Int
}

/// Runs the bench. Thread-per-client; shared state behind one lock.
public final class ServeBenchRunner: @unchecked Sendable {  // all mutable state is guarded by `cond`
    public let config: ServeBenchConfig
    private let cond = NSCondition()
    private var idle: [SessionState] = []
    /// Index of the next fresh session (after the initial 0 ..< sessions are used up).
    private var nextIndex = 0
    private var issued = 0
    private var finished = 0
    private var errors = 0
    private var inFlight = 0
    private var stop = false
    private var records: [RequestRecord] = []
    private var arrivals: [UInt64] = []  // open loop: scheduled send times not yet taken
    private var startNs: UInt64 = 0

    public init(config: ServeBenchConfig) throws(BenchError) {
        guard config.requests != nil || config.duration != nil else { throw .badOption("--requests/--duration", "one is required") }
        if let r = config.requests, r < 1 { throw .badOption("--requests", "\(r)") }
        if let d = config.duration, !(d > 0) { throw .badOption("--duration", "\(d)") }
        switch config.mode {
        case .closedLoop(let c): if c < 1 || c > 4096 { throw .badOption("--concurrency", "\(c)") }
        case .openLoop(_, let m): if m < 1 || m > 4096 { throw .badOption("--max-in-flight", "\(m)") }
        }
        self.config = config
        nextIndex = config.workload.sessions
        idle = (0..<config.workload.sessions).map { SessionState(index: $0, workload: config.workload) }
    }

    /// Total requests to send including warm-up (nil: until the duration ends).
    private var limit: Int? { config.requests.map { $0 + config.warmup } }

    /// Runs to completion; `progress` is called about twice a second from the calling thread.
    public func run(progress: (BenchProgress) -> Void = { _ in }) -> ServeBenchResult {
        startNs = monotonicNanos()
        let clients: Int
        switch config.mode {
        case .closedLoop(let c): clients = c
        case .openLoop(_, let m): clients = m
        }
        if case .openLoop(let arrivalsProcess, _) = config.mode {
            // Pre-compute the schedule (seeded): arrival i at startNs + sum of gaps.
            var rng = SeededRNG(seed: config.workload.seed ^ 0xA11C_E5ED)
            var t = 0.0
            let n = limit ?? Int.max
            let horizon = config.duration ?? Double.infinity
            var sched: [UInt64] = []
            while sched.count < n && sched.count < 10_000_000 {
                t += arrivalsProcess.nextGap(&rng)
                if t > horizon { break }
                sched.append(startNs + UInt64(t * 1e9))
            }
            arrivals = sched.reversed()  // pop from the end
        }
        var threads: [Thread] = []
        let done = DispatchSemaphore(value: 0)
        for _ in 0..<clients {
            let th = Thread { [self] in
                self.clientLoop()
                done.signal()
            }
            th.stackSize = 1 << 20
            threads.append(th)
            th.start()
        }
        var remaining = clients
        while remaining > 0 {
            if done.wait(timeout: .now() + 0.5) == .success {
                remaining -= 1
                continue
            }
            cond.lock()
            let p = BenchProgress(elapsedS: Double(monotonicNanos() - startNs) / 1e9, done: finished, errors: errors, inFlight: inFlight)
            cond.unlock()
            progress(p)
        }
        let endNs = monotonicNanos()
        cond.lock()
        let all = records.sorted { $0.sentNs < $1.sentNs }
        cond.unlock()
        let measured = Array(all.dropFirst(config.warmup))
        let t0 = measured.first?.sentNs ?? startNs
        let duration = Double(endNs - t0) / 1e9
        let summary = BenchSummary(records: measured, durationS: duration, slo: config.slo, affinityReference: all)
        let overTime = measured.compactMap { r in r.ttftNs.map { (Double(r.sentNs - t0) / 1e9, Double($0) / 1e6) } }
        return ServeBenchResult(records: measured, summary: summary, ttftOverTime: overTime)
    }

    /// Takes the next (session, scheduled send time) or nil when the run is over.
    private func take() -> (SessionState, UInt64?)? {
        cond.lock()
        defer { cond.unlock() }
        while true {
            if stop { return nil }
            if let l = limit, issued >= l { return nil }
            if let d = config.duration, Double(monotonicNanos() - startNs) / 1e9 >= d { return nil }
            var sched: UInt64?
            if case .openLoop = config.mode {
                guard let a = arrivals.last else { return nil }
                sched = a
            }
            if var s = idle.popLast() {
                if s.nextTurn > config.workload.turns {
                    // Session finished all turns: start a fresh one (new id) in its place.
                    s = SessionState(index: nextIndex, workload: config.workload)
                    nextIndex += 1
                }
                if sched != nil { arrivals.removeLast() }
                issued += 1
                inFlight += 1
                return (s, sched)
            }
            // Every session is busy: wait for one to come back.
            if inFlight == 0 { return nil }
            cond.wait()
        }
    }

    private func clientLoop() {
        let client = ChatClient(endpoint: config.endpoint, timeout: config.timeout)
        while let (state, sched) = take() {
            var s = state
            if let at = sched {
                let now = monotonicNanos()
                if at > now { usleep(UInt32(min((at - now) / 1000, 10_000_000))) }
            }
            let turn = s.nextTurn
            let messages = s.nextMessages(config.workload)
            let req = ChatRequest(messages: messages, model: config.model, maxTokens: config.maxTokens,
                                  temperature: config.temperature, seed: nil, sessionID: s.id, stream: true)
            // Open loop: latency is measured from the scheduled arrival (queueing delay included).
            let sent = sched.map { min($0, monotonicNanos()) } ?? monotonicNanos()
            var rec: RequestRecord
            do {
                let r = try client.complete(req)
                let out = r.usage?.completionTokens ?? r.contentChunks
                rec = RequestRecord(session: s.index, turn: turn, sentNs: sent, chunkNs: r.chunkNs, doneNs: r.doneNs,
                                    promptTokens: r.usage?.promptTokens ?? 0, outputTokens: out,
                                    cachedTokens: r.usage?.cachedTokens, worker: r.worker)
                s.finish(answer: r.text)
            } catch {
                rec = RequestRecord(session: s.index, turn: turn, sentNs: sent, chunkNs: [], doneNs: monotonicNanos(),
                                    promptTokens: 0, outputTokens: 0, error: Self.kind(error))
                s.finish(answer: nil)
                client.connection.close()
            }
            cond.lock()
            records.append(rec)
            finished += 1
            if rec.error != nil { errors += 1 }
            inFlight -= 1
            idle.insert(s, at: 0)  // FIFO reuse: spread turns across sessions
            cond.broadcast()
            cond.unlock()
        }
    }

    /// Short error kind for the "errors by kind" table.
    static func kind(_ e: ClientError) -> String {
        switch e {
        case .noServer: return "no_server"
        case .connectionRefused: return "connection_refused"
        case .resolveFailed, .invalidURL, .pathTooLong: return "bad_endpoint"
        case .system: return "socket_error"
        case .timeout: return "timeout"
        case .connectionClosed: return "connection_closed"
        case .malformedResponse: return "malformed_response"
        case .responseTooLarge: return "response_too_large"
        case .serverLoading: return "loading_503"
        case .overloaded: return "overloaded_503"
        case .httpStatus(let c, _): return "http_\(c)"
        case .badJSON: return "bad_json"
        case .streamError: return "stream_error"
        }
    }
}
