// The worker process: `switchyard worker …`, spawned by the front with its rings, its control block and
// the front's eventfd inherited as file descriptors. It talks to the front only through those.
import CSwitchyardSys
import Engine
import Glibc
import ShmRing
import SysKit
import Wire

public enum EngineKind: String, Sendable, CaseIterable {
    case model
    case echo
}

public struct WorkerOptions: Sendable {
    public var id = 0
    /// Inherited descriptors: request ring (front → worker), response ring (worker → front), the front's
    /// eventfd (the response ring wakes the front's io_uring loop through it), the control block.
    public var requestFD: Int32 = 3
    public var responseFD: Int32 = 4
    public var notifyFD: Int32 = 5
    public var controlFD: Int32 = 6
    public var parentPID: Int32 = 0
    public var engine: EngineKind = .model
    public var modelPath: String?
    public var threads = 1
    public var cpus: [Int] = []
    public var node: Int?
    public var sessionCacheMB = 256
    public var maxQueue = 64
    public var maxRunning = 16
    public var contextLength = 2048
    public var maxBatchTokens = 512
    /// How long an idle worker spins for the next request before it sleeps on the ring.
    public var idleSpinNanoseconds: UInt64 = 50_000
    /// How long that spin goes before it starts to sched_yield between checks (0: yields from the start; at
    /// least `idleSpinNanoseconds`: never yields). See the idle wait in `run`.
    public var idleYieldAfterNanoseconds: UInt64 = 0
    /// This process's shard of a tensor-parallel group (`.whole` for --tp 1). A follower (rank ≥ 1) has no
    /// rings and no control block: only the group memory (`tp.groupFD`).
    public var tp = ShardRole.whole
    public init() {}
}

public enum WorkerError: Error, CustomStringConvertible {
    case setup(String)
    public var description: String {
        switch self {
        case .setup(let s): "worker setup: \(s)"
        }
    }
}

public enum WorkerProcess {
    /// `<model dir>/.switchyard-cache/node<N>` (created if needed), or nil when it can't be created.
    static func repackDirectory(modelPath: String, node: Int?) -> String? {
        let dir = modelPath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let base = (dir.isEmpty ? "." : dir) + "/.switchyard-cache"
        let path = base + "/node\(node ?? 0)"
        for d in [base, path] {
            if mkdir(d, 0o755) != 0 && errno != EEXIST { return nil }
        }
        return access(path, W_OK) == 0 ? path : nil
    }

