// WorkerPool: the FrontBackend that runs generation in worker processes behind shared-memory rings.
//
// It spawns the workers (the same binary, `switchyard worker …`, with its request ring, response ring,
// the pool's eventfd and its control block inherited as fds 3-6), routes each request with the Router,
// encodes it into the chosen worker's request ring, and turns response records into BackendEvents.
//
// Everything runs on the front's event-loop thread. The loop polls one descriptor, `wakeFD`: an epoll set
// holding the eventfd every response ring signals, every worker's pidfd, and a 100 ms timerfd for
// heartbeat checks and respawns. So the front sleeps in the kernel when idle and learns of a worker's
// death the moment its pidfd becomes readable.
//
// Failure handling:
// - a worker exits or is killed (pidfd readable): requests that already streamed something get an error
//   event (the front turns it into an SSE error event), requests that had not started are routed again to
//   their next-ranked worker (503 if none is left), the worker is marked dead in the router (its sessions
//   go to their next-ranked worker) and respawned with exponential backoff (0.1 s doubling to 5 s);
// - a worker hangs (its heartbeat does not move for `heartbeatTimeout` while it is ready): SIGKILL, then
//   the same as above;
// - a worker (or a group) that has not sent its ready record `startupTimeout` seconds after it was spawned
//   (a load that stalls, a shard that stops during warm-up): SIGKILL, then the same as above;
// - a malformed record from a worker (a buggy or dying peer): the worker is killed and handled as above.
//
// With `--tp K` a routing target is a group of K processes whose leader is the worker described here; the
// followers and the group rules are in WorkerGroups.swift.
import CSwitchyardSys
import Glibc
import Routing
import ShmRing
import SysKit
import Wire

/// One routing target: a worker process, or the leader (shard 0) of a tensor-parallel group whose other
/// shards are `followers`. `id` is the worker id (--tp 1) or the group id, reported in X-Switchyard-Worker.
public struct WorkerSpec: Sendable {
    public var id: Int
    /// Arguments after `worker --id N --parent PID` (engine, model, threads, placement, limits).
    public var arguments: [String]
    /// For logs and metrics.
    public var numaNode: Int?
    public var cpus: [Int]
    /// Shards 1..K-1 of the group (empty for --tp 1).
    public var followers: [FollowerSpec]
    public var tpSize: Int { followers.count + 1 }
    public init(id: Int, arguments: [String], numaNode: Int?, cpus: [Int], followers: [FollowerSpec] = []) {
        self.id = id; self.arguments = arguments; self.numaNode = numaNode; self.cpus = cpus; self.followers = followers
    }
}

/// How a worker wakes the front when it commits to a response ring while the front sleeps.
public enum RingWake: String, Sendable, CaseIterable {
    /// The ring's futex word: the front's loop sleeps in IORING_OP_FUTEX_WAIT on each response ring
    /// (kernel 6.7+), the worker calls FUTEX_WAKE.
    case futex
    /// One eventfd shared by every response ring: the worker writes it, the loop polls it (any kernel).
    case eventfd
}

/// The sampling a request gets for each field it leaves out. Like llama-server (the reference on the same
/// GGUF file), and like `switchyard generate`'s truncation, not OpenAI's temperature 1 without truncation:
/// a small model sampled from its whole distribution at temperature 1 strays into noise within a few tokens
/// (SmolLM2-135M, "Say hi": "👀👀 TOR rampumbras Dolinar…"). `serve --default-*` changes them
/// (`--default-temperature 1 --default-top-p 1 --default-top-k 0 --default-min-p 0` gives OpenAI's).
public struct SamplingDefaults: Sendable, Equatable {
    public var temperature: Double = 0.8
    public var topP: Double = 0.95
    public var topK: Int = 40
    public var minP: Double = 0.05
    public init() {}
}

public struct WorkerPoolConfig: Sendable {
    public var executable: String
    public var workers: [WorkerSpec]
    public var policy: RoutingPolicy = .consistentHash
    public var balanceFactor: Double = Router.defaultBalanceFactor
    public var ringCapacity = 1 << 20
    /// Response-ring wake-ups; `.futex` only where `FrontServer.futexWaitWorks()` (serve decides).
    public var ringWake: RingWake = .eventfd
    /// A worker whose heartbeat stands still this long while ready is considered hung and killed.
    public var heartbeatTimeout: Double = 15
    /// A worker (or group) that is not ready this long after its spawn is killed and respawned.
    public var startupTimeout: Double = 600
    public var restartBackoffMin: Double = 0.1
    public var restartBackoffMax: Double = 5
    public var modelID = "switchyard"
    /// Sampling defaults for fields a request leaves out.
    public var defaultMaxTokens = 256
    public var defaultSampling = SamplingDefaults()
    public var log: @Sendable (LogLevel, String) -> Void = LogLevel.stderrLogger(prefix: "pool", threshold: .info)
    public init(executable: String, workers: [WorkerSpec]) { self.executable = executable; self.workers = workers }
}

/// Owns a spawned worker process (killed and reaped when dropped).
final class ProcessHandle {
    var child: ChildProcess
    init(_ child: consuming ChildProcess) { self.child = child }
}

