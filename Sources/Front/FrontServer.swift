// The front's event loop: one thread, one io_uring.
//
// Operations in flight and their user_data (kind in bits 56…63; for connection ops the slot in bits 0…31 and
// the slot's generation in bits 32…55, so completions for a recycled slot are recognised and dropped):
//   accept    multishot accept per listener (re-armed when F_MORE is missing)
//   recv      multishot recv per connection, buffers from the provided-buffer ring (group 0); with
//             deferConsume, on Unix-socket connections a multishot POLLIN instead, the bytes peeked with
//             recv(MSG_PEEK) and taken out of the socket when the response goes out (see deferConsume)
//   send      at most one per connection; the rest of its output waits in `queued`
//   wake      multishot POLLIN on the backend's eventfd → backend.drain
//   control   multishot POLLIN on our own eventfd (requestShutdown from other threads)
//   signal    multishot POLLIN on a signalfd for SIGTERM/SIGINT
//   timer     one relative timeout, armed while connections exist; it checks every connection's deadline
// A connection is closed only after its recv and send have completed (cancelled by fd first): close() alone
// would not cancel them, and the send buffer must outlive the kernel's use of it.
import CSwitchyardSys
import Glibc
import Wire   // ByteWriter

public struct FrontConfig: Sendable {
    /// Unix socket path; nil for none (TCP or systemd sockets only).
    public var socketPath: String? = "./switchyard.sock"
    public var socketMode: mode_t = 0o660
    /// "HOST:PORT" for an additional TCP listener.
    public var tcp: String? = nil
    /// Use LISTEN_FDS sockets from systemd when present (they replace socketPath/tcp).
    public var useSystemdSockets = true
    public var limits = HTTPLimits()
    /// A request that has started arriving must be complete within this many seconds → 408.
    public var requestTimeout: Double = 30
    /// A connection with no request in progress is closed after this many idle seconds (408 if it never sent
    /// a request).
    public var idleTimeout: Double = 60
    /// SIGTERM/SIGINT/requestShutdown: in-flight requests get this long to finish.
    public var shutdownGrace: Double = 10
    /// Handle SIGTERM/SIGINT through a signalfd (call `FrontServer.blockShutdownSignals()` before starting
    /// other threads). Tests turn this off and use `requestShutdown()`.
    public var handleSignals = true
    public var maxConnections = 8192
    /// Per-connection output waiting behind a slow reader; a client that lets more pile up is dropped (when
    /// more output comes: one answer larger than this is still sent whole).
    public var maxQueuedOutput = 8 << 20
    /// All connections' waiting output together: past it, the client with the most waiting is dropped (many
    /// clients that stop reading would otherwise hold maxQueuedOutput each).
    public var maxTotalQueuedOutput = 256 << 20
    public var ringEntries: UInt32 = 1024
    /// Provided-buffer ring shape: count (power of two) × size bytes.
    public var recvBufferCount: UInt32 = 512
    public var recvBufferSize: UInt32 = 4096
    public var listenBacklog: Int32 = 1024
    /// With a PollableBackend and requests in flight: poll its responses this long before sleeping (0: never
    /// spin). Bounded, and only while requests are in flight, so an idle front uses no CPU.
    public var pollSpinNanoseconds: UInt64 = 30_000
    /// With keep-alive connections open and nothing in flight: watch the completion queue this long for the
    /// next request (no system call: IORING_SQ_TASKRUN shows arriving data) before sleeping in io_uring_enter,
    /// whose wake-up costs ~5 µs on this VM. Off by default: 30 µs moved the front bench's p50 by -5 to +1 µs
    /// over five interleaved runs, inside this 2-vCPU VM's noise. 0: sleep at once. Lingers that catch nothing back off (see
    /// lingerWorthwhile), so an idle server stays at ~0 % CPU.
    public var lingerNanoseconds: UInt64 = 0
    /// While spinning (poll-spin, linger), yield the CPU once every this many polls (a power of two).
    public var spinYieldEvery: UInt32 = 8
    /// Unix-socket connections: a request's bytes are read with MSG_PEEK and taken out of the socket only
    /// when its response starts to go out (or the client sends more), instead of by a multishot recv as they
    /// arrive. Taking bytes out of a Unix socket wakes a writer's task even when it sleeps in read() for the
    /// answer (the kernel's write-space wake-up is not filtered by what the sleeper waits for), and on a
    /// small machine that wake-up preempts whoever shares the client's CPU, often the worker about to answer.
    /// Costs two plain system calls per request (peek, consume). Measured: one client's round trip −5 to −6 µs
    /// p50 when it shares the worker's CPU, unchanged on the front's; requests/s with 64 connections within
    /// the bench's order effect (−9 to +8 %). `serve --recv multishot` turns it off; TCP always uses multishot.
    public var deferConsume = true
    /// Model name reported when a request names none and the backend lists none.
    public var defaultModel = "switchyard"
    public var log: @Sendable (LogLevel, String) -> Void = LogLevel.stderrLogger(prefix: "front", threshold: .info)

    public init() {}

    /// Parses an octal mode such as "0660" or "660" (for --socket-mode).
    public static func parseMode(_ text: String) -> mode_t? {
        guard !text.isEmpty, text.count <= 4, let v = mode_t(text, radix: 8), v <= 0o777 else { return nil }
        return v
    }
}

/// A backend whose events can be picked up without a wake-up (shared-memory rings). While requests are in
/// flight the loop polls it for a short, bounded time before sleeping in io_uring_enter: a response that comes
/// back within the spin then costs no eventfd write on the worker's side and no wake-up on ours (each ~5 µs
/// on a small VM). The loop calls, in this order: `stopAnnouncingSleep()`, `pollEvents` until it returns true
/// or the spin ends, then `prepareToBlock()` right before sleeping (false: poll again instead).
public protocol PollableBackend: FrontBackend {
    /// Whether some request still waits for events (the loop spins only then).
    var hasRequestsInFlight: Bool { get }
    /// Clears the "consumer sleeps" announcements, so producers skip their wake-up while the loop polls.
    func stopAnnouncingSleep()
    /// Delivers the events ready now, without a system call when there are none. True if any was delivered.
    func pollEvents(_ deliver: (BackendEvent) -> Void) -> Bool
    /// Announces sleep on every source (so the next event signals `wakeFD`); false if an event arrived
    /// meanwhile (do not sleep: poll).
    func prepareToBlock() -> Bool
    /// Whether the sources wake the loop through futex words (IORING_OP_FUTEX_WAIT) instead of `wakeFD`.
    var futexWake: Bool { get }
    /// With `futexWake`: announces sleep on every source and hands each one's word and the value to wait
    /// for to `arm`; false if an event arrived meanwhile (do not sleep: poll).
    func prepareToBlock(futex arm: (FutexWait) -> Void) -> Bool
}

extension PollableBackend {
    public var futexWake: Bool { false }
    public func prepareToBlock(futex arm: (FutexWait) -> Void) -> Bool { prepareToBlock() }
}

/// One futex wait the loop keeps armed while it sleeps: `word` (shared memory) is expected to hold `value`.
/// `key` names the source (a worker slot), `generation` its current ring: a wait armed on an earlier
/// generation is cancelled (the ring was replaced and will never be woken).
public struct FutexWait {
    public var key: Int
    public var generation: UInt32
    public var word: UnsafeMutablePointer<UInt32>
    public var value: UInt32
    public init(key: Int, generation: UInt32, word: UnsafeMutablePointer<UInt32>, value: UInt32) {
        self.key = key; self.generation = generation; self.word = word; self.value = value
    }
}

/// Front server. Create it (binds the listeners, so clients may connect right away), then call `run()` on the
/// thread that will own the event loop; it returns after a graceful shutdown.
public final class FrontServer: @unchecked Sendable {
    // @unchecked Sendable: everything below is touched only by the thread running `run()`, except
    // `controlFD` (written by requestShutdown from any thread; an eventfd write is thread-safe) and the
    // immutable `listeners`/`config`.
    public let config: FrontConfig
    public let listeners: [Listener]
    private let backend: FrontBackend
    /// Σ `queued.count` over the connections (bounded by config.maxTotalQueuedOutput).
    private var queuedTotal = 0
    /// Unix time the server started (the `created` of its model objects).
    private let startedAt = Int(time(nil))
    /// `backend` when it supports polling (the loop spins on it while requests are in flight).
    private let pollable: PollableBackend?
    private let controlFD: Int32

    public let metrics: MetricsRegistry
    /// Cached metric handles for the per-request updates (see countRequest). The in-flight gauge is set from
    /// `owners` when /metrics is rendered, not on every request.
    private struct RouteStatus: Hashable { var route: String; var status: Int }
    private var requestCounters: [RouteStatus: MetricsRegistry.Handle] = [:]
    private var lastCounted: (route: String, status: Int, handle: MetricsRegistry.Handle)?
    private var tokensCounter: MetricsRegistry.Handle?
    private var ttftHistogram: MetricsRegistry.Handle?
    private var interTokenHistogram: MetricsRegistry.Handle?