    /// Runs the worker until the front closes the request ring (exit status 0) or dies (1).
    public static func run(_ o: WorkerOptions, log: @escaping (String) -> Void) throws -> Int32 {
        // Die with the front: a worker is never left running on its own.
        _ = sy_set_parent_death_signal(SIGKILL)
        if o.parentPID > 0 && getppid() != o.parentPID { return 1 }
        try o.tp.validate()

        // Placement first, so every page the worker touches from here on is allocated on its node.
        if !o.cpus.isEmpty { try CPUAffinity.set(o.cpus) }
        // Memory binding needs a node the kernel knows. An injected topology (SWITCHYARD_NUMA_TOPOLOGY) may
        // name nodes this machine lacks: then only the CPUs are pinned, instead of failing on every respawn.
        if let node = o.node, NUMA.isAvailable {
            if node <= NUMA.maxNode {
                try NUMA.setMemoryBinding(node: node)
            } else {
                log("worker \(o.id): node \(node) does not exist here (highest is \(NUMA.maxNode)); memory not bound")
            }
        }

        if o.tp.isGrouped && !o.tp.isLeader { return try runFollower(o, log: log) }

        let control = try ControlBlock(inheritedDescriptor: o.controlFD)
        control.store(.numaNode, o.node.map { UInt64($0) } ?? .max)
        let peer = o.parentPID > 0 ? try PeerMonitor.parent(expected: o.parentPID) : nil
        let notifier = RingNotifier(EventFD(adopting: FileDescriptor(adopting: o.notifyFD)))
        // Idle wait: spin (--idle-spin-us, 50 µs by default) for the next request (a keep-alive client's next
        // request usually comes sooner, and then the front need not wake us), and sched_yield between spin checks
        // from --idle-yield-after-us on (0 by default: from the start). The thread we wait for (the front, or its
        // client) may be queued on our very CPU (always so when we are pinned and cores are few), and a plain
        // spin holds it off until the spin ends. With nothing else runnable, sched_yield returns at once.
        // Measured on a 2-core box, pinned worker: front + worker added p50 ~75 µs → ~18 µs. A plain spin helps
        // one case, a client started on our CPU: it leaves the client waiting, so the load balancer moves it
        // next to the front (2-vCPU VM, 200 µs plain: p50 11-14 µs in 24 of 24 runs against 12-28 µs
        // yielding), but every request of a client that stays costs up to the whole spin (bench p99 ~209 µs).
        let idlePolicy = WaitPolicy(spinNanoseconds: o.idleSpinNanoseconds, sleeps: true,
                                    yieldAfterNanoseconds: min(o.idleYieldAfterNanoseconds, o.idleSpinNanoseconds))
        let channel = try RingChannel(sending: ShmRing(inheritedDescriptor: o.responseFD),
                                      receiving: ShmRing(inheritedDescriptor: o.requestFD),
                                      peer: peer, policy: idlePolicy, txNotifier: notifier)

        // The engine: load, pin its threads (one core each), warm up.
        let runner: ModelRunner
        let text: TextEngine
        // Tells the group's followers that the leader stopped (set on every exit path of a group leader).
        var stopGroup: () -> Void = {}
        defer { stopGroup() }
        // Why the group can no longer compute (a shard died, the group aborted), or nil: the leader then
        // exits 1 so that the front restarts the whole group.
        var groupFailure: () -> String? = { nil }
        switch o.engine {
        case .echo:
            runner = EchoRunner(slots: o.maxRunning + 256, contextLength: 1 << 16, maxBatchTokens: 1 << 16)
            text = EchoText()
            if o.tp.isGrouped {
                // The echo stand-in for a TP group: the leader computes alone, but the group's processes
                // start, attach and stop like a model group's.
                let group = try EchoGroupMemory.create(fd: o.tp.groupFD, size: o.tp.size)
                stopGroup = { group.shutdown() }
                try group.waitForFollowers(timeoutSeconds: followerAttachTimeout, parentPID: o.parentPID)
                log("worker \(o.id): tensor-parallel group of \(o.tp.size) (echo stand-in) attached")
            }
        case .model:
            guard let path = o.modelPath else { throw WorkerError.setup("--model is required for --engine model") }
            // Repacked weights go to a file shared by every worker on this NUMA node (mapped read-only,
            // MAP_SHARED), so N workers hold one copy; the file survives restarts. Private memory if the
            // cache directory can't be used.
            let cacheDir = Self.repackDirectory(modelPath: path, node: o.node)
            // A group's memory is set up from the GGUF header before the (possibly slow) weight load, and the
            // followers attach before theirs: the attach time-outs then measure process start-up, not
            // repacking, so a slow load cannot make the group look dead and restart it in a loop.
            let group: TPGroup? = o.tp.isGrouped
                ? try TPGroup.create(fd: o.tp.groupFD, size: o.tp.size, config: ModelConfig(gguf: GGUFFile(path: path)),
                                     maxBatchTokens: o.maxBatchTokens)
                : nil
            let model = try loadModel(path: path, cacheDirectory: cacheDir, shard: o.tp, log: { log("worker \(o.id): \($0)") })
            let tokenizerConfig = try TokenizerConfig(gguf: model.gguf)
            let tokenizer = try Tokenizer(config: tokenizerConfig)
            let template = try ChatTemplate(template: tokenizerConfig.chatTemplate)
            let adapter: ModelRunner
            if let group {
                // Every shard of a group computes the same slot count (from the whole model's per-token KV
                // size, whatever share of it the shard holds), so slot numbers mean the same on all shards.
                let slots = o.maxRunning + max(8, (o.sessionCacheMB << 20) / max(1, wholeModelKVBytesPerToken(model.config) * 256))
                let leader = try makeTensorParallelLeader(o, group: group, model: model, slots: min(slots, 1024), log: log)
                adapter = leader.runner
                stopGroup = leader.shutdown
                groupFailure = leader.failure
            } else {
                let engine = try Engine(model: model, threads: max(1, o.threads), maxBatchTokens: o.maxBatchTokens)
                try pinEngineThreads(engine, cpus: o.cpus)
                let slots = o.maxRunning + max(8, (o.sessionCacheMB << 20) / max(1, engine.kvBytesPerToken * 256))
                adapter = ModelRunnerAdapter(engine: engine, contextLength: o.contextLength, slots: min(slots, 1024))
            }
            // Warm-up: one token through every layer, so the first request doesn't pay for page faults.
            // (In a group this is the first step every shard runs: ready then means the group is up.)
            if let s = adapter.acquireSequence() {
                try adapter.forward([StepItem(sequence: s, position: 0, tokens: [tokenizer.bosID ?? 0][...])]) { _, _ in }
                adapter.releaseSequence(s)
            }
            let name = model.gguf.metadata["general.name"]?.string ?? "model"
            runner = adapter
            text = ModelTextEngine(tokenizer: tokenizer, template: template, modelName: name)
        }

        // SWITCHYARD_TRACE=DIR (inherited from the front): request-path timestamps, written to
        // DIR/worker-<id>.trace when the front closes the ring (sy_trace.h).
        let traceDir = getenv("SWITCHYARD_TRACE").map { String(cString: $0) }
        if traceDir != nil { _ = sy_trace_enable() }
        var lastTracedID: UInt64 = 0
        func dumpTrace() {
            if let traceDir, sy_trace_enabled() != 0 {
                let rc = sy_trace_dump(traceDir + "/worker-\(o.id).trace", lastTracedID)
                if rc != 0 { log("worker \(o.id): SWITCHYARD_TRACE: cannot write the trace (errno \(-rc))") }
            }
        }

        var writer = WireWriter(capacity: 1 << 12)
        var sendError: RingError?
        let publish: (Record) -> Void = { record in
            if traceDir != nil, case .done(let d) = record { sy_trace_mark(d.requestID, SY_TP_WORKER_DONE) }
            writer.reset()
            var type = record.type   // the type of what `writer` holds (an error record replaces a bad one)
            var tooLarge: String? = nil
            do {
                try record.encode(into: &writer)
                if writer.count > channel.tx.maxPayloadAnyOffset {
                    tooLarge = "\(writer.count) bytes, over the \(channel.tx.maxPayloadAnyOffset)-byte limit of the response ring"
                }
            } catch {
                tooLarge = "\(error)"
            }
            if let tooLarge {
                // A reply over the wire or ring limits (a tokenize of a huge text, a detokenize of many ids)
                // becomes an error for that request: the client asked for too much (400). Any other record
                // that large is the worker's fault.
                let clients: Bool = switch record { case .tokens, .text: true; default: false }
                writer.reset()
                let error = Record.error(ErrorRecord(requestID: record.requestID, code: clients ? .invalidRequest : .internalError,
                                                     message: "the reply is too large (\(tooLarge)); send a shorter input"))
                try? error.encode(into: &writer)
                type = error.type
            }
            let result: RingError? = writer.withBytes { src in
                do throws(RingError) {
                    // Reserve + copy without committing: the loop commits once per step (batching).
                    let dst = try channel.tx.reserve(type: UInt16(type.rawValue), length: src.count)
                    if let d = dst.baseAddress, let s = src.baseAddress { d.copyMemory(from: s, byteCount: src.count) }
                    return nil
                } catch { return error }
            }
            if let result { sendError = result; return }
            // A record that ends a request's answer (its done, the whole reply of a tokenize/detokenize, or an
            // error: a refusal ends its request, a failure precedes the request's done)
            // is committed at once, with everything reserved before it: the front can finish that response
            // while this step goes on (parking the sequence, the other requests' samples, the bookkeeping),
            // instead of after the step's single commit below. A decode step of a full batch that finishes
            // several requests commits once per finished one; the rest still leave with the step's commit.
            switch record {
            case .done(let d):
                if traceDir != nil { sy_trace_mark(d.requestID, SY_TP_WORKER_COMMITTED) }   // before: the front may take it at once
                channel.tx.commit()
            case .tokens, .text, .error: channel.tx.commit()
            default: break
            }
        }
        let scheduler = Scheduler(
            runner: runner, text: text,
            config: SchedulerConfig(maxQueue: o.maxQueue, sessionCacheBytes: o.sessionCacheMB << 20, maxRunning: o.maxRunning),
            clock: { sy_monotonic_ns() }, publish: publish)

        publish(.ready(ReadyRecord(workerID: UInt32(o.id), pid: getpid(), numaNode: Int32(o.node ?? -1),
                                   contextLength: UInt32(runner.contextLength), modelName: text.modelName,
                                   cpus: ((try? CPUAffinity.get()) ?? o.cpus).map { Int32($0) })))
        channel.tx.commit()
        control.store(.state, ControlBlock.State.ready.rawValue)
        control.beat()
        log("worker \(o.id) ready: pid \(getpid()), engine \(o.engine.rawValue), node \(o.node.map(String.init) ?? "none"), cpus \(o.cpus)")

        // The engine loop: drain the request ring → one scheduler step → publish → repeat; sleep when idle.
        while true {
            control.beat()
            do {
                _ = try channel.rx.drain { type, payload in
                    do {
                        let record = try Record.decode(type: UInt32(type), payload: payload)
                        if traceDir != nil, case .submit(let s) = record {
                            sy_trace_mark(s.requestID, SY_TP_WORKER_SEEN)
                            scheduler.handle(record)
                            sy_trace_mark(s.requestID, SY_TP_WORKER_ADMITTED)
                            lastTracedID = max(lastTracedID, s.requestID)
                        } else {
                            scheduler.handle(record)
                        }
                    } catch {
                        log("worker \(o.id): dropped a malformed request record: \(error)")
                    }
                }
            } catch {
                switch error {
                case .closed: control.store(.state, ControlBlock.State.stopping.rawValue); dumpTrace(); return 0
                case .peerDied: return 1
                default: log("worker \(o.id): request ring failed: \(error)"); return 1
                }
            }
            if scheduler.hasWork {
                do { try scheduler.step() } catch {
                    log("worker \(o.id): forward pass failed: \(error)")
                    scheduler.failAll("forward pass failed: \(error)")
                }
            }
            channel.tx.commit()
            if let why = groupFailure() {
                log("worker \(o.id): tensor-parallel group failed (\(why)); exiting so the group restarts")
                return 1
            }
            if let e = sendError {
                log("worker \(o.id): response ring failed: \(e)")
                return e == .closed ? 0 : 1
            }
            let st = scheduler.stats
            control.store(.running, UInt64(st.running))
            control.store(.waiting, UInt64(st.waiting))
            control.store(.cachedSessions, UInt64(st.cachedSessions))
            control.store(.cachedBytes, UInt64(st.cachedBytes))
            control.store(.tokensGenerated, st.tokensGenerated)
            control.store(.steps, st.steps)
            if !scheduler.hasWork {
                do {
                    // Idle: sleep on the request ring; wake at least every 100 ms to beat the heartbeat.
                    defer {
                        // For the front's placement (WorkerPool.followClients): does a client share our CPU?
                        control.store(.idleWaits, channel.rx.waits)
                        control.store(.idleWaitsShared, channel.rx.sharedWaits)
                    }
                    try channel.rx.waitForData(timeoutNanoseconds: 100_000_000)
                } catch {
                    switch error {
                    case .timedOut: continue
                    case .closed: control.store(.state, ControlBlock.State.stopping.rawValue); dumpTrace(); return 0
                    case .peerDied: return 1
                    default: log("worker \(o.id): request ring failed: \(error)"); return 1
                    }
                }
            }
        }
    }
}