final class WorkerSlot {
    /// Fixed but for its CPU, which `followClients` may trade with the front's.
    var spec: WorkerSpec
    let routerSlot: Int
    var process: ProcessHandle?
    var channel: RingChannel? { didSet { ringGeneration &+= 1 } }
    /// Bumped whenever `channel` changes, so the loop can tell a futex wait armed on a replaced ring.
    var ringGeneration: UInt32 = 0
    var control: ControlBlock?
    var ready = false
    var restarts = 0
    var consecutiveFailures = 0
    var respawnAt: UInt64 = 0          // monotonic ns; 0 = not scheduled
    var spawnedAt: UInt64 = 0          // monotonic ns of the last successful spawn
    var readySince: UInt64 = 0
    var lastBeat: UInt64 = 0
    var lastBeatChange: UInt64 = 0
    var readyInfo: ReadyRecord?
    /// The control block's idle-wait counters at the last supervision tick (`followClients`).
    var lastIdleWaits: UInt64 = 0
    var lastSharedWaits: UInt64 = 0
    /// The group's other shards (empty for --tp 1).
    let followers: [FollowerSlot]
    init(spec: WorkerSpec, routerSlot: Int) {
        self.spec = spec; self.routerSlot = routerSlot
        followers = spec.followers.map { FollowerSlot(spec: $0) }
    }
}

public final class WorkerPool: FrontBackend {
    struct InFlight {
        var worker: Int
        var ticket: Ticket?
        var started = false
        var cancelled = false
        var errored = false
        var request: APIRequest?          // kept until started, to re-route if the worker dies
        var retries = 0
    }

    public let config: WorkerPoolConfig
    let router: Router
    var slots: [WorkerSlot] = []
    var inFlight = RequestTable<InFlight>()
    /// The live workers' response-ring consumers, for the front's spin (`pollEvents`): held strongly in
    /// `pollOwners`, read through `pollRings` without reference counting (the spin checks them millions of
    /// times; retaining and releasing a slot, its channel and its consumer on every check was a third of
    /// the loop's CPU). Rebuilt whenever a channel is set or dropped.
    var pollOwners: [RingConsumer] = []
    var pollRings: [Unmanaged<RingConsumer>] = []
    let epoll: FileDescriptor
    let eventFD: EventFD
    let timerFD: FileDescriptor
    var writer = WireWriter(capacity: 4096)
    var pending: [BackendEvent] = []
    /// drain()'s reused buffers (no allocation per wake-up): epoll_wait's output, and the event array that
    /// swaps with `pending` while its events are delivered (capacity kept across drains).
    var epollTags = [UInt64](repeating: 0, count: 64)
    var spareEvents: [BackendEvent] = []
    var shuttingDown = false
    public private(set) var totalRestarts = 0
    /// The front's CPU while it follows its clients (FollowClients.swift; set by `followClients(from:)`),
    /// the rule's state, and the loop thread's involuntary switches and the time at the last tick.
    var frontCPU: Int?
    var following = false
    var followJudge = FollowClientsJudge()
    var lastFrontSwitches = -1
    var lastFollowTick: UInt64 = 0
    public private(set) var cpuSwaps = 0

    // epoll data tags: kind in the high 32 bits, index in the low.
    static let tagEvent: UInt64 = 1 << 32
    static let tagTimer: UInt64 = 2 << 32
    static let tagPid: UInt64 = 3 << 32

    public init(config: WorkerPoolConfig) throws {
        self.config = config
        guard !config.workers.isEmpty else { throw WorkerError.config("at least one worker is needed") }
        router = try Router(policy: config.policy, balanceFactor: config.balanceFactor,
                            maxTargets: max(1, config.workers.count))
        let ep = sy_epoll_create()
        guard ep >= 0 else { throw SysError(errno: -ep, call: "epoll_create1") }
        epoll = FileDescriptor(adopting: ep)
        eventFD = try EventFD()
        let tfd = sy_timerfd_periodic(100_000_000)
        guard tfd >= 0 else { throw SysError(errno: -tfd, call: "timerfd_create") }
        timerFD = FileDescriptor(adopting: tfd)
        try Self.check(sy_epoll_add(epoll.rawValue, eventFD.rawValue, Self.tagEvent), "epoll_ctl(eventfd)")
        try Self.check(sy_epoll_add(epoll.rawValue, timerFD.rawValue, Self.tagTimer), "epoll_ctl(timerfd)")
        for spec in config.workers {
            let slot = try router.addTarget(TargetSpec(id: spec.followers.isEmpty ? "worker-\(spec.id)" : "group-\(spec.id)"))
            router.setHealth(.dead, slot: slot)       // until its ready record arrives
            slots.append(WorkerSlot(spec: spec, routerSlot: slot))
        }
        for i in slots.indices { spawn(i) }
    }

    enum WorkerError: Error, CustomStringConvertible {
        case config(String)
        var description: String {
            switch self {
            case .config(let s): "worker pool: \(s)"
            }
        }
    }

    static func check(_ rc: Int32, _ call: String) throws {
        if rc < 0 { throw SysError(errno: -rc, call: call) }
    }

    static func now() -> UInt64 { sy_monotonic_ns() }

    // MARK: Spawning and supervision