    private var ring: OpaquePointer! = nil
    private var bufRing: OpaquePointer? = nil
    private var conns: [Connection?] = []
    private var freeSlots: [Int] = []
    private var liveConnections = 0
    private var owners = RequestTable<(slot: Int, gen: UInt32)>()
    private var nextRequestID: UInt64 = 1
    private var nextGeneration: UInt32 = 1
    private var signalFD: Int32 = -1
    private var timerArmed = false
    private var timespec = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)
    private var draining = false
    private var drainDeadline: UInt64 = 0
    private var multishotRecv = true
    private var multishotAccept = true
    private var acceptArmed: [Bool] = []
    private var scratch = ByteWriter(capacity: 2048)
    /// deferConsume: where requests are peeked into and consumed bytes are dropped.
    private let peekBuffer = UnsafeMutableRawPointer.allocate(byteCount: FrontServer.peekBufferSize, alignment: 64)
    private static let peekBufferSize = 65536
    /// Where the consuming recv that goes out with an answer (`enqueue`) puts the bytes it takes out of the
    /// socket: they were peeked and parsed before, so nothing ever reads this memory; it only has to be valid.
    private let discardBuffer = UnsafeMutableRawPointer.allocate(byteCount: FrontServer.peekBufferSize, alignment: 64)
    /// Backend fds with an armed one-shot poll → the token in its user_data (stale completions are dropped).
    private var watched: [Int32: UInt32] = [:]
    private var nextWatchToken: UInt32 = 1
    private var lastBackendTick: UInt64 = 0

    private enum Op: UInt64 {
        case accept = 1, recv, send, wake, control, signal, timer, ignore, cancel, watch, futex, consume
    }

    public init(config: FrontConfig, backend: FrontBackend, metrics: MetricsRegistry = MetricsRegistry()) throws {
        self.config = config
        self.backend = backend
        self.pollable = backend as? PollableBackend
        self.metrics = metrics
        var ls: [Listener] = config.useSystemdSockets ? Sockets.systemdListeners() : []
        if ls.isEmpty {
            if let p = config.socketPath {
                ls.append(try Sockets.listenUnix(path: p, mode: config.socketMode, backlog: config.listenBacklog))
            }
            if let t = config.tcp {
                do { ls.append(try Sockets.listenTCP(t, backlog: config.listenBacklog)) } catch {
                    for l in ls { close(l.fd); if let p = l.ownedPath { unlink(p) } }
                    throw error
                }
            }
        }
        listeners = ls
        controlFD = sy_fr_eventfd(1)
        if controlFD < 0 {
            let e = -controlFD
            for l in ls { close(l.fd); if let p = l.ownedPath { unlink(p) } }
            throw FrontError.system("eventfd", e)
        }
    }

    deinit {
        timespec.deallocate()
        peekBuffer.deallocate()
        discardBuffer.deallocate()
        close(controlFD)
        if !listenersClosed { closeListeners() }
    }

    private var listenersClosed = false

    /// Closes the listening sockets and removes the socket files this process created.
    private func closeListeners() {
        listenersClosed = true
        for l in listeners {
            close(l.fd)
            if let p = l.ownedPath { unlink(p) }
        }
    }

    /// Blocks SIGTERM and SIGINT in the calling thread (and threads it starts later), so they reach the loop's
    /// signalfd instead of killing the process. Call at the top of `switchyard serve`.
    public static func blockShutdownSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Starts a graceful shutdown; callable from any thread.
    public func requestShutdown() {
        var one: UInt64 = 1
        _ = write(controlFD, &one, 8)
    }

    // MARK: run

    public func run() throws {
        var setupUsed: UInt32 = 0
        var err: Int32 = 0
        guard let r = sy_uring_create(config.ringEntries, &setupUsed, &err) else {
            throw FrontError.system("io_uring_setup", err)
        }
        ring = r
        defer {
            if let b = bufRing { sy_buf_ring_destroy(r, b) }
            bufRing = nil
            sy_uring_destroy(r)
            ring = nil
        }
        guard let br = sy_buf_ring_create(r, config.recvBufferCount, config.recvBufferSize, 0, &err) else {
            throw FrontError.system("IORING_REGISTER_PBUF_RING", err)
        }
        bufRing = br
        logProbe(setupUsed)
        // SWITCHYARD_TRACE=DIR: request-path timestamps (sy_trace.h), written to DIR/front.trace at shutdown;
        // the workers inherit the variable and write DIR/worker-N.trace.
        let traceDir = getenv("SWITCHYARD_TRACE").map { String(cString: $0) }
        if let traceDir {
            if sy_trace_enable() == 0 { config.log(.info, "tracing request timestamps into \(traceDir)") }
            else { config.log(.warn, "SWITCHYARD_TRACE: no memory for the trace table; tracing off") }
        }
        defer {
            if let traceDir, sy_trace_enabled() != 0 {
                let rc = sy_trace_dump(traceDir + "/front.trace", nextRequestID - 1)
                if rc != 0 { config.log(.warn, "SWITCHYARD_TRACE: cannot write \(traceDir)/front.trace: \(String(cString: strerror(-rc)))") }
            }
        }

        if config.handleSignals {
            FrontServer.blockShutdownSignals()
            signalFD = sy_fr_signalfd_shutdown()
            if signalFD >= 0 { armPoll(signalFD, .signal) }
        }
        defer { if signalFD >= 0 { close(signalFD); signalFD = -1 } }
        armPoll(controlFD, .control)
        armPoll(backend.wakeFD, .wake)
        syncWatched()
        acceptArmed = Array(repeating: false, count: listeners.count)
        for i in listeners.indices { armAccept(i) }
        for l in listeners {
            config.log(.info, l.family == .unix ? "listening on unix:\(l.ownedPath ?? "fd \(l.fd)")" : "listening on tcp port \(l.port.map(String.init) ?? "?")")
        }

        loopNow = now()
        let batch = 256
        let cqes = UnsafeMutablePointer<OpaquePointer?>.allocate(capacity: batch)
        defer { cqes.deallocate() }
        while !(draining && liveConnections == 0) {
            if liveConnections > 0 || draining || backend.tickInterval != nil { armTimer() }
            var waitFor: UInt32 = 1
            if let p = pollable {
                let busy = p.hasRequestsInFlight && spinWorthwhile() && pollSpin(p, r)
                if busy && (p.hasRequestsInFlight || sy_uring_events_pending(r) != 0) {
                    waitFor = 0   // more to do at once: submit the sends, take the completions, spin again
                } else if !(p.futexWake ? prepareFutexBlock(p) : p.prepareToBlock()) {
                    // A response landed after the last poll: take it instead of sleeping.
                    _ = p.pollEvents(deliverEvent)
                    waitFor = 0
                }
                // Otherwise the sends queued by the spin go out in the same system call that sleeps.
            }
            if waitFor == 1 && liveConnections > 0 && !draining && lingerWorthwhile() && linger(r) {
                waitFor = 0
                if let p = pollable { p.stopAnnouncingSleep() }
            }
            // waitFor 0: submits what is queued (no system call when nothing is, unless completions wait in
            // the kernel) and goes on to the completions.
            let rc = sy_uring_submit_and_wait(r, waitFor)
            loopNow = now()
            if rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY {
                throw FrontError.system("io_uring_enter", -rc)
            }
            while true {
                let n = Int(sy_uring_peek_batch(r, cqes, UInt32(batch)))
                if n == 0 { break }
                for k in 0..<n {
                    guard let c = cqes[k] else { continue }
                    handle(userData: sy_cqe_user_data(c), res: sy_cqe_res(c), flags: sy_cqe_flags(c))
                }
                sy_uring_cq_advance(r, UInt32(n))
            }
        }
        // Listeners are closed by beginShutdown; every connection is gone.
        config.log(.info, "shut down")
    }

    /// Non-streaming response bodies are built here (reused: no buffer allocated per response).
    private var bodyWriter = JSONWriter(capacity: 1024)

    private lazy var deliverEvent: (BackendEvent) -> Void = { [unowned self] e in self.onEvent(e) }

    /// Fruitless spins of one kind in a row, and the probe that lets every 16th wait spin after 8 fruitless
    /// ones: a backend that answers slowly (a real model: a token every few ms), or keep-alive connections
    /// that stay quiet, would make every spin a waste; the probe notices when answers are quick again.
    private struct SpinBudget {
        var fruitless = 0
        var probe = 0
        mutating func worthwhile() -> Bool {
            if fruitless < 8 { return true }
            probe &+= 1
            return probe & 15 == 0
        }
    }
    private var pollBudget = SpinBudget()
    private var lingerBudget = SpinBudget()

    /// Futex waits in flight (PollableBackend.futexWake): source key → ring generation (the 24 bits kept in
    /// the user data). At most one per source: a wake since it was armed completes it, and its completion
    /// clears the entry, so the next prepareFutexBlock arms a fresh one with the word's new value.
    private var armedFutex: [Int: UInt32] = [:]
    private var futexSeen: [Int] = []
    private var futexFailed = false
    private lazy var armFutexWait: (FutexWait) -> Void = { [unowned self] w in self.armFutex(w) }

    /// Announces sleep on every source and keeps one IORING_OP_FUTEX_WAIT armed on each (submitted by the
    /// io_uring_enter that sleeps); waits on sources that are gone are cancelled. False: an event arrived.
    private func prepareFutexBlock(_ p: PollableBackend) -> Bool {
        futexSeen.removeAll(keepingCapacity: true)
        let quiet = p.prepareToBlock(futex: armFutexWait)
        if quiet && armedFutex.count > futexSeen.count {
            for (key, gen) in armedFutex where !futexSeen.contains(key) { cancelFutex(key: key, gen: gen) }
        }
        return quiet
    }

    private func armFutex(_ w: FutexWait) {
        futexSeen.append(w.key)
        guard !futexFailed else { return }
        let gen = w.generation & 0xFF_FFFF
        if let armed = armedFutex[w.key] {
            if armed == gen { return }
            cancelFutex(key: w.key, gen: armed)   // armed on a ring that has since been replaced
        }
        let s = getSQE()
        sy_prep_futex_wait(s, w.word, w.value)
        sy_sqe_set_data64(s, Self.data(.futex, slot: w.key, gen: gen))
        armedFutex[w.key] = gen
    }

    private func cancelFutex(key: Int, gen: UInt32) {
        armedFutex[key] = nil
        let s = getSQE()
        sy_prep_cancel_data(s, Self.data(.futex, slot: key, gen: gen), 0)
        sy_sqe_set_data64(s, Self.data(.ignore))
    }

    private func spinWorthwhile() -> Bool { config.pollSpinNanoseconds > 0 && pollBudget.worthwhile() }
    private func lingerWorthwhile() -> Bool { config.lingerNanoseconds > 0 && lingerBudget.worthwhile() }

    private enum SpinOutcome { case backend, completions, timeout }

    /// Submits what is queued (the sends must leave before we spin; no system call when nothing is), then
    /// polls `backend` (if any) and the completion queue until one has something or `nanoseconds` pass.
    private func spin(_ r: OpaquePointer, nanoseconds: UInt64, backend: PollableBackend?,
                      speculate: Bool = false) -> SpinOutcome {
        _ = sy_uring_submit(r)
        let deadline = now() &+ nanoseconds
        var spins: UInt32 = 0
        let yieldMask = max(1, config.spinYieldEvery) &- 1
        let deliver = deliverEvent   // read once, not per check
        while true {
            if let p = backend, p.pollEvents(deliver) { return .backend }
            let pending = sy_uring_events_pending(r)
            if pending != 0 {
                // Only task work is waiting (no completion posted yet): most likely the readiness of the
                // connection answered last, whose client sends its next request. Peek it first: its request
                // is on its way to a worker one io_uring_enter sooner (the poll's completion, when the loop
                // takes it, finds nothing new: see onReadable).
                if speculate && pending == 2 { takeHotConnection() }
                return .completions
            }
            sy_cpu_relax()
            spins &+= 1
            // Another thread may be waiting for this CPU (the worker we wait for, a client): let it run.
            // With 2 cores shared by client, front and worker, they often share one; then a spin that
            // does not yield holds off the very worker it waits for. With nothing else runnable,
            // sched_yield returns at once. Every 8 polls (about 0.5 µs) measured best on 2 cores.
            if spins & yieldMask == 0 { sched_yield() }
            if spins & 31 == 0 && now() >= deadline { return .timeout }
        }
    }

    /// Polls the response rings and the completion queue for up to `pollSpinNanoseconds` while requests are
    /// in flight. True if it delivered events or completions are waiting.
    private func pollSpin(_ p: PollableBackend, _ r: OpaquePointer) -> Bool {
        p.stopAnnouncingSleep()
        switch spin(r, nanoseconds: config.pollSpinNanoseconds, backend: p) {
        case .backend: pollBudget.fruitless = 0; return true
        case .completions: return true
        case .timeout: pollBudget.fruitless += 1; return false
        }
    }

    /// deferConsume: the connection whose answer went out last (slot, generation), while it waits for its
    /// client's next request; linger peeks it as soon as task work shows up (`spin(speculate:)`).
    private var hotConnection: (slot: Int, gen: UInt32)? = nil
    /// Requests taken by takeHotConnection (read by tests after the loop has stopped).
    private(set) var hotTakes = 0
    /// Requests whose bytes left the socket through a recv submitted with their answer's send (`enqueue`).
    private(set) var consumesWithAnswers = 0

    /// Peeks the hot connection (one system call, no io_uring_enter): if its client has sent, the bytes are
    /// taken as `onReadable` takes them (held back in the socket, `unconsumed`), and its request is served.
    private func takeHotConnection() {
        guard let h = hotConnection else { return }
        hotConnection = nil
        guard let c = connection(h.slot, h.gen), c.deferConsume, c.recvArmed, c.active == nil, c.unconsumed == 0,
              c.consumeInFlight == 0,
              c.input.isEmpty, !c.closing, !c.closeAfterFlush, !c.lingering, !c.peerClosed else { return }
        let n = recv(c.fd, peekBuffer, Self.peekBufferSize, Int32(MSG_DONTWAIT | MSG_PEEK))
        // Nothing (the task work was someone else's), the peer's close, or an error: the poll reports it.
        guard n > 0 else { return }
        c.unconsumed = n
        hotTakes += 1
        _ = takeInput(c, UnsafeRawBufferPointer(start: peekBuffer, count: n))
    }

    /// Watches for the next request (and late backend events) for up to `lingerNanoseconds` when nothing is
    /// in flight. True if something arrived.
    private func linger(_ r: OpaquePointer) -> Bool {
        if spin(r, nanoseconds: config.lingerNanoseconds, backend: pollable, speculate: true) == .timeout {
            lingerBudget.fruitless += 1
            return false
        }
        lingerBudget.fruitless = 0
        return true
    }

    /// Whether IORING_OP_FUTEX_WAIT works on this kernel (a real wait on a throwaway ring, see
    /// sy_uring_futex_wait_works), and why not when it does not. `serve --ring-wake auto` picks futex
    /// wake-ups for the response rings where it does.
    public static func futexWaitWorks() -> (works: Bool, reason: String) {
        var detail: Int32 = 0
        if sy_uring_futex_wait_works(&detail) != 0 { return (true, "") }
        return (false, detail == EOPNOTSUPP ? "the kernel lacks IORING_OP_FUTEX_WAIT (Linux 6.7+)"
                                           : "IORING_OP_FUTEX_WAIT failed: \(String(cString: strerror(detail)))")
    }

    private func logProbe(_ setupUsed: UInt32) {
        guard let r = ring else { return }
        var ops = [UInt8](repeating: 0, count: 256)
        let n = sy_uring_probe(r, &ops, 256)
        let futex = n > Int32(SY_IORING_OP_FUTEX_WAIT) && ops[Int(SY_IORING_OP_FUTEX_WAIT)] != 0
        var flags: [String] = []
        if setupUsed & UInt32(SY_SETUP_SINGLE_ISSUER) != 0 { flags.append("SINGLE_ISSUER") }
        if setupUsed & UInt32(SY_SETUP_DEFER_TASKRUN) != 0 { flags.append("DEFER_TASKRUN") }
        if setupUsed & UInt32(SY_SETUP_COOP_TASKRUN) != 0 { flags.append("COOP_TASKRUN") }
        if setupUsed & UInt32(SY_SETUP_TASKRUN_FLAG) != 0 { flags.append("TASKRUN_FLAG") }
        config.log(.info, "io_uring: setup flags [\(flags.joined(separator: ","))], \(n) opcodes probed; "
            + "IORING_OP_FUTEX_WAIT \(futex ? "available" : "unavailable")"
            + (pollable?.futexWake == true
               ? "; response rings wake the loop via IORING_OP_FUTEX_WAIT (one wait per ring)"
               : "; backend wake-ups via eventfd poll (multishot)") + "; recv: multishot with provided buffers "
            + "(\(config.recvBufferCount)×\(config.recvBufferSize) B), falls back to one-shot on -EINVAL"
            + (config.deferConsume ? " (TCP); Unix sockets: multishot POLLIN + MSG_PEEK, a request consumed when its answer goes out" : "")
            + (pollable != nil && config.pollSpinNanoseconds > 0
               ? "; polls the response rings up to \(config.pollSpinNanoseconds / 1000) µs while requests are in flight" : ""))
    }

    // MARK: submission helpers

    /// A free SQE. Only called from run()'s thread while the ring exists.
    private func getSQE() -> OpaquePointer {
        let r: OpaquePointer = ring   // set for the whole of run(); no submission happens outside it
        while true {
            if let s = sy_uring_get_sqe(r) { return s }
            _ = sy_uring_submit(r)   // SQ full: flush it and retry
        }
    }

    private static func data(_ op: Op, slot: Int = 0, gen: UInt32 = 0) -> UInt64 {
        (op.rawValue << 56) | (UInt64(gen & 0xFF_FFFF) << 32) | UInt64(UInt32(truncatingIfNeeded: slot))
    }

    private func armPoll(_ fd: Int32, _ op: Op) {
        let s = getSQE()
        sy_prep_poll_multishot(s, fd, UInt32(POLLIN))
        sy_sqe_set_data64(s, Self.data(op))
    }

    /// Arms a one-shot poll for every fd the backend lists and is not yet watched; cancels polls of fds it
    /// no longer lists.
    private func syncWatched() {
        let want = backend.watchedFDs()
        for fd in want where fd >= 0 && watched[fd] == nil {
            nextWatchToken = (nextWatchToken &+ 1) & 0xFF_FFFF
            if nextWatchToken == 0 { nextWatchToken = 1 }
            watched[fd] = nextWatchToken
            let s = getSQE()
            sy_prep_poll_add(s, fd, UInt32(POLLIN))
            sy_sqe_set_data64(s, Self.data(.watch, slot: Int(fd), gen: nextWatchToken))
        }
        if watched.count > 0 {
            let keep = Set(want)
            for (fd, token) in watched where !keep.contains(fd) {
                let s = getSQE()
                sy_prep_cancel_data(s, Self.data(.watch, slot: Int(fd), gen: token), 0)
                sy_sqe_set_data64(s, Self.data(.ignore))
                watched[fd] = nil
            }
        }
    }

    private func armAccept(_ i: Int) {
        guard !draining, !acceptArmed[i] else { return }
        let s = getSQE()
        if multishotAccept { sy_prep_multishot_accept(s, listeners[i].fd, Int32(SOCK_CLOEXEC.rawValue)) }
        else { sy_prep_accept(s, listeners[i].fd, Int32(SOCK_CLOEXEC.rawValue)) }
        sy_sqe_set_data64(s, Self.data(.accept, slot: i))
        acceptArmed[i] = true
    }

    private func armRecv(_ c: Connection) {
        guard !c.recvArmed, !c.closing else { return }
        let s = getSQE()
        if c.deferConsume { sy_prep_poll_multishot(s, c.fd, UInt32(POLLIN) | 0x2000 /* POLLRDHUP */) }
        else if multishotRecv { sy_prep_recv_multishot(s, c.fd, 0) } else { sy_prep_recv_select(s, c.fd, 0) }
        sy_sqe_set_data64(s, Self.data(.recv, slot: c.slot, gen: c.gen))
        c.recvArmed = true
    }

    private func armTimer() {
        guard !timerArmed else { return }
        var period = max(0.005, min(1.0, min(config.requestTimeout, config.idleTimeout) / 4))
        if let t = backend.tickInterval { period = min(period, max(0.005, t)) }
        timespec.pointee.tv_sec = Int64(period)
        timespec.pointee.tv_nsec = Int64((period - Double(Int64(period))) * 1e9)
        let s = getSQE()
        sy_prep_timeout(s, timespec, 0)
        sy_sqe_set_data64(s, Self.data(.timer))
        timerArmed = true
    }

    // MARK: completions

    private func handle(userData: UInt64, res: Int32, flags: UInt32) {
        guard let op = Op(rawValue: userData >> 56) else { return }
        let slot = Int(UInt32(truncatingIfNeeded: userData))
        let gen = UInt32((userData >> 32) & 0xFF_FFFF)
        switch op {
        case .accept: onAccept(listener: slot, res: res, more: sy_cqe_has_more(flags) != 0)
        case .recv:
            if let c = connection(slot, gen), c.deferConsume { onReadable(c, res: res, flags: flags) }
            else { onRecv(slot: slot, gen: gen, res: res, flags: flags) }
        case .send: onSend(slot: slot, gen: gen, res: res)
        case .consume: if let c = connection(slot, gen) { onConsumed(c, res: res) }
        case .wake:
            if res < 0 {
                // A bad wake fd would fail every re-arm at once: report it instead of spinning.
                config.log(.warn, "backend wake fd poll failed: \(String(cString: strerror(-res))); backend events stop")
                return
            }
            backend.drain(deliverEvent)
            if sy_cqe_has_more(flags) == 0 { armPoll(backend.wakeFD, .wake) }
            syncWatched()
        case .control:
            if res < 0 { config.log(.warn, "control eventfd poll failed: \(String(cString: strerror(-res)))"); return }
            var v: UInt64 = 0
            _ = read(controlFD, &v, 8)
            if sy_cqe_has_more(flags) == 0 { armPoll(controlFD, .control) }
            beginShutdown(reason: "shutdown requested")
        case .signal:
            if res < 0 { config.log(.warn, "signalfd poll failed: \(String(cString: strerror(-res)))"); return }
            let signo = sy_fr_signalfd_read(signalFD)
            if sy_cqe_has_more(flags) == 0 && !draining { armPoll(signalFD, .signal) }
            if signo != 0 { beginShutdown(reason: signo == SIGINT ? "SIGINT" : "SIGTERM") }
        case .timer:
            timerArmed = false
            onTick()
            if let interval = backend.tickInterval {
                let t = now()
                if t - lastBackendTick >= nanos(interval) {
                    lastBackendTick = t
                    backend.tick()
                    syncWatched()
                }
            }
        case .watch:
            let fd = Int32(truncatingIfNeeded: slot)
            guard watched[fd] == gen, res != -ECANCELED else { return }
            watched[fd] = nil
            if res < 0 { config.log(.warn, "watched fd \(fd): poll failed: \(String(cString: strerror(-res)))") }
            backend.fdReadable(fd)
            syncWatched()
        case .futex:
            // A response ring's futex word was bumped (FUTEX_WAKE), or it had moved before the wait was armed
            // (-EAGAIN): take what its worker sent. The loop arms the wait again before it next sleeps.
            if armedFutex[slot] == gen { armedFutex[slot] = nil }
            if res == -ECANCELED { return }
            if res < 0 && res != -EAGAIN && res != -EINTR && !futexFailed {
                // Cannot happen where the start-up probe passed; do not re-arm a failing wait in a loop.
                futexFailed = true
                config.log(.warn, "IORING_OP_FUTEX_WAIT failed: \(String(cString: strerror(-res))); response rings "
                           + "are now read on the spin and the backend's supervision tick only")
            }
            if let p = pollable { _ = p.pollEvents(deliverEvent) }
        case .ignore:
            break
        case .cancel:
            // IORING_ASYNC_CANCEL_FD needs Linux 5.19; older kernels refuse it: cancel by user_data instead.
            if res == -EINVAL, let c = connection(slot, gen), c.closing {
                for op in [Op.recv, Op.send] {
                    let s = getSQE()
                    sy_prep_cancel_data(s, Self.data(op, slot: c.slot, gen: c.gen), 1)
                    sy_sqe_set_data64(s, Self.data(.ignore))
                }
            }
        }
    }

    private func onAccept(listener i: Int, res: Int32, more: Bool) {
        guard i < listeners.count else { return }
        if !more { acceptArmed[i] = false }
        if res == -EINVAL && multishotAccept && !more {
            multishotAccept = false
            config.log(.warn, "io_uring: multishot accept refused (-EINVAL); using one-shot accept")
        }
        if res >= 0 {
            let fd = res
            if draining || liveConnections >= config.maxConnections {
                close(fd)
            } else {
                if listeners[i].family == .tcp {
                    // Streamed deltas are small writes: send them now, not after Nagle's delay.
                    var one: Int32 = 1
                    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                }
                openConnection(fd: fd, listener: listeners[i])
            }
        } else if res != -ECANCELED && res != -EINVAL {
            // EMFILE/ENFILE and friends: keep serving existing clients; accept is re-armed below.
            if res == -EMFILE || res == -ENFILE { config.log(.warn, "accept: out of descriptors") }
        }
        if !draining { armAccept(i) }
    }

    private func openConnection(fd: Int32, listener: Listener) {
        let slot: Int
        if let s = freeSlots.popLast() { slot = s } else { slot = conns.count; conns.append(nil) }
        nextGeneration = (nextGeneration &+ 1) & 0xFF_FFFF   // 24 bits: what fits in user_data
        if nextGeneration == 0 { nextGeneration = 1 }
        let c = Connection(fd: fd, slot: slot, gen: nextGeneration, limits: config.limits,
                           peer: Sockets.peerIdentity(fd, family: listener.family))
        c.unixSocket = listener.family == .unix
        c.deferConsume = config.deferConsume && c.unixSocket
        c.deadline = now() + nanos(config.idleTimeout)
        c.deadlineKind = .idleFirst
        conns[slot] = c
        liveConnections += 1
        metrics.set(MetricsRegistry.openConnections, help: "Open client connections", Double(liveConnections))
        armRecv(c)
    }

    private func connection(_ slot: Int, _ gen: UInt32) -> Connection? {
        guard slot < conns.count, let c = conns[slot], c.gen == gen else { return nil }
        return c
    }

    private func onRecv(slot: Int, gen: UInt32, res: Int32, flags: UInt32) {
        // The buffer goes back to the ring whatever happens to the connection.
        var bytes: UnsafeRawBufferPointer? = nil
        var bid: UInt16 = 0
        let hasBuffer = sy_cqe_has_buffer(flags) != 0
        if hasBuffer, let br = bufRing {
            bid = sy_cqe_buffer_id(flags)
            if res > 0, let p = sy_buf_ring_buffer(br, bid) { bytes = UnsafeRawBufferPointer(start: p, count: Int(res)) }
        }
        defer { if hasBuffer, let br = bufRing { sy_buf_ring_recycle(br, bid) } }
        let more = sy_cqe_has_more(flags) != 0
        guard let c = connection(slot, gen) else { return }
        if !more { c.recvArmed = false }
        if c.closing {
            finishCloseIfIdle(c)
            return
        }
        if res == -EINVAL && multishotRecv && !more {
            multishotRecv = false
            config.log(.warn, "io_uring: multishot recv refused (-EINVAL); using one-shot recv with buffer select")
            armRecv(c)
            return
        }
        if res == -ENOBUFS {
            armRecv(c)   // every buffer was in use; this batch returns them, so re-arm right away
            return
        }
        if res == 0 {
            peerEOF(c)   // the peer closed its end: gone, or only done sending
            return
        }
        if res < 0 {
            clientGone(c)   // reset or error
            return
        }
        if let bytes {
            if c.lingering || c.closeAfterFlush {
                // Our final response is queued or sent: what the client still sends is drained and dropped
                // (so close() sends no RST that could destroy the response in flight).
            } else {
                if !takeInput(c, bytes) { return }
            }
        }
        if !c.recvArmed && !c.closing { armRecv(c) }
    }

    /// Appends bytes the client sent to its input and serves what they complete. False if the client was
    /// dropped for pipelining too far ahead of its responses.
    private func takeInput(_ c: Connection, _ bytes: UnsafeRawBufferPointer) -> Bool {
        sy_trace_mark(nextRequestID, SY_TP_FRONT_RECV)   // tracing: one client sending in sequence
        c.input.append(contentsOf: bytes)
        if c.active != nil && c.input.count > config.limits.maxHeaderBytes + config.limits.maxBodyBytes + 65536 {
            clientGone(c)   // pipelining far ahead of its responses: refuse to buffer more
            return false
        }
        processInput(c)
        return true
    }

    /// deferConsume: the connection is readable (a multishot poll). Bytes already handed to the parser stay
    /// in the socket until a response goes out (`enqueue`) or the client sends again; new bytes are peeked.
    private func onReadable(_ c: Connection, res: Int32, flags: UInt32) {
        if sy_cqe_has_more(flags) == 0 { c.recvArmed = false }
        if c.closing {
            finishCloseIfIdle(c)
            return
        }
        if res < 0 && res != -ECANCELED {
            clientGone(c)
            return
        }
        if c.peerClosed {
            // Only the answers are left to send; the poll stays armed to notice the client leaving altogether.
            if peerHungUp(c.fd) { clientGone(c) }
            return
        }
        if c.lingering || c.closeAfterFlush {
            // Our final response is queued or sent: drain and drop what the client still sends (so close()
            // resets nothing), until it closes.
            while !c.closing {
                let n = recv(c.fd, peekBuffer, Self.peekBufferSize, Int32(MSG_DONTWAIT))
                if n > 0 { continue }
                if n == 0 { peerEOF(c) } else if errno != EAGAIN && errno != EINTR { clientGone(c) }
                break
            }
        } else if c.consumeInFlight > 0 {
            // The consume that went out with the last answer has not completed here yet (it ran in the kernel
            // before that io_uring_enter returned, but its completion comes later in this batch): peek once it
            // has, so the socket's head and `unconsumed` agree.
            holdReadiness(c, res)
            return
        } else {
            // Several wake-ups may come as one completion: data and the peer's close together.
            let hangUp = res > 0 && Int32(res) & (Int32(POLLHUP) | 0x2000 /* POLLRDHUP */) != 0
            // A request taken ahead by takeHotConnection is still being answered: this readiness may be the
            // one its bytes raised. Nothing beyond them: nothing new to read, and they stay in the socket.
            if c.active != nil && c.unconsumed > 0 && !hangUp {
                let n = recv(c.fd, peekBuffer, Self.peekBufferSize, Int32(MSG_DONTWAIT | MSG_PEEK))
                // (A full buffer may hide more behind it: the usual path below takes that.)
                if n == c.unconsumed && n < Self.peekBufferSize {
                    if !c.recvArmed && !c.closing { armRecv(c) }
                    return
                }
            }
            // The client is sending again, so it is not waiting in read(): take out what was held back.
            if c.unconsumed > 0 && !consumeHeldBack(c) { return }
            while !c.closing && !c.closeAfterFlush && !c.lingering {
                let n = recv(c.fd, peekBuffer, Self.peekBufferSize, Int32(MSG_DONTWAIT | MSG_PEEK))
                if n < 0 {
                    if errno == EINTR { continue }
                    if errno != EAGAIN { clientGone(c) }
                    break
                }
                if n == 0 {
                    peerEOF(c)   // the peer closed its end: gone, or only done sending
                    return
                }
                c.unconsumed = n   // before the input is served: an answer sent meanwhile takes these bytes out
                if !takeInput(c, UnsafeRawBufferPointer(start: peekBuffer, count: n)) { return }
                // A full buffer may leave more in the socket, and a hang-up that came with the data is not
                // announced again: take these bytes out and look again (a hang-up then reads 0).
                if n < Self.peekBufferSize && !hangUp { break }
                // An answer given on the spot (an error, /health) sent a consume of these bytes with it: look
                // again only once its completion shows it ran (onConsumed), never on a guess about the socket.
                if c.consumeInFlight > 0 { holdReadiness(c, res); break }
                if !consumeHeldBack(c) { return }
            }
            // No request of this client is waiting for the backend (a partial request, or all answered):
            // nobody is blocked on an answer, so the bytes can go now.
            if c.active == nil && c.unconsumed > 0 && !c.closing { _ = consumeHeldBack(c) }
        }
        if !c.recvArmed && !c.closing { armRecv(c) }
    }

    /// Takes the held-back (already parsed) bytes out of the socket. False if the connection failed (closed).
    private func consumeHeldBack(_ c: Connection) -> Bool {
        while c.unconsumed > 0 {
            let n = recv(c.fd, peekBuffer, min(c.unconsumed, Self.peekBufferSize), Int32(MSG_DONTWAIT))
            if n > 0 { c.unconsumed -= n; continue }
            if n < 0 && errno == EINTR { continue }
            // The bytes were peeked, so they are there: anything else means the socket broke.
            c.unconsumed = 0
            clientGone(c)
            return false
        }
        return true
    }

    private func onSend(slot: Int, gen: UInt32, res: Int32) {
        guard let c = connection(slot, gen) else { return }
        c.sendInFlight = false
        if c.closing { finishCloseIfIdle(c); return }
        if res < 0 {
            clientGone(c)   // EPIPE/ECONNRESET: MSG_NOSIGNAL turned SIGPIPE into this
            return
        }
        c.sendOffset += Int(res)
        flush(c)
    }

    // MARK: output

    private func enqueue(_ c: Connection, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { enqueue(c, $0) }
    }

    private func enqueue(_ c: Connection, _ bytes: UnsafeRawBufferPointer) {
        guard !c.closing else { return }
        // deferConsume: the request's bytes leave the socket with its answer (submitted here, not at the loop's
        // next io_uring_enter), so a client blocked in read() is woken once, by the answer.
        enqueueNow(c, bytes)
        if c.unconsumed > 0 && !c.closing {
            if c.consumeInFlight == 0 && c.unconsumed <= Self.peekBufferSize {
                // The consuming recv goes into the same io_uring_enter as the send, right behind it: the kernel
                // runs both before it returns to us, and only then does the woken client get our CPU (on the
                // usual kernels, which do not preempt inside a system call for a fair-class wake-up; with
                // preempt=full the client may run in between, which costs speed only). A consume after the
                // submit, a system call of its own, came too late whenever the client shares this CPU: woken
                // by the send, it ran at once, read its answer, sent its next request and blocked in read()
                // again, and the consume's write-space wake-up then woke it for nothing (two context switches
                // before the next request was read). MSG_DONTWAIT: the bytes are there (peeked), so it
                // completes inline and never waits.
                let s = getSQE()
                sy_prep_recv(s, c.fd, discardBuffer, c.unconsumed, Int32(MSG_DONTWAIT))
                sy_sqe_set_data64(s, Self.data(.consume, slot: c.slot, gen: c.gen))
                c.consumeInFlight = c.unconsumed
                c.unconsumed = 0
                consumesWithAnswers += 1
                _ = sy_uring_submit(ring)
            } else {
                _ = sy_uring_submit(ring)
                _ = consumeHeldBack(c)
            }
        }
    }

    /// Keeps a readiness (its poll mask) for onConsumed to serve once the consume in flight has completed.
    private func holdReadiness(_ c: Connection, _ res: Int32) {
        c.deferredReadiness = res > 0 ? res : Int32(POLLIN)
    }

    /// The consuming recv that went out with an answer (`enqueue`) completed. It took the held-back bytes at
    /// once (they were peeked, so they were there); anything else means the socket broke.
    private func onConsumed(_ c: Connection, res: Int32) {
        let expected = c.consumeInFlight
        c.consumeInFlight = 0
        if c.closing { finishCloseIfIdle(c); return }
        if Int(res) != expected {
            config.log(.debug, "a client's consumed request bytes came back as \(res) (expected \(expected)): closing it")
            clientGone(c)
            return
        }
        // A readiness that came while the consume was out: the socket's head is known again, serve it now.
        let readiness = c.deferredReadiness
        if readiness != 0 {
            c.deferredReadiness = 0
            onReadable(c, res: readiness, flags: c.recvArmed ? 0x2 /* IORING_CQE_F_MORE */ : 0)
        }
    }

    private func enqueueNow(_ c: Connection, _ bytes: UnsafeRawBufferPointer) {
        if !c.sendInFlight && c.queued.isEmpty && c.sendOffset >= c.sendLength && !bytes.isEmpty
            && bytes.count <= c.sendCapacity {
            // An idle connection (the usual case: one response at a time): straight into the send buffer.
            c.sendBuf.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            c.sendOffset = 0
            c.sendLength = bytes.count
            flush(c)
            return
        }
        // The per-connection limit counts what was already waiting: a client is dropped for not reading
        // what it was sent, never for the size of one answer (a non-streamed answer is queued whole, and
        // with log-probabilities a long one may exceed the limit by itself; the total limit still applies).
        let waiting = c.queued.count
        c.queued.append(contentsOf: bytes)
        queuedTotal += bytes.count
        if waiting > config.maxQueuedOutput {
            config.log(.warn, "dropping a client that does not read its responses")
            clientGone(c)
            return
        }
        if queuedTotal > config.maxTotalQueuedOutput { shedLargestQueue() }
        if !c.closing { flush(c) }
    }

    /// The total of waiting output is over its limit: drop the connection holding the most (a scan of the
    /// connections, only when the limit is crossed).
    private func shedLargestQueue() {
        var worst: Connection? = nil
        for case let x? in conns where !x.closing && x.queued.count > (worst?.queued.count ?? 0) { worst = x }
        guard let worst else { return }
        config.log(.warn, "dropping the client with the most unread output (\(worst.queued.count) bytes): all clients' unread output is over \(config.maxTotalQueuedOutput) bytes")
        clientGone(worst)
    }

    /// Starts the next send if none is in flight. `sendBuf[sendOffset..<sendLength]` is what the kernel may be
    /// reading; it is only refilled (from `queued`) when fully sent and no send is in flight.
    private func flush(_ c: Connection) {
        guard !c.sendInFlight, !c.closing else { return }
        if c.sendOffset >= c.sendLength {
            c.sendOffset = 0
            c.sendLength = 0
            if c.queued.isEmpty {
                // A client that has closed its side sends nothing a close could reset: close at once.
                if c.closeAfterFlush { if c.peerClosed { closeConnection(c) } else { startLingeringClose(c) } }
                return
            }
            queuedTotal -= c.queued.count
            c.takeQueued()
        }
        let s = getSQE()
        c.lastSendProgress = loopNow   // submitted right after a completion or onto an idle socket
        sy_prep_send(s, c.fd, c.sendBuf + c.sendOffset, c.sendLength - c.sendOffset)
        sy_sqe_set_data64(s, Self.data(.send, slot: c.slot, gen: c.gen))
        c.sendInFlight = true
    }

    // MARK: closing

    /// The response is fully sent and the connection must close: half-close our side and drain the client's
    /// leftovers for a moment (so the kernel does not answer them with a reset that could destroy the
    /// response in flight), then close.
    private func startLingeringClose(_ c: Connection) {
        guard !c.lingering else { return }
        c.lingering = true
        shutdown(c.fd, Int32(SHUT_WR))
        c.input = []
        c.deadline = now() + 2_000_000_000
        c.deadlineKind = .linger
    }

    /// The client closed its sending side (EOF). On a Unix socket it may have only half-closed
    /// (shutdown(SHUT_WR) right after its last request) and still be reading, so the requests it sent complete
    /// are answered before the connection closes; a peer that is gone altogether is dropped now (its request
    /// cancelled): a Unix socket reports that hang-up. Over TCP the two look alike until a send fails, and a
    /// client that went away (a timeout, Ctrl-C) is far more common than an HTTP client that half-closes, so
    /// EOF ends a TCP connection and cancels its request, as nginx treats a client abort: a generation nobody
    /// will read would otherwise hold a worker to its end.
    private func peerEOF(_ c: Connection) {
        if c.lingering || !c.unixSocket || peerHungUp(c.fd) { clientGone(c); return }
        c.peerClosed = true
        if c.active == nil && !c.closeAfterFlush { processInput(c) }   // serves what is complete, then closes
    }

    /// Whether the peer closed both directions: a Unix socket polls POLLHUP once its peer has closed, not
    /// after a mere shutdown(SHUT_WR); TCP reports neither as POLLHUP.
    private func peerHungUp(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) > 0 && p.revents & Int16(POLLHUP) != 0
    }

    /// The client disappeared (reset, send error, hang-up): cancel its request on the backend and close.
    private func clientGone(_ c: Connection) {
        if let a = c.active {
            backend.cancel(requestID: a.id)
            owners[a.id] = nil
            countRequest(route: a.route, status: 499)
            c.active = nil
        }
        closeConnection(c)
    }

    private func closeConnection(_ c: Connection) {
        guard !c.closing else { return }
        if let a = c.active {
            backend.cancel(requestID: a.id)
            owners[a.id] = nil
            c.active = nil
        }
        c.closing = true
        if c.recvArmed || c.sendInFlight {
            // Cancel every pending request on the fd; their CQEs (-ECANCELED or a late result) come back
            // before finishCloseIfIdle lets the fd and the send buffer go.
            let s = getSQE()
            sy_prep_cancel_fd(s, c.fd)
            sy_sqe_set_data64(s, Self.data(.cancel, slot: c.slot, gen: c.gen))
        }
        finishCloseIfIdle(c)
    }

    private func finishCloseIfIdle(_ c: Connection) {
        guard c.closing, !c.recvArmed, !c.sendInFlight, c.consumeInFlight == 0, conns[c.slot] === c else { return }
        close(c.fd)
        c.fd = -1
        queuedTotal -= c.queued.count
        c.queued = []
        conns[c.slot] = nil
        freeSlots.append(c.slot)
        liveConnections -= 1
        metrics.set(MetricsRegistry.openConnections, help: "Open client connections", Double(liveConnections))
    }

    private func beginShutdown(reason: String) {
        guard !draining else { return }
        draining = true
        drainDeadline = now() + nanos(config.shutdownGrace)
        config.log(.info, "\(reason): stopping accepts, draining \(owners.count) in-flight request(s) (grace \(config.shutdownGrace)s)")
        for i in listeners.indices where acceptArmed[i] {
            let s = getSQE()
            sy_prep_cancel_data(s, Self.data(.accept, slot: i), 1)
            sy_sqe_set_data64(s, Self.data(.ignore))
        }
        closeListeners()
        for case let c? in conns where !c.closing {
            c.closeAfterResponse = true
            if c.active == nil {
                if c.sendInFlight || c.sendOffset < c.sendLength || !c.queued.isEmpty { c.closeAfterFlush = true; flush(c) }
                else { closeConnection(c) }
            }
        }
    }

    private func onTick() {
        let t = now()
        if draining && t >= drainDeadline {
            for case let c? in conns where !c.closing {
                if c.active != nil { config.log(.warn, "grace period over: cancelling request \(c.active?.id ?? 0)") }
                clientGone(c)
            }
            return
        }
        // A client that stops reading: a send that makes no progress for idleTimeout drops the connection
        // (and cancels its request), so a stalled reader cannot pin a slot and its output forever.
        let stall = nanos(config.idleTimeout)
        for case let c? in conns where !c.closing && c.sendInFlight && t - c.lastSendProgress > stall {
            config.log(.warn, "dropping a client whose socket accepted nothing for \(config.idleTimeout)s")
            clientGone(c)
        }
        for case let c? in conns where !c.closing && c.deadline != 0 && t >= c.deadline {
            switch c.deadlineKind {
            case .linger:
                closeConnection(c)
            case .idle:
                closeConnection(c)
            case .idleFirst, .request:
                // Slow or silent client: 408, then close.
                c.deadline = 0
                c.headOnly = false
                sendError(c, status: 408, message: "request not received in time", code: "request_timeout", close: true)
            case .none:
                break
            }
        }
    }

    // MARK: requests

    private func processInput(_ c: Connection) {
        while c.active == nil && !c.closing && !c.closeAfterFlush && !c.lingering {
            if c.input.isEmpty {
                if c.peerClosed { closeAfterAnswers(c); return }
                c.deadline = loopNow + nanos(config.idleTimeout)
                if c.deadlineKind != .idleFirst { c.deadlineKind = .idle }
                return
            }
            let result = c.input.withUnsafeBytes { c.parser.parse($0) }
            switch result {
            case .incomplete:
                if c.peerClosed { closeAfterAnswers(c); return }   // the rest of it will never come
                if c.deadlineKind != .request {
                    c.deadlineKind = .request
                    c.deadline = loopNow + nanos(config.requestTimeout)
                }
                if let h = c.parser.head, h.expectContinue, !c.sentContinue {
                    c.sentContinue = true
                    enqueue(c, Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
                }
                return
            case .failure(let e):
                c.headOnly = false
                countRequest(route: "invalid", status: e.status)
                sendError(c, status: e.status, message: e.message, code: e.code, close: true, count: false)
                return
            case .complete(let req, let consumed):
                sy_trace_mark(nextRequestID, SY_TP_FRONT_PARSED)
                c.input.removeFirst(consumed)
                c.parser.reset()
                c.sentContinue = false
                c.deadline = 0
                c.deadlineKind = .none
                c.keepAlive = req.head.keepAlive && !c.closeAfterResponse
                c.http10 = req.head.versionMinor == 0
                c.headOnly = req.head.methodIs("HEAD")
                handleRequest(c, req)
            }
        }
    }

    /// The client has stopped sending (peerEOF) and every request it completed is answered: close once the
    /// answers are out.
    private func closeAfterAnswers(_ c: Connection) {
        c.closeAfterFlush = true
        flush(c)
    }

    private func sendError(_ c: Connection, status: Int, message: String, type: String? = nil, param: String? = nil,
                           code: String, close: Bool, route: String = "invalid", worker: Int? = nil,
                           requestID: UInt64? = nil, extra: [(String, String)] = [], count: Bool = true) {
        let body = ResponseWriter.errorBody(message: message, type: type ?? ResponseWriter.errorType(for: status),
                                            param: param, code: code)
        let keep = !close && c.keepAlive
        scratch.reset()
        ResponseWriter.full(&scratch, status: status, contentType: "application/json", body: body, keepAlive: keep,
                            worker: worker, requestID: requestID, extra: extra, headOnly: c.headOnly)
        if count {
            countRequest(route: route, status: status)
        }
        if !keep {
            c.closeAfterFlush = true
            c.deadline = now() + nanos(config.requestTimeout)
            c.deadlineKind = .linger
        }
        scratch.withBytes { enqueue(c, $0) }
    }

    private func sendJSON(_ c: Connection, status: Int = 200, body: [UInt8], route: String, worker: Int? = nil,
                          contentType: String = "application/json") {
        scratch.reset()
        ResponseWriter.full(&scratch, status: status, contentType: contentType, body: body, keepAlive: c.keepAlive,
                            worker: worker, headOnly: c.headOnly)
        countRequest(route: route, status: status)
        if !c.keepAlive { c.closeAfterFlush = true }
        scratch.withBytes { enqueue(c, $0) }
    }

    private static let healthOK = Array("{\"status\":\"ok\"}".utf8)

    private func modelObject(_ w: inout JSONWriter, _ id: String) {
        w.raw("{\"id\":"); w.string(id); w.raw(",\"object\":\"model\",\"created\":"); w.int(startedAt)
        w.raw(",\"owned_by\":\"switchyard\"}")
    }

    /// The model named in answers to requests that name none (the backend's list is built on each call).
    private lazy var defaultModelName: String = backend.modelIDs.first ?? config.defaultModel
    private var servedModelIDs: [String] { backend.modelIDs.isEmpty ? [config.defaultModel] : backend.modelIDs }

    /// `GET /v1/models/{id}` (OpenAI's retrieve): the model object of a served id, else 404 model_not_found.
    private func retrieveModel(_ c: Connection, id: String) {
        guard servedModelIDs.contains(id) else {
            sendError(c, status: 404, message: "The model '\(id)' does not exist (served: \(servedModelIDs.joined(separator: ", ")))",
                      param: "model", code: "model_not_found", close: false, route: "models")
            return
        }
        var w = JSONWriter()
        modelObject(&w, id)
        sendJSON(c, body: w.bytes, route: "models")
    }

    /// `%XX` escapes of a path segment decoded (an invalid escape stays as written; invalid UTF-8 is repaired).
    static func percentDecoded(_ s: Substring) -> String {
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == 37, i + 2 < b.count, let h = HTTPRequestParser.hexValue(b[i + 1]), let l = HTTPRequestParser.hexValue(b[i + 2]) {
                out.append(UInt8(h << 4 | l)); i += 3
            } else {
                out.append(b[i]); i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private enum Endpoint { case chatCompletions, completions, models, model, health, metrics, tokenize, detokenize }

    /// (path, method, route name for metrics, endpoint). Looked up by the path's UTF-8 length first, then
    /// compared: no String built from the path and no hashing on the request path. A path ending in "/" is a
    /// prefix: it takes the paths that continue it (the rest is the route's argument, e.g. a model id).
    private static let routes: [(path: String, method: String, route: String, endpoint: Endpoint)] = [
        ("/v1/chat/completions", "POST", "chat_completions", .chatCompletions),
        ("/v1/completions", "POST", "completions", .completions),
        ("/v1/models", "GET", "models", .models),
        ("/v1/models/", "GET", "models", .model),
        ("/health", "GET", "health", .health),
        ("/metrics", "GET", "metrics", .metrics),
        ("/tokenize", "POST", "tokenize", .tokenize),
        ("/detokenize", "POST", "detokenize", .detokenize),
    ]

    private static let standardMethods = ["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"]

    private static func route(_ head: HTTPRequestHead) -> (path: String, method: String, route: String, endpoint: Endpoint)? {
        head.withPath { a in
            for r in routes {
                let n = r.path.utf8.count
                let prefix = r.path.utf8.last == UInt8(ascii: "/")
                guard prefix ? a.count > n : a.count == n else { continue }
                let same = r.path.utf8.withContiguousStorageIfAvailable { b in
                    n == 0 || memcmp(a.baseAddress!, b.baseAddress!, n) == 0
                } ?? r.path.utf8.elementsEqual(a.prefix(n))
                if same { return r }
            }
            return nil
        }
    }

    private func handleRequest(_ c: Connection, _ req: HTTPRequest) {
        let r = Self.route(req.head)
        // HEAD is answered like GET, without the body (sendJSON and sendError leave it out for every HEAD).
        let methodFits = r.map { req.head.methodIs($0.method) || ($0.method == "GET" && c.headOnly) } ?? false
        // A method HTTP does not define (RFC 9110 §9 and PATCH) is 501 whatever the path (§15.6.2: not
        // recognized); a standard one that the route does not take is 405 with Allow below. (Checked only
        // when the method does not fit the route: every route's method is a standard one.)
        if !methodFits && !Self.standardMethods.contains(where: { req.head.methodIs($0) }) {
            sendError(c, status: 501, message: "method \(req.head.method) is not implemented (GET, HEAD and POST are)",
                      type: "invalid_request_error", code: "not_implemented", close: false, route: "unknown")
            return
        }
        guard let r else {
            let path = String(req.head.path)
            sendError(c, status: 404, message: "no route for \(req.head.method) \(path)", code: "not_found", close: false, route: "unknown")
            return
        }
        let path = r.path
        if !methodFits {
            let allow = r.method == "GET" ? "GET, HEAD" : r.method
            sendError(c, status: 405, message: "\(path) accepts \(allow) only", code: "method_not_allowed",
                      close: false, route: r.route, extra: [("Allow", allow)])
            return
        }
        switch r.endpoint {
        case .health:
            let h = backend.health()
            if h.ready {
                sendJSON(c, body: Self.healthOK, route: "health")
            } else {
                sendJSON(c, status: 503, body: Array("{\"status\":\"loading\",\"workers_ready\":\(h.workersReady),\"workers_total\":\(h.workersTotal)}".utf8), route: "health")
            }
        case .models:
            var w = JSONWriter()
            w.raw("{\"object\":\"list\",\"data\":[")
            for (k, id) in servedModelIDs.enumerated() {
                if k > 0 { w.raw(",") }
                modelObject(&w, id)
            }
            w.raw("]}")
            sendJSON(c, body: w.bytes, route: "models")
        case .model:
            let rest = req.head.path.utf8.dropFirst(r.path.utf8.count)   // bytes: a combining mark may follow "/"
            retrieveModel(c, id: Self.percentDecoded(String(decoding: rest, as: UTF8.self)[...]))
        case .metrics:
            backend.collectMetrics(into: metrics)
            metrics.set(MetricsRegistry.inFlight, help: "Requests admitted and not yet finished", Double(owners.count))
            sendJSON(c, body: Array(metrics.render().utf8), route: "metrics", contentType: "text/plain; version=0.0.4")
        case .chatCompletions, .completions:
            let kind: RouteKind = r.endpoint == .chatCompletions ? .chatCompletions : .completions
            let id = nextRequestID
            do {
                let api = try APIDecoder.decodeGeneration(kind: kind, body: req.body, id: id,
                                                          sessionHeader: req.head.header("x-session-id"), peer: c.peer)
                nextRequestID += 1
                sy_trace_mark(id, SY_TP_FRONT_DECODED)
                admit(c, route: r.route, id: id, admission: backend.submit(api), stream: api.stream,
                      includeUsage: api.includeUsage, model: api.model, chat: kind == .chatCompletions, kind: .generation,
                      logprobs: api.sampling.logprobs, toolCall: api.toolCall, autoTools: api.autoToolNames)
            } catch {
                sendError(c, status: error.status, message: error.message, type: error.type, param: error.param,
                          code: error.code, close: false, route: r.route)
            }
        case .tokenize:
            do {
                let t = try APIDecoder.decodeTokenize(req.body)
                let id = nextRequestID; nextRequestID += 1
                admit(c, route: "tokenize", id: id,
                      admission: backend.tokenize(requestID: id, content: t.content, addSpecial: t.addSpecial, parseSpecial: t.parseSpecial),
                      stream: false, includeUsage: false, model: nil, chat: false, kind: .tokenize)
            } catch {
                sendError(c, status: error.status, message: error.message, param: error.param, code: error.code, close: false, route: "tokenize")
            }
        case .detokenize:
            do {
                let toks = try APIDecoder.decodeDetokenize(req.body)
                let id = nextRequestID; nextRequestID += 1
                admit(c, route: "detokenize", id: id, admission: backend.detokenize(requestID: id, tokens: toks),
                      stream: false, includeUsage: false, model: nil, chat: false, kind: .detokenize)
            } catch {
                sendError(c, status: error.status, message: error.message, param: error.param, code: error.code, close: false, route: "detokenize")
            }
        }
    }

    private func admit(_ c: Connection, route: String, id: UInt64, admission: Admission, stream: Bool,
                       includeUsage: Bool, model: String?, chat: Bool, kind: ActiveRequest.Kind, logprobs: Int? = nil,
                       toolCall: Bool = false, autoTools: [String] = []) {
        switch admission {
        case .admitted(let worker):
            let modelName = model ?? defaultModelName
            let ident = CompletionIdentity(number: id, created: Int(time(nil)),
                                           model: modelName, chat: chat)
            c.active = ActiveRequest(id: id, kind: kind, route: route, worker: worker, stream: stream,
                                     includeUsage: includeUsage, identity: ident, start: now(),
                                     http10: c.http10, logprobs: logprobs, toolCall: toolCall, autoTools: autoTools)
            owners[id] = (c.slot, c.gen)
        case .overloaded(let retry):
            sendError(c, status: 503, message: "all workers are busy; retry later", code: "overloaded", close: false,
                      route: route, extra: [("Retry-After", String(max(1, retry)))])
        case .tooLarge(let message):
            sendError(c, status: 400, message: message, code: "request_too_large", close: false, route: route)
        case .notReady(let reason):
            sendError(c, status: 503, message: "not ready: \(reason)", code: "not_ready", close: false, route: route,
                      extra: [("Retry-After", "1")])
        }
    }

    /// A latency observation through a cached handle (resolved after the series' first observation).
    private func observe(_ h: inout MetricsRegistry.Handle?, _ name: String, help: String, _ value: Double) {
        if let h { metrics.observe(h, value); return }
        metrics.observe(name, help: help, value)
        h = metrics.handle(name, kind: .histogram, buckets: MetricsRegistry.latencyBuckets)
    }

    /// Counts one answered request in switchyard_requests_total{route,status}. The series is created by the
    /// first request of its (route, status) and then updated through a cached handle (no label rendering
    /// per request). Routes are the fixed set above plus "invalid", so the cache stays small; the bound is a
    /// guard.
    private func countRequest(route: String, status: Int) {
        // The same series as last time (the common case under load): no hashing at all. Route names are
        // short literals, so this compare is a compare of two words.
        if let last = lastCounted, last.status == status, last.route == route { metrics.add(last.handle); return }
        let key = RouteStatus(route: route, status: status)
        if let h = requestCounters[key] {
            metrics.add(h)
            lastCounted = (route, status, h)
            return
        }
        let labels = [("route", route), ("status", String(status))]
        metrics.add(MetricsRegistry.requests, help: "HTTP requests by route and status", labels: labels)
        if requestCounters.count < 256, let h = metrics.handle(MetricsRegistry.requests, kind: .counter, labels: labels) {
            requestCounters[key] = h
        }
    }

    // MARK: backend events

    private func onEvent(_ e: BackendEvent) {
        // Tokens are counted from every final event, also of a request whose client went away (the backend
        // still reports what the worker generated before the cancel reached it).
        if case .final(_, _, let usage) = e {
            if let h = tokensCounter { metrics.add(h, Double(usage.completionTokens)) } else {
                metrics.add(MetricsRegistry.tokensGenerated, help: "Completion tokens generated", Double(usage.completionTokens))
                tokensCounter = metrics.handle(MetricsRegistry.tokensGenerated, kind: .counter)
            }
        }
        guard let o = owners[e.requestID], let c = connection(o.slot, o.gen), !c.closing, let a = c.active,
              a.id == e.requestID else { return }
        switch e {
        case .delta(_, let text):
            let t = now()   // only deltas are timed (TTFT, inter-token)
            if a.firstTokenAt == 0 {
                a.firstTokenAt = t
                observe(&ttftHistogram, MetricsRegistry.ttft, help: "Time from admission to the first generated text",
                        Double(t - a.start) / 1e9)
            } else {
                observe(&interTokenHistogram, MetricsRegistry.interToken, help: "Time between consecutive text deltas",
                        Double(t - a.lastTokenAt) / 1e9)
            }
            a.lastTokenAt = t
            if a.stream && !a.toolCall && !a.holding {
                sendDelta(c, a, text)
            } else {
                a.text += text
                // tool_choice auto, streamed: once the answer begins with anything but '{' it is text.
                if a.holding && a.stream, let first = a.text.unicodeScalars.first(where: { !$0.properties.isWhitespace }),
                   first != "{" {
                    a.holding = false
                    sendDelta(c, a, a.text)
                    a.text = ""
                }
            }
        case .final(_, var finish, let usage):
            sy_trace_mark(a.id, SY_TP_FRONT_FINAL)
            // A forced tool call that finished is sent as one; cut short (max_tokens), as the text it is. With
            // tool_choice auto, an answer that is a call of one of the functions is one.
            var call: ToolCall? = nil
            if finish == .stop && a.toolCall { call = ToolCall.parse(a.text) }
            if finish == .stop && a.holding { call = ToolCall.parse(a.text, names: a.autoTools) }
            let held = a.toolCall || (a.holding && a.stream)
            if call != nil { finish = .toolCalls }
            if a.stream {
                scratch.reset()
                if !a.headersSent { startStream(c, a, roleContent: call == nil) }
                if let call {
                    bodyWriter.reset()
                    OpenAIEncoder.toolCallChunk(a.identity, call, nullUsage: a.includeUsage, into: &bodyWriter)
                    bodyWriter.withBytes { frame(a, $0) }
                } else if held && !a.text.isEmpty {
                    frameChunk(a, text: a.text, role: false, finish: nil)
                }
                frameChunk(a, text: nil, role: false, finish: finish)
                if a.includeUsage {
                    bodyWriter.reset()
                    OpenAIEncoder.usageChunk(a.identity, usage, into: &bodyWriter)
                    bodyWriter.withBytes { frame(a, $0) }
                }
                endStream(a)
                countRequest(route: a.route, status: 200)
                finishFromScratch(c, a)
            } else {
                bodyWriter.reset()
                OpenAIEncoder.completion(a.identity, text: a.text, finish: finish, usage: usage,
                                         logprobs: a.logprobs.map { (a.steps[...], $0) }, toolCall: call, into: &bodyWriter)
                bodyWriter.withBytes { buildJSONResponse(c, a, $0) }
                finishFromScratch(c, a)
            }
        case .rerouted(_, let worker):
            if !a.headersSent { a.worker = worker }
            // Nothing was generated for the client yet (a request moves only before its first text): the
            // first worker's log-probabilities, if any arrived, are not the answer's.
            a.steps.removeAll()
        case .logprobs(_, let steps):
            if a.logprobs != nil { a.steps.append(contentsOf: steps) }
        case .error(_, let message), .rejected(_, _, _, let message):
            if a.headersSent {
                scratch.reset()
                OpenAIEncoder.streamError(message: message).withUnsafeBytes { frame(a, $0) }
                endStream(a)
                countRequest(route: a.route, status: 200)
                finishFromScratch(c, a)
            } else {
                owners[a.id] = nil
                c.active = nil
                if case .rejected(_, let status, let code, _) = e, status != 503 {
                    sendError(c, status: status, message: message, code: code,
                              close: false, route: a.route, worker: a.worker, requestID: a.id)
                } else {
                    sendError(c, status: 503, message: message, code: "worker_error", close: false, route: a.route,
                              worker: a.worker, requestID: a.id, extra: [("Retry-After", "1")])
                }
                processInput(c)
            }
        case .tokens(_, let tokens):
            var w = JSONWriter()
            w.raw("{\"tokens\":[")
            for (k, t) in tokens.enumerated() { if k > 0 { w.raw(",") }; w.int(Int(t)) }
            w.raw("]}")
            w.withBytes { buildJSONResponse(c, a, $0) }
            finishFromScratch(c, a)
        case .text(_, let content):
            var w = JSONWriter()
            w.raw("{\"content\":"); w.string(content); w.raw("}")
            w.withBytes { buildJSONResponse(c, a, $0) }
            finishFromScratch(c, a)
        }
    }

    /// Sends one streamed text chunk of `a` (and the stream's head before the first): built in the reused
    /// buffers, then copied to the connection.
    private func sendDelta(_ c: Connection, _ a: ActiveRequest, _ text: String) {
        scratch.reset()
        if !a.headersSent { startStream(c, a) }
        frameChunk(a, text: text, role: false, finish: nil)
        scratch.withBytes { enqueue(c, $0) }
    }

    /// Appends a piece of a streamed body to `scratch`: an HTTP/1.1 chunk, or raw bytes for HTTP/1.0 (whose
    /// stream is delimited by closing the connection).
    private func frame(_ a: ActiveRequest, _ payload: UnsafeRawBufferPointer) {
        if a.http10 { scratch.append(payload) } else { ResponseWriter.chunk(&scratch, payload) }
    }

    /// Appends the stream's head to `scratch` (and, for chat, the chunk announcing the assistant role, with
    /// `"content": ""`, or without content for a stream that carries a tool call, as OpenAI writes them).
    private func startStream(_ c: Connection, _ a: ActiveRequest, roleContent: Bool = true) {
        a.headersSent = true
        if a.http10 { c.keepAlive = false }
        ResponseWriter.head(&scratch, status: 200, contentType: "text/event-stream", contentLength: nil, chunked: !a.http10,
                            keepAlive: c.keepAlive, worker: a.worker, requestID: a.id, extra: [("Cache-Control", "no-cache")])
        if a.identity.chat { frameChunk(a, text: roleContent ? "" : nil, role: true, finish: nil) }
    }

    /// Appends one SSE event of `a`'s stream to `scratch` (encoded in the body writer, then framed).
    /// The log-probabilities waiting in `a` go with the chunk's text (or, at the end, with the finishing
    /// chunk); a chunk without any (the role chunk, a finishing chunk after the last text) has null.
    private func frameChunk(_ a: ActiveRequest, text: String?, role: Bool, finish: FinishReason?) {
        bodyWriter.reset()
        var logprobs: (ArraySlice<LogprobStep>, Int)? = nil
        if let top = a.logprobs, !role, !a.steps.isEmpty { logprobs = (a.steps[...], top) }
        OpenAIEncoder.streamChunk(a.identity, text: text, role: role, finish: finish, nullUsage: a.includeUsage,
                                  logprobs: logprobs, textOffset: &a.textOffset, into: &bodyWriter)
        if logprobs != nil { a.steps.removeAll(keepingCapacity: true) }
        bodyWriter.withBytes { frame(a, $0) }
    }

    /// Appends `data: [DONE]` and, for chunked streams, the last chunk to `scratch`.
    private func endStream(_ a: ActiveRequest) {
        ResponseWriter.done.withUnsafeBytes { frame(a, $0) }
        if !a.http10 { scratch.append(ResponseWriter.lastChunk) }
    }

    /// A 200 JSON response to `a` in `scratch` (sent by finishFromScratch).
    private func buildJSONResponse(_ c: Connection, _ a: ActiveRequest, _ body: UnsafeRawBufferPointer) {
        scratch.reset()
        ResponseWriter.full(&scratch, status: 200, contentType: "application/json", body: body, keepAlive: c.keepAlive,
                            worker: a.worker, requestID: a.id)
        countRequest(route: a.route, status: 200)
    }

    /// Ends `a` with the response in `scratch`, then serves the connection's next pipelined request. The
    /// next request is taken only after `scratch` has been copied out and released (its answer may be built
    /// in `scratch` at once: an error, /health), so no buffer is reused while it is being read.
    private func finishFromScratch(_ c: Connection, _ a: ActiveRequest) {
        owners[a.id] = nil
        c.active = nil
        if !c.keepAlive || c.closeAfterResponse { c.keepAlive = false; c.closeAfterFlush = true }
        scratch.withBytes { enqueue(c, $0) }
        sy_trace_mark(a.id, SY_TP_FRONT_QUEUED)
        if !c.closing { processInput(c) }
        if c.deferConsume && c.active == nil && !c.closing { hotConnection = (c.slot, c.gen) }
    }

    // MARK: time

    /// The clock when the loop last woke (read once per wake-up, not per request): for the per-request
    /// deadlines and send-progress stamps, whose timeouts are seconds, where a few microseconds of
    /// staleness cannot matter. Latency observations read the clock itself.
    private var loopNow: UInt64 = 0

    private func now() -> UInt64 {
        var ts = Glibc.timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    private func nanos(_ seconds: Double) -> UInt64 { UInt64(max(0, seconds) * 1e9) }
}

/// One admitted request on a connection (at most one at a time; pipelined requests wait in `input`).
/// The request a connection is answering. A class: the event handlers update it in place (a struct taken
/// out of the connection and stored back copied its fields, and a growing answer text, on every event).
final class ActiveRequest {
    enum Kind { case generation, tokenize, detokenize }
    let id: UInt64
    let kind: Kind
    let route: String
    var worker: Int
    let stream: Bool
    let includeUsage: Bool
    let identity: CompletionIdentity
    let start: UInt64
    let http10: Bool
    var headersSent = false
    var text = ""
    var firstTokenAt: UInt64 = 0
    var lastTokenAt: UInt64 = 0
    /// Log-probabilities asked for (nil: none; n: with n alternatives per token), the generated tokens'
    /// not yet sent, and (completions) the characters of answer text before them.
    let logprobs: Int?
    var steps: [LogprobStep] = []
    var textOffset = 0
    /// A forced tool call: the answer is gathered (streamed too) and sent as `tool_calls` at the end.
    let toolCall: Bool
    /// tool_choice "auto": the functions the answer may call, and whether it may still be a call (its text
    /// is held back while it is blank or begins with '{'; streamed as text once it cannot be a call).
    let autoTools: [String]
    var holding: Bool

    init(id: UInt64, kind: Kind, route: String, worker: Int, stream: Bool, includeUsage: Bool,
         identity: CompletionIdentity, start: UInt64, http10: Bool, logprobs: Int? = nil, toolCall: Bool = false,
         autoTools: [String] = []) {
        self.id = id; self.kind = kind; self.route = route; self.worker = worker; self.stream = stream
        self.includeUsage = includeUsage; self.identity = identity; self.start = start; self.http10 = http10
        self.logprobs = logprobs; self.toolCall = toolCall; self.autoTools = autoTools; holding = !autoTools.isEmpty
    }
}

final class Connection {
    enum Deadline { case none, idleFirst, idle, request, linger }

    var fd: Int32
    let slot: Int
    let gen: UInt32
    let peer: PeerIdentity
    var parser: HTTPRequestParser
    /// Unconsumed input, starting at the first byte of the request being parsed.
    var input: [UInt8] = []
    var sentContinue = false
    var keepAlive = true
    /// The current request is HTTP/1.0: streams are sent unchunked and end with the connection.
    var http10 = false
    /// The current request is HEAD: its answer carries the head only (a body would be read by the client as
    /// the start of the next response).
    var headOnly = false
    var active: ActiveRequest?

    // Output: the kernel may read sendBuf[sendOffset..<sendLength] while sendInFlight; new output goes to
    // `queued` and moves into sendBuf only when sendBuf is fully sent.
    var sendBuf: UnsafeMutableRawPointer
    var sendCapacity: Int
    var sendOffset = 0
    var sendLength = 0
    var queued: [UInt8] = []
    var sendInFlight = false
    /// Monotonic time the send in flight was submitted (each submission follows a completion or an idle socket).
    var lastSendProgress: UInt64 = 0
    var recvArmed = false
    /// Accepted on a Unix-socket listener (else TCP).
    var unixSocket = false
    /// FrontConfig.deferConsume on this connection (Unix sockets only).
    var deferConsume = false
    /// deferConsume: bytes at the head of the socket's receive queue that are already in `input` (peeked).
    var unconsumed = 0
    /// deferConsume: bytes a consuming recv in flight takes out of the socket (sent with an answer, `enqueue`).
    var consumeInFlight = 0
    /// A readiness (poll mask) that came while `consumeInFlight`, served when the consume completes (0: none).
    var deferredReadiness: Int32 = 0

    var closing = false
    var closeAfterFlush = false
    var closeAfterResponse = false
    /// The client closed its sending side (EOF) and has not hung up: its complete requests are answered, then
    /// the connection closes.
    var peerClosed = false
    var lingering = false
    var deadline: UInt64 = 0
    var deadlineKind = Deadline.none

    init(fd: Int32, slot: Int, gen: UInt32, limits: HTTPLimits, peer: PeerIdentity) {
        self.fd = fd
        self.slot = slot
        self.gen = gen
        self.peer = peer
        self.parser = HTTPRequestParser(limits: limits)
        sendCapacity = 4096
        sendBuf = UnsafeMutableRawPointer.allocate(byteCount: sendCapacity, alignment: 16)
    }

    deinit { sendBuf.deallocate() }

    /// Moves `queued` into the (idle) send buffer.
    func takeQueued() {
        if queued.count > sendCapacity {
            sendBuf.deallocate()
            sendCapacity = max(queued.count, sendCapacity * 2)
            sendBuf = UnsafeMutableRawPointer.allocate(byteCount: sendCapacity, alignment: 16)
        }
        queued.withUnsafeBytes { sendBuf.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        sendOffset = 0
        sendLength = queued.count
        queued.removeAll(keepingCapacity: true)
    }
}