    func spawn(_ i: Int) {
        let w = slots[i]
        w.respawnAt = 0
        do {
            let requests = try ShmRing(capacity: config.ringCapacity, name: "switchyard-req-\(w.spec.id)")
            let responses = try ShmRing(capacity: config.ringCapacity, consumerUsesEventFD: config.ringWake == .eventfd,
                                        name: "switchyard-resp-\(w.spec.id)")
            let control = try ControlBlock()
            var args = ["worker", "--id", "\(w.spec.id)", "--parent", "\(getpid())"] + w.spec.arguments
            var inherit = [InheritedDescriptor(requests.fileDescriptor, as: 3),
                           InheritedDescriptor(responses.fileDescriptor, as: 4),
                           InheritedDescriptor(eventFD.rawValue, as: 5),
                           InheritedDescriptor(control.fileDescriptor, as: 6)]
            // A group: one fresh group memfd for all its shards (closed here once they inherited it).
            let groupFD: Int32 = w.followers.isEmpty ? -1 : try makeGroupMemory(w)
            defer { if groupFD >= 0 { _ = Glibc.close(groupFD) } }
            if groupFD >= 0 {
                args += leaderGroupArguments(w)
                inherit.append(InheritedDescriptor(groupFD, as: Self.leaderGroupFD))
            }
            let child = try ChildProcess.spawn(path: config.executable, arguments: args, inherit: inherit)
            let pid = child.pid
            let pidfd = child.pidfd.fd.rawValue
            let handle = ProcessHandle(child)
            let rxNotifier = config.ringWake == .eventfd ? RingNotifier(EventFD(adopting: try eventFD.fd.duplicate())) : nil
            let channel = try RingChannel(sending: requests, receiving: responses, peer: PeerMonitor(pid: pid),
                                          rxNotifier: rxNotifier)
            // Announce that we sleep, so the worker's first commit (its ready record) wakes the loop (the
            // eventfd; with futex wake-ups the loop arms its wait on this ring before it next sleeps).
            _ = try channel.rx.prepareToSleep()
            try Self.check(sy_epoll_add(epoll.rawValue, pidfd, Self.tagPid | UInt64(i)), "epoll_ctl(pidfd)")
            w.process = handle
            w.spawnedAt = Self.now()
            w.channel = channel
            channelsChanged()
            w.control = control
            w.ready = false
            w.lastBeat = 0
            w.lastBeatChange = Self.now()
            w.lastIdleWaits = 0
            w.lastSharedWaits = 0
            followJudge.reset(slot: i)
            config.log(.info, "\(shardName(w, rank: 0)): started pid \(pid)")
            if groupFD >= 0 {
                do {
                    try spawnFollowers(i, groupFD: groupFD)
                } catch {
                    try? handle.child.send(signal: SIGKILL)
                    workerDied(i, reason: "a shard could not start: \(error)")
                }
            }
        } catch {
            config.log(.warn, "\(unitName(w)): could not start: \(error)")
            stopFollowers(w)
            scheduleRespawn(i)
        }
    }

    func scheduleRespawn(_ i: Int) {
        guard !shuttingDown else { return }
        let w = slots[i]
        let backoff = min(config.restartBackoffMax, config.restartBackoffMin * Double(1 << min(w.consecutiveFailures, 16)))
        w.consecutiveFailures += 1
        w.respawnAt = Self.now() + UInt64(backoff * 1e9)
        config.log(.info, "\(unitName(w)): restarting in \(backoff) s")
    }

    /// The worker is gone (exited, killed, or declared hung and killed): clean up and recover its requests.
    func workerDied(_ i: Int, reason: String) {
        let w = slots[i]
        guard let handle = w.process else { return }
        _ = sy_epoll_del(epoll.rawValue, handle.child.pidfd.fd.rawValue)
        // A group goes down as a unit: SIGKILL the leader and every other shard still running first.
        if !w.followers.isEmpty {
            if !shuttingDown { try? handle.child.send(signal: SIGKILL) }
            stopFollowers(w)
        }
        let status = (try? handle.child.wait(timeoutMs: 1000)) ?? nil
        w.process = nil                       // kills and reaps if it was still running
        w.channel?.close()
        w.channel = nil
        channelsChanged()
        w.control = nil
        w.ready = false
        router.setHealth(.dead, slot: w.routerSlot)
        if w.readySince > 0 && Self.now() - w.readySince > 30_000_000_000 { w.consecutiveFailures = 0 }
        w.readySince = 0
        if !shuttingDown {
            w.restarts += 1
            totalRestarts += 1
        }
        config.log(shuttingDown ? .info : .warn, "\(shardName(w, rank: 0)): \(reason)\(status.map { " (\($0))" } ?? "")")
        for id in inFlight.ids(where: { $0.worker == i }) {
            guard var f = inFlight[id] else { continue }
            if let t = f.ticket { router.release(t) }
            f.ticket = nil
            if f.cancelled {
                inFlight[id] = nil
            } else if !f.started, let req = f.request, f.retries < 2, !shuttingDown {
                // Not started: route it again (the dead worker no longer ranks).
                inFlight[id] = nil
                if case .admitted(let to) = route(req, retries: f.retries + 1) {
                    pending.append(.rerouted(requestID: id, workerID: to))
                } else {
                    pending.append(.error(requestID: id, message: "\(unitName(w)) died and no other worker could take the request"))
                }
            } else {
                inFlight[id] = nil
                pending.append(.error(requestID: id, message: "\(unitName(w)) died while generating"))
            }
        }
        if !shuttingDown { scheduleRespawn(i) }
    }

    func supervise() {
        let now = Self.now()
        for (i, w) in slots.enumerated() {
            if w.process == nil {
                if w.respawnAt != 0 && now >= w.respawnAt { spawn(i) }
                continue
            }
            if !w.ready {
                if w.spawnedAt > 0 && Double(now - w.spawnedAt) / 1e9 > config.startupTimeout {
                    config.log(.warn, "\(unitName(w)): not ready \(config.startupTimeout) s after start; killing \(w.followers.isEmpty ? "it" : "the group")")
                    try? w.process?.child.send(signal: SIGKILL)
                    workerDied(i, reason: "not ready within \(config.startupTimeout) s")
                }
                continue
            }
            guard let control = w.control else { continue }
            let beat = control.load(.heartbeat)
            if beat != w.lastBeat {
                w.lastBeat = beat
                w.lastBeatChange = now
            } else if Double(now - w.lastBeatChange) / 1e9 > config.heartbeatTimeout {
                config.log(.warn, "\(shardName(w, rank: 0)): heartbeat stopped for \(config.heartbeatTimeout) s; killing \(w.followers.isEmpty ? "it" : "the group")")
                try? w.process?.child.send(signal: SIGKILL)
                workerDied(i, reason: "hung (heartbeat timeout)")
            }
        }
        if frontCPU != nil && !shuttingDown { followClients(now: now) }
    }

    /// `--front-placement follow`: from now on, the calling thread (the event loop's, pinned to `cpu` alone)
    /// trades CPUs with a worker whose CPU the front's clients run on (FollowClients.swift says why).
    public func followClients(from cpu: Int) {
        frontCPU = cpu
        following = true
    }

    /// Feeds every worker's idle-wait counters (deltas since the last tick) to the FollowClientsJudge and
    /// trades CPUs with the worker it names. Runs on the loop thread (the thread whose affinity it changes).
    func followClients(now: UInt64) {
        guard let front = frontCPU else { return }
        let switches = sy_thread_involuntary_switches()
        guard switches >= 0 else { return }
        defer { lastFrontSwitches = switches; lastFollowTick = now }
        guard lastFrontSwitches >= 0 else { return }
        let frontNode = NUMA.isAvailable ? try? NUMA.node(ofCPU: front) : nil
        var samples: [FollowClientsJudge.Sample] = []
        samples.reserveCapacity(slots.count)
        for w in slots {
            guard let c = w.control else { samples.append(.init(waits: 0, sharedWaits: 0, eligible: false)); continue }
            // Shared first: the worker stores waits before shared, so this order keeps shared ≤ waits.
            let shared = c.load(.idleWaitsShared), waits = c.load(.idleWaits)
            defer { w.lastIdleWaits = waits; w.lastSharedWaits = shared }
            var eligible = w.ready && w.followers.isEmpty && w.spec.cpus.count == 1
                && waits >= w.lastIdleWaits && shared >= w.lastSharedWaits
            if eligible, let frontNode, let cpu = w.spec.cpus.first, (try? NUMA.node(ofCPU: cpu)) != frontNode {
                eligible = false   // its memory is bound to another node
            }
            samples.append(eligible ? .init(waits: waits - w.lastIdleWaits, sharedWaits: shared - w.lastSharedWaits)
                                    : .init(waits: 0, sharedWaits: 0, eligible: false))
        }
        let elapsed = now &- lastFollowTick
        guard let i = followJudge.observe(now: now, elapsed: elapsed,
                                          frontSwitches: UInt64(max(0, switches - lastFrontSwitches)),
                                          workers: samples) else { return }
        if tradeCPUs(withWorker: i, sample: samples[i], elapsed: elapsed) {
            followJudge.didSwap(slot: i, now: now)
        } else {
            followJudge.reset(slot: i)
        }
    }

    /// Moves every thread of worker `i` to the front's CPU and the loop thread to the worker's; the worker
    /// keeps the new CPU across respawns. False, with everything moved back, when a move fails (a thread
    /// that exits meanwhile does not count); when the loop thread cannot move, following stops.
    func tradeCPUs(withWorker i: Int, sample: FollowClientsJudge.Sample, elapsed: UInt64) -> Bool {
        let w = slots[i]
        guard let from = frontCPU, let pid = w.process?.child.pid, let to = w.spec.cpus.first else { return false }
        // Threads started while we move them: scan again until a scan finds none that is not moved yet.
        var moved = Set<Int32>()
        var failure: SysError?
        scan: while true {
            let fresh = Self.threads(of: pid).filter { !moved.contains($0) }
            if fresh.isEmpty { break }
            for tid in fresh {
                do {
                    try CPUAffinity.set([from], pid: tid)
                    moved.insert(tid)
                } catch {
                    if error.errno == ESRCH { moved.insert(tid); continue }   // exited meanwhile
                    failure = error
                    break scan
                }
            }
        }
        func moveBack() { for tid in moved { try? CPUAffinity.set([to], pid: tid) } }
        if let failure {
            moveBack()
            config.log(.warn, "front: cannot move \(unitName(w))'s threads to cpu \(from): \(failure); placement stays")
            return false
        }
        guard !moved.isEmpty else { return false }   // the worker is gone: its death is handled elsewhere
        do {
            try CPUAffinity.set([to])
        } catch {
            moveBack()
            config.log(.warn, "front: cannot move the event loop to cpu \(to): \(error); it stops following its clients")
            frontCPU = nil
            return false
        }
        frontCPU = to
        w.spec.cpus = [from]
        if let k = w.spec.arguments.firstIndex(of: "--cpus"), k + 1 < w.spec.arguments.count {
            w.spec.arguments[k + 1] = "\(from)"
        }
        cpuSwaps += 1
        config.log(.info, "front: clients share \(unitName(w))'s cpu \(to) (\(sample.sharedWaits) of \(sample.waits) idle waits in the last \(elapsed / 1_000_000) ms gave it away); traded cpus: front → \(to), \(unitName(w)) → \(from)")
        return true
    }

    /// The task ids of process `pid` (/proc/PID/task).
    static func threads(of pid: Int32) -> [Int32] {
        guard let dir = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(dir) }
        var tids: [Int32] = []
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if let t = Int32(name) { tids.append(t) }
        }
        return tids
    }

    // MARK: Routing and submission

    func submitRecord(for r: APIRequest) -> SubmitRecord {
        Self.submitRecord(for: r, defaults: config.defaultSampling, defaultMaxTokens: config.defaultMaxTokens)
    }

    /// The worker's record for `r`: its sampling fields, the defaults for those it left out.
    static func submitRecord(for r: APIRequest, defaults: SamplingDefaults, defaultMaxTokens: Int) -> SubmitRecord {
        var s = WireSampling()
        s.temperature = Float(r.sampling.temperature ?? defaults.temperature)
        s.topP = Float(r.sampling.topP ?? defaults.topP)
        s.minP = Float(r.sampling.minP ?? defaults.minP)
        s.topK = Int32(clamping: r.sampling.topK ?? defaults.topK)
        s.maxTokens = UInt32(clamping: r.sampling.maxTokens ?? defaultMaxTokens)
        s.seed = r.sampling.seed.map { UInt64(bitPattern: $0) }
        s.stop = r.sampling.stop
        s.logprobs = r.sampling.logprobs.map { UInt8(clamping: min($0, WireLimits.maxTopLogprobs)) }
        s.presencePenalty = Float(r.sampling.presencePenalty ?? 0)
        s.frequencyPenalty = Float(r.sampling.frequencyPenalty ?? 0)
        s.logitBias = r.sampling.logitBias.map { WireLogitBias(token: $0.token, bias: Float($0.bias)) }
        s.jsonObject = r.sampling.jsonObject
        s.jsonSchema = r.sampling.jsonSchema
        switch r.kind {
        case .chatCompletions:
            return SubmitRecord(requestID: r.id, kind: .chat, sessionKey: r.sessionKey ?? "", sampling: s,
                                messages: r.messages.map { WireMessage(role: $0.role.wireRole, content: $0.content) })
        default:
            return SubmitRecord(requestID: r.id, kind: .completion, sessionKey: r.sessionKey ?? "", sampling: s,
                                prompt: r.prompt, promptTokens: r.promptTokens ?? [])
        }
    }

    static func routingPeer(_ p: PeerIdentity) -> Routing.PeerIdentity {
        switch p {
        case .unix(let uid, _): return .unix(uid: uid)
        case .tcp(let address):
            var a = in_addr()
            if inet_pton(AF_INET, address, &a) == 1 { return .ipv4(UInt32(bigEndian: a.s_addr)) }
            var a6 = in6_addr()
            if inet_pton(AF_INET6, address, &a6) == 1 {
                let bytes = withUnsafeBytes(of: a6) { Array($0) }
                let hi = bytes[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                let lo = bytes[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                return .ipv6(high: hi, low: lo)
            }
            return .unknown
        case .unknown: return .unknown
        }
    }

    /// Admits through the router and writes the record into the chosen worker's ring (never blocks).
    func route(_ r: APIRequest, retries: Int = 0) -> Admission {
        switch router.admit(session: r.sessionKey, peer: Self.routingPeer(r.peer)) {
        case .unavailable:
            return .notReady(reason: "no worker is ready")
        case .overloaded:
            return .overloaded(retryAfterSeconds: 1)
        case .admitted(let ticket):
            let i = slotIndex(router: ticket.target)
            let w = slots[i]
            switch send(.submit(submitRecord(for: r)), to: w) {
            case .sent: break
            case .full:
                router.release(ticket)
                return .overloaded(retryAfterSeconds: 1)
            case .tooLarge(let message):
                router.release(ticket)
                return .tooLarge(message: message)
            }
            inFlight[r.id] = InFlight(worker: i, ticket: ticket, request: r, retries: retries)
            return .admitted(workerID: w.spec.id)
        }
    }

    func slotIndex(router s: Int) -> Int { slots.firstIndex { $0.routerSlot == s } ?? 0 }

    enum SendResult: Equatable { case sent, full, tooLarge(String) }

    /// Encodes and publishes one record to the worker without waiting. `.full`: the ring has no room now (or the worker is gone), a retry may succeed. `.tooLarge`: the record
    /// breaks a wire limit or exceeds what the ring takes at any write position (half its capacity: a larger
    /// record fits only when the write position happens to leave room for it), so it never will.
    func send(_ record: Record, to w: WorkerSlot) -> SendResult {
        guard let channel = w.channel else { return .full }
        writer.reset()
        do { try record.encode(into: &writer) } catch { return .tooLarge("the request exceeds a wire limit: \(error)") }
        let limit = channel.tx.maxPayloadAnyOffset
        if writer.count > limit {
            return .tooLarge("the request is \(writer.count) bytes as sent to a worker, over the \(limit)-byte limit of its request ring")
        }
        let ok: Bool = writer.withBytes { src in
            do throws(RingError) {
                guard let dst = try channel.tx.tryReserve(type: UInt16(record.type.rawValue), length: src.count) else { return false }
                if let d = dst.baseAddress, let s = src.baseAddress { d.copyMemory(from: s, byteCount: src.count) }
                if case .submit(let sub) = record { sy_trace_mark(sub.requestID, SY_TP_FRONT_SUBMITTED) }
                channel.tx.commit()   // release-publishes and wakes the worker if it sleeps
                return true
            } catch { return false }
        }
        return ok ? .sent : .full
    }

    /// A worker for a request that is not a generation (tokenize / detokenize): any ready one.
    func anyReadyWorker() -> Int? {
        slots.indices.first { slots[$0].ready }
    }

    // MARK: FrontBackend

    public var wakeFD: Int32 { epoll.rawValue }

    public func submit(_ request: APIRequest) -> Admission { route(request) }

    public func tokenize(requestID: UInt64, content: String, addSpecial: Bool, parseSpecial: Bool) -> Admission {
        sendSide(requestID, .tokenize(TokenizeRecord(requestID: requestID, addSpecial: addSpecial,
                                                     parseSpecial: parseSpecial, content: content)))
    }

    public func detokenize(requestID: UInt64, tokens: [Int32]) -> Admission {
        sendSide(requestID, .detokenize(TokensRecord(requestID: requestID, tokens: tokens)))
    }

    func sendSide(_ id: UInt64, _ record: Record) -> Admission {
        guard let i = anyReadyWorker() else { return .notReady(reason: "no worker is ready") }
        switch send(record, to: slots[i]) {
        case .sent: break
        case .full: return .overloaded(retryAfterSeconds: 1)
        case .tooLarge(let message): return .tooLarge(message: message)
        }
        inFlight[id] = InFlight(worker: i, ticket: nil, started: true)
        return .admitted(workerID: slots[i].spec.id)
    }

    public func cancel(requestID: UInt64) {
        guard var f = inFlight[requestID], !f.cancelled else { return }
        f.cancelled = true
        inFlight[requestID] = f
        // The worker answers with a done(cancelled) record, which releases the ticket.
        if send(.cancel(CancelRecord(requestID: requestID)), to: slots[f.worker]) != .sent {
            // Ring full or worker gone: forget it here; the worker's done record is ignored when it comes.
            if let t = f.ticket { router.release(t) }
            inFlight[requestID] = nil
        }
    }

    public func drain(_ deliver: (BackendEvent) -> Void) {
        let fd = epoll.rawValue
        let n = epollTags.withUnsafeMutableBufferPointer { sy_epoll_ready(fd, $0.baseAddress, Int32($0.count), 0) }
        var timer = false
        var dead: [(slot: Int, rank: Int)] = []
        for k in 0..<max(0, Int(n)) {
            let tag = epollTags[k]
            switch tag & 0xFFFF_FFFF_0000_0000 {
            case Self.tagEvent: _ = try? eventFD.consume()
            case Self.tagTimer:
                var ticks: UInt64 = 0
                _ = read(timerFD.rawValue, &ticks, 8)
                timer = true
            case Self.tagPid: dead.append((Int(tag & 0xFFFF), Int((tag >> 16) & 0xFFFF)))
            default: break
            }
        }
        // Responses first (a dying worker's last records are still in its ring), then deaths, then timers.
        drainRings()
        for (i, rank) in dead where slots.indices.contains(i) {
            drainRing(i)
            shardDied(i, rank: rank)
        }
        if timer { supervise() }
        deliverPending(deliver)
    }

    /// Hands `pending` to `deliver`. Swaps buffers instead of copying: events raised while delivering
    /// (re-entrant calls) land in the now-empty `pending` and are delivered by the next drain or poll.
    func deliverPending(_ deliver: (BackendEvent) -> Void) {
        guard !pending.isEmpty else { return }
        var events = spareEvents
        spareEvents = []
        swap(&events, &pending)
        for e in events { deliver(e) }
        events.removeAllKeepingStorage()
        spareEvents = events
    }

    func drainRings() {
        for i in slots.indices { drainRing(i) }
    }

    /// Reads every record of worker i's response ring. With `announceSleep` it then re-announces sleep
    /// (looping if data arrived meanwhile), so the next record the worker commits writes the eventfd;
    /// without, the sleeping flag stays clear (the loop is polling: see `pollEvents`).
    func drainRing(_ i: Int, announceSleep: Bool = true) {
        let w = slots[i]
        var corrupt: String?
        while let channel = w.channel {
            channel.rx.finishSleep()
            do {
                _ = try channel.rx.drain { type, payload in
                    do {
                        handle(try Record.decode(type: UInt32(type), payload: payload), from: i)
                    } catch {
                        corrupt = "\(error)"
                    }
                }
                if corrupt != nil || !announceSleep { break }
                if try channel.rx.prepareToSleep() != nil { break }
            } catch {
                corrupt = "\(error)"
                break
            }
        }
        if let corrupt, w.process != nil {
            config.log(.warn, "\(unitName(w)): bad response ring (\(corrupt)); killing it")
            try? w.process?.child.send(signal: SIGKILL)
            workerDied(i, reason: "killed after a corrupt record")
        }
    }

    func handle(_ record: Record, from i: Int) {
        let w = slots[i]
        switch record {
        case .ready(let r):
            w.ready = true
            w.readyInfo = r
            w.readySince = Self.now()
            w.lastBeatChange = w.readySince
            router.setHealth(.healthy, slot: w.routerSlot)
            config.log(.info, "\(unitName(w)): ready (pid \(r.pid), node \(r.numaNode), cpus \(r.cpus.map(String.init).joined(separator: ",")), model \(r.modelName), context \(r.contextLength))\(w.followers.isEmpty ? "" : "; shards \(w.spec.tpSize), pids \(groupPIDs(i).map { $0.map(String.init) ?? "-" }.joined(separator: ","))")")
        case .delta(let d):
            sy_trace_mark_first(d.requestID, SY_TP_FRONT_SEEN)
            // Updated in place through the index: no copy of the entry (and its kept request) out and back.
            let live = inFlight.update(d.requestID) { f -> Bool in
                if f.cancelled { return false }
                if !f.started {
                    f.started = true
                    f.request = nil
                }
                return true
            }
            guard live == true else { return }
            pending.append(.delta(requestID: d.requestID, text: d.text))
        case .logprobs(let l):
            guard let f = inFlight[l.requestID], !f.cancelled, !f.errored else { return }
            pending.append(.logprobs(requestID: l.requestID, steps: l.entries.map {
                LogprobStep(token: LogprobToken(bytes: $0.sampled.bytes, logprob: $0.sampled.logprob),
                            top: $0.top.map { LogprobToken(bytes: $0.bytes, logprob: $0.logprob) })
            }))
        case .done(let d):
            sy_trace_mark_first(d.requestID, SY_TP_FRONT_SEEN)
            sy_trace_mark(d.requestID, SY_TP_FRONT_DRAINED)
            guard let f = inFlight.removeValue(forKey: d.requestID) else { return }
            if let t = f.ticket { router.release(t) }
            guard !f.errored, d.finish != .error else { return }
            // A cancelled request's final event reaches no client (the front dropped it); it still carries
            // the tokens generated before the cancel, for the tokens counter.
            let reason: FinishReason = f.cancelled || d.finish == .cancelled ? .cancelled : (d.finish == .length ? .length : .stop)
            pending.append(.final(requestID: d.requestID, finishReason: reason,
                                  usage: Usage(promptTokens: Int(d.promptTokens), completionTokens: Int(d.completionTokens),
                                               cachedTokens: Int(d.cachedTokens))))
        case .error(let e):
            guard var f = inFlight[e.requestID] else { return }
            if !f.cancelled && !f.errored {
                // A refusal keeps its status even for a request counted as started at once (tokenize and
                // detokenize: a reply too large is the client's 400); a running request's failure is .error.
                if f.started && !e.code.isRefusal {
                    pending.append(.error(requestID: e.requestID, message: e.message))
                } else {
                    let (status, code): (Int, String) = switch e.code {
                    case .invalidRequest: (400, "invalid_request")
                    case .contextLengthExceeded: (400, "context_length_exceeded")
                    case .overloaded: (503, "worker_error")
                    case .internalError: (500, "worker_error")
                    }
                    pending.append(.rejected(requestID: e.requestID, status: status, code: code, message: e.message))
                }
            }
            f.errored = true
            inFlight[e.requestID] = f
            // A refusal before the request started ends it now (no done record follows an error of a
            // request the worker never admitted).
            if !f.started || e.code.isRefusal {
                inFlight[e.requestID] = nil
                if let t = f.ticket { router.release(t) }
            }
        case .tokens(let t):
            guard inFlight.removeValue(forKey: t.requestID) != nil else { return }
            pending.append(.tokens(requestID: t.requestID, tokens: t.tokens))
        case .text(let t):
            guard inFlight.removeValue(forKey: t.requestID) != nil else { return }
            pending.append(.text(requestID: t.requestID, content: t.text))
        case .submit, .cancel, .tokenize, .detokenize:
            config.log(.warn, "worker \(w.spec.id): sent a request-side record; ignored")
        }
    }

    public var modelIDs: [String] { [config.modelID] }

    public func health() -> BackendHealth {
        BackendHealth(workersTotal: slots.count, workersReady: slots.filter(\.ready).count)
    }

    public func collectMetrics(into m: MetricsRegistry) {
        m.set(MetricsRegistry.workerRestarts, help: "Worker processes restarted", Double(totalRestarts))
        if following {
            m.set("switchyard_front_cpu_swaps_total", help: "Times the front traded CPUs with a worker whose CPU its clients shared",
                  Double(cpuSwaps))
        }
        collectGroupMetrics(into: m)
        for w in slots {
            let labels = [("worker", "\(w.spec.id)"), ("node", w.spec.numaNode.map(String.init) ?? "none"),
                          ("cpus", w.spec.cpus.map(String.init).joined(separator: ","))]
            let id = [("worker", "\(w.spec.id)")]
            m.set(MetricsRegistry.workerReady, help: "1 when the worker is ready", labels: labels, w.ready ? 1 : 0)
            m.set(MetricsRegistry.workerInFlight, help: "Requests in flight per worker", labels: id,
                  Double(router.inFlight(slot: w.routerSlot)))
            if let c = w.control {
                m.set(MetricsRegistry.workerQueueDepth, help: "Requests waiting in the worker's scheduler", labels: id,
                      Double(c.load(.waiting)))
                m.set("switchyard_worker_running", help: "Sequences in the worker's batch", labels: id, Double(c.load(.running)))
                m.set("switchyard_worker_cached_sessions", help: "Idle sessions holding KV cache", labels: id,
                      Double(c.load(.cachedSessions)))
                m.set("switchyard_worker_cached_kv_bytes", help: "KV cache bytes held by idle sessions", labels: id,
                      Double(c.load(.cachedBytes)))
            }
            if let ch = w.channel {
                let (h, t) = ch.tx.ring.positions
                m.set(MetricsRegistry.ringOccupancy, help: "Bytes in use in a ring", labels: id + [("ring", "request")],
                      Double(h &- t))
                let (h2, t2) = ch.rx.ring.positions
                m.set(MetricsRegistry.ringOccupancy, help: "Bytes in use in a ring", labels: id + [("ring", "response")],
                      Double(h2 &- t2))
            }
        }
    }

    /// Graceful stop: close every request ring (workers exit 0 once drained), wait up to `grace` seconds,
    /// then SIGKILL what is left. Call after the server's run() returned.
    public func shutdown(grace: Double = 5) {
        shuttingDown = true
        for w in slots { w.channel?.tx.close() }
        let deadline = Self.now() + UInt64(grace * 1e9)
        for w in slots {
            guard let h = w.process else { continue }
            let left = deadline > Self.now() ? Int32((deadline - Self.now()) / 1_000_000) : 0
            if (try? h.child.wait(timeoutMs: max(1, left))) ?? nil == nil {
                config.log(.warn, "\(shardName(w, rank: 0)): did not stop in time; killing it")
            }
            w.process = nil  // kills if still running, reaps
            w.channel = nil
        }
        channelsChanged()
        // Followers stop once their leader has shut the group down; same deadline.
        for w in slots {
            for f in w.followers {
                guard let h = f.process else { continue }
                let left = deadline > Self.now() ? Int32((deadline - Self.now()) / 1_000_000) : 0
                if (try? h.child.wait(timeoutMs: max(1, left))) ?? nil == nil {
                    config.log(.warn, "\(shardName(w, rank: f.spec.rank)): did not stop in time; killing it")
                }
                f.process = nil
            }
        }
    }

    /// Worker process ids (tests and logs).
    public var workerPIDs: [Int32?] { slots.map { $0.process?.child.pid } }
}

// MARK: Polling (the front spins on the response rings while requests are in flight)

extension WorkerPool: PollableBackend {
    public var hasRequestsInFlight: Bool { !inFlight.isEmpty }

    public func stopAnnouncingSleep() {
        for w in slots { w.channel?.rx.finishSleep() }
    }

    /// Refreshes the consumers `pollEvents` checks (after a channel was set or dropped).
    func channelsChanged() {
        pollOwners = slots.compactMap { $0.channel?.rx }
        pollRings = pollOwners.map { Unmanaged.passUnretained($0) }
    }

    public func pollEvents(_ deliver: (BackendEvent) -> Void) -> Bool {
        // The common case, nothing there: one acquire load of each ring's head, no system call and no
        // reference counting (`pollOwners` keeps the consumers alive).
        let ready = pollRings.withUnsafeBufferPointer { rings -> Bool in
            for u in rings {
                // A corrupt head counts as ready: drainRing reports it and kills the worker.
                if u._withUnsafeGuaranteedRef({ (try? $0.hasData()) ?? true }) { return true }
            }
            return false
        }
        guard ready else { return false }
        for i in slots.indices { drainRing(i, announceSleep: false) }
        let any = !pending.isEmpty
        deliverPending(deliver)
        return any
    }

    /// Eventfd wake-ups: the announcement is all (the worker's next commit writes the eventfd).
    public func prepareToBlock() -> Bool { prepareToBlock(futex: { _ in }) }

    public var futexWake: Bool { config.ringWake == .futex }

    public func prepareToBlock(futex arm: (FutexWait) -> Void) -> Bool {
        for (i, w) in slots.enumerated() {
            guard let ch = w.channel else { continue }
            // nil: a record arrived after the last poll (or the head is corrupt: pollEvents reports it).
            guard let seq = try? ch.rx.prepareToSleep() else { return false }
            arm(FutexWait(key: i, generation: w.ringGeneration, word: ch.rx.wakeWord, value: seq))
        }
        return true
    }
}
