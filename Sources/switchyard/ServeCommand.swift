import ArgumentParser
import Foundation
import Front
import Glibc
import Routing
import SysKit
import Worker

/// `switchyard serve`: the front process. It places and spawns the workers, then runs the io_uring loop
/// until SIGTERM/SIGINT.
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the OpenAI-compatible API on a Unix socket (and optionally TCP)."
    )

    @Option(help: "Unix socket path.") var socket = "./switchyard.sock"
    @Option(help: "Permissions of the socket file (octal).") var socketMode = "0660"
    @Option(help: "Also listen on TCP HOST:PORT.") var tcp: String?
    @Option(help: "Worker processes (default: one per core / threads-per-worker).") var workers: Int?
    @Option(help: "Engine threads per worker.") var threadsPerWorker = 1
    @Option(help: "Tensor-parallel group size K: the --workers processes form workers/K groups of K shards; each group holds one copy of the model and is one routing target (X-Switchyard-Worker names the group). K must divide --workers and be at most the model's KV heads.") var tp = 1
    @Option(help: "consistent-hash | round-robin | least-connections | client-hash") var policy = "consistent-hash"
    @Option(help: "Bounded-load factor c for consistent-hash (cap = ceil(c·(in flight + 1)/N)).") var balanceFactor = 1.25
    @Option(help: "auto | off") var numa = "auto"
    @Option(help: "model | echo") var engine = "model"
    @Option(help: "GGUF model (default: models/\(ModelPath.fileName) from tools/fetch-model).") var model: String?
    @Option(help: "Requests a worker queues beyond its running batch before answering 503.") var maxQueue = 64
    @Option(help: "Sequences a worker decodes together.") var maxRunning = 16
    @Option(help: "Per-sequence context length in tokens.") var context = 2048
    @Option(help: "KV cache for idle sessions per worker, MiB (default: from free memory and the worker count).") var sessionCacheMb: Int?
    @Option(help: "Request body limit in bytes.") var maxBody = 1 << 20
    @Option(help: "Seconds a ready worker's heartbeat may stand still before it is killed as hung.") var heartbeatTimeout = 15.0
    @Option(help: "Seconds a worker (or tensor-parallel group) may take from its start to ready (model load, warm-up) before it is killed and restarted.") var startupTimeout = 600.0
    @Option(help: "error | warn | info | debug") var logLevel = "info"
    @Option(help: "Microseconds the front polls the response rings before sleeping while requests are in flight (0: never).") var pollSpinUs = 30
    @Option(help: "Microseconds the front watches for the next request on open keep-alive connections before sleeping (0: never).") var lingerUs = 50
    @Option(help: "While the front spins (poll-spin, linger), it yields its CPU once every this many polls (a power of two, 1...1024), so a thread sharing the CPU can run.") var spinYieldEvery = 8
    @Option(help: "Microseconds an idle worker spins for the next request before it sleeps (0: sleeps at once).") var workerIdleSpinUs = 50
    @Option(help: "Microseconds of the worker's idle spin before it yields its CPU between checks (0: from the start; ≥ --worker-idle-spin-us: never).") var workerIdleYieldAfterUs = 0
    @Option(help: "follow: when the front has one CPU of its own and its clients run on a worker's CPU, it trades CPUs with that worker | fixed: it never moves.") var frontPlacement = FrontPlacement.follow.rawValue
    @Option(help: "CPUs of the front's event loop: auto (the allowed CPUs no worker is pinned to, when there are any) | all.") var frontCpus = "auto"
    @Option(help: "Temperature for requests that leave it out (0...2; OpenAI's default is 1).") var defaultTemperature = SamplingDefaults().temperature
    @Option(help: "top_p for requests that leave it out (0...1; 1 = off).") var defaultTopP = SamplingDefaults().topP
    @Option(help: "top_k for requests that leave it out (0 = off).") var defaultTopK = SamplingDefaults().topK
    @Option(help: "min_p for requests that leave it out (0...1; 0 = off).") var defaultMinP = SamplingDefaults().minP
    @Option(help: "How a worker wakes the sleeping front when it answers: futex (the front waits on each response ring's futex word with IORING_OP_FUTEX_WAIT; Linux 6.7+) | eventfd (one eventfd the front polls; any kernel) | auto (futex where a start-up probe shows it works).") var ringWake = "auto"
    @Option(help: "How the front reads Unix-socket clients: multishot (io_uring multishot recv, provided buffers) | peek (MSG_PEEK, the request taken out of the socket when its answer goes out, so a client blocked in read() is woken once). TCP always uses multishot.") var recv = "peek"

    func validate() throws {
        if let w = workers, !(1...256).contains(w) { throw ValidationError("--workers must be 1...256") }
        guard (1...256).contains(threadsPerWorker) else { throw ValidationError("--threads-per-worker must be 1...256") }
        guard (1...ShardRole.maxSize).contains(tp) else { throw ValidationError("--tp must be 1...\(ShardRole.maxSize)") }
        if let w = workers, w % tp != 0 {
            throw ValidationError("--tp \(tp) must divide --workers \(w): each tensor-parallel group is exactly \(tp) worker processes (e.g. --workers \(max(tp, w / tp * tp)))")
        }
        guard NumaMode(rawValue: numa) != nil else { throw ValidationError("--numa must be auto or off") }
        guard FrontPlacement(rawValue: frontPlacement) != nil else { throw ValidationError("--front-placement must be follow or fixed") }
        guard ["auto", "all"].contains(frontCpus) else { throw ValidationError("--front-cpus must be auto or all") }
        guard ["multishot", "peek"].contains(recv) else { throw ValidationError("--recv must be multishot or peek") }
        guard ["auto", "futex", "eventfd"].contains(ringWake) else { throw ValidationError("--ring-wake must be auto, futex or eventfd") }
        guard (0...2).contains(defaultTemperature) else { throw ValidationError("--default-temperature must be 0...2") }
        guard (0...1).contains(defaultTopP) else { throw ValidationError("--default-top-p must be 0...1") }
        guard (0...(1 << 20)).contains(defaultTopK) else { throw ValidationError("--default-top-k must be 0...1048576") }
        guard (0...1).contains(defaultMinP) else { throw ValidationError("--default-min-p must be 0...1") }
        guard (1...1024).contains(spinYieldEvery) && spinYieldEvery.nonzeroBitCount == 1 else {
            throw ValidationError("--spin-yield-every must be a power of two from 1 to 1024")
        }
        guard (0...10_000).contains(workerIdleSpinUs) else { throw ValidationError("--worker-idle-spin-us must be 0...10000") }
        guard (0...10_000).contains(workerIdleYieldAfterUs) else {
            throw ValidationError("--worker-idle-yield-after-us must be 0...10000")
        }
        guard EngineKind(rawValue: engine) != nil else { throw ValidationError("--engine must be model or echo") }
        guard RoutingPolicy(rawValue: policy) != nil else {
            throw ValidationError("--policy must be one of \(RoutingPolicy.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard mode_t(socketMode, radix: 8) != nil else { throw ValidationError("--socket-mode must be octal, e.g. 0660") }
        guard (1...4096).contains(maxQueue), (1...256).contains(maxRunning) else {
            throw ValidationError("--max-queue must be 1...4096 and --max-running 1...256")
        }
        guard heartbeatTimeout >= 0.5, heartbeatTimeout <= 3600 else { throw ValidationError("--heartbeat-timeout must be 0.5...3600 seconds") }
        guard startupTimeout >= 0.5, startupTimeout <= 86400 else { throw ValidationError("--startup-timeout must be 0.5...86400 seconds") }
        guard (16...131072).contains(context) else { throw ValidationError("--context must be 16...131072") }
        guard ["error", "warn", "info", "debug"].contains(logLevel) else { throw ValidationError("--log-level must be error, warn, info or debug") }
    }

    func run() throws {
        FrontServer.blockShutdownSignals()
        let engineKind = EngineKind(rawValue: engine) ?? .model
        let modelPath = engineKind == .model ? try ModelPath.resolve(model) : nil
        if tp > 1, let modelPath {
            // Every rank's split (attention by KV head, FFN by 32-blocks) is checked here, so a split this model
            // does not allow is an error now rather than a group that fails at load and restarts.
            do { try validateTensorParallel(modelPath: modelPath, size: tp) } catch {
                throw ValidationErrorMessage("--tp \(tp): \(error)")
            }
        }
        let online = (try? CPUAffinity.get()) ?? Array(0..<max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        // Default: one process per core / threads-per-worker, rounded down to whole groups (at least one).
        let workerCount = workers ?? max(tp, online.count / threadsPerWorker / tp * tp)
        let topology = try NumaTopology.discover(fallbackCPUs: online)
        let plan = planPlacement(workers: workerCount, threadsPerWorker: threadsPerWorker, tp: tp,
                                 mode: NumaMode(rawValue: numa) ?? .auto, topology: topology)
        let level = LogLevel(name: logLevel) ?? .info
        let logger = LogLevel.stderrLogger(prefix: "switchyard", threshold: level)
        let log: @Sendable (String) -> Void = { logger(.info, $0) }
        log("topology: \(topology.nodes.map { "node\($0.id)=\($0.cpus.count) cpus" }.joined(separator: ", ")); \(workerCount) worker(s) × \(threadsPerWorker) thread(s)\(tp > 1 ? " in \(workerCount / tp) tensor-parallel group(s) of \(tp)" : "")")
        for g in plan.splitGroups { logger(.warn, "group \(g): no NUMA node has cores for all its shards; spread over nodes") }
        if plan.oversubscribed { logger(.warn, "more threads than cores; cores are shared") }
        // Per routing target: a group spreads its KV cache over its shards.
        let cacheMB = sessionCacheMb ?? Self.defaultSessionCacheMB(workers: workerCount / tp)

        // One WorkerSpec per routing target: a worker (--tp 1), or a group's leader with its followers.
        // Every shard of a group gets the same limits (slot tables must match), its own placement.
        var specs: [WorkerSpec] = []
        for p in plan.workers {
            var args = ["--engine", engineKind.rawValue, "--threads", "\(threadsPerWorker)",
                        "--session-cache-mb", "\(cacheMB)", "--max-queue", "\(maxQueue)",
                        "--max-running", "\(maxRunning)", "--context", "\(context)",
                        "--idle-spin-us", "\(workerIdleSpinUs)", "--idle-yield-after-us", "\(workerIdleYieldAfterUs)"]
            if let modelPath { args += ["--model", modelPath] }
            if !p.cpus.isEmpty { args += ["--cpus", p.cpus.map(String.init).joined(separator: ",")] }
            if let n = p.node { args += ["--node", "\(n)"] }
            args += ["--log-level", level.name]
            let placed = "node \(p.node.map(String.init) ?? "none"), cpus \(p.cpus.isEmpty ? "unpinned" : p.cpus.map(String.init).joined(separator: ","))"
            if tp == 1 {
                specs.append(WorkerSpec(id: p.worker, arguments: args, numaNode: p.node, cpus: p.cpus))
                log("worker \(p.worker): \(placed)")
            } else if p.worker % tp == 0 {
                specs.append(WorkerSpec(id: p.group, arguments: args, numaNode: p.node, cpus: p.cpus))
                log("group \(p.group) shard 0 (leader, process \(p.worker)): \(placed)")
            } else if let last = specs.indices.last, specs[last].id == p.group {
                specs[last].followers.append(FollowerSpec(rank: p.worker % tp, arguments: args, numaNode: p.node, cpus: p.cpus))
                log("group \(p.group) shard \(p.worker % tp) (process \(p.worker)): \(placed)")
            }
        }

        var poolConfig = WorkerPoolConfig(executable: try currentExecutablePath(), workers: specs)
        poolConfig.policy = RoutingPolicy(rawValue: policy) ?? .consistentHash
        poolConfig.balanceFactor = balanceFactor
        poolConfig.heartbeatTimeout = heartbeatTimeout
        poolConfig.defaultSampling.temperature = defaultTemperature
        poolConfig.defaultSampling.topP = defaultTopP
        poolConfig.defaultSampling.topK = defaultTopK
        poolConfig.defaultSampling.minP = defaultMinP
        let futexProbe = FrontServer.futexWaitWorks()
        switch ringWake {
        case "futex":
            guard futexProbe.works else { throw ValidationError("--ring-wake futex: \(futexProbe.reason); use --ring-wake eventfd or auto") }
            poolConfig.ringWake = .futex
        case "eventfd": poolConfig.ringWake = .eventfd
        default:
            poolConfig.ringWake = futexProbe.works ? .futex : .eventfd
            if !futexProbe.works { log("response-ring wake-ups via eventfd: \(futexProbe.reason)") }
        }
        poolConfig.startupTimeout = startupTimeout
        poolConfig.modelID = engineKind == .echo ? "echo" : URL(fileURLWithPath: modelPath ?? "model").deletingPathExtension().lastPathComponent
        poolConfig.log = logger

        let pool = try WorkerPool(config: poolConfig)
        // The front's thread is the event loop's (run() below runs on it). Pinned after the workers were
        // spawned, so they do not start on its CPU.
        var frontPinned: [Int]?
        if frontCpus == "auto", let cpus = plan.frontCPUs(allowed: online) {
            // Off the workers' cores: a worker spins for a while after each request, and a loop that the
            // scheduler puts on its core waits behind it (2 cores, one worker, the front forced onto the
            // worker's core: round trips of 30-37 µs against 13-20 µs on the other core).
            do {
                try CPUAffinity.set(cpus)
                frontPinned = cpus
                log("front: cpus \(cpus.map(String.init).joined(separator: ","))")
            } catch {
                logger(.warn, "front: cannot pin the event loop to cpus \(cpus): \(error)")
            }
        }
        // Following needs the signal it reads: workers that yield in their idle spin, and CPUs that only a
        // client can share with a worker (not another worker).
        if FrontPlacement(rawValue: frontPlacement) == .follow, let cpus = frontPinned, cpus.count == 1, tp == 1,
           !plan.oversubscribed, workerIdleSpinUs > 0, workerIdleYieldAfterUs < workerIdleSpinUs,
           specs.contains(where: { $0.cpus.count == 1 }) {
            pool.followClients(from: cpus[0])
            log("front: follows its clients (trades cpus with a worker whose cpu they share; --front-placement fixed: never)")
        }

        var fc = FrontConfig()
        fc.socketPath = socket
        fc.socketMode = mode_t(socketMode, radix: 8) ?? 0o660
        fc.tcp = tcp
        fc.limits.maxBodyBytes = maxBody
        fc.pollSpinNanoseconds = UInt64(max(0, min(pollSpinUs, 1000))) * 1000
        fc.lingerNanoseconds = UInt64(max(0, min(lingerUs, 1000))) * 1000
        fc.spinYieldEvery = UInt32(spinYieldEvery)
        fc.deferConsume = recv == "peek"
        fc.defaultModel = poolConfig.modelID
        fc.log = logger
        let server = try FrontServer(config: fc, backend: pool)
        log("policy \(poolConfig.policy.rawValue); try: curl --unix-socket \(socket) http://localhost/v1/chat/completions -H 'Content-Type: application/json' -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}]}'")
        try server.run()
        log("shutting down workers")
        pool.shutdown()
        log("bye")
    }

    /// A quarter of the available memory split over the workers, at most 2 GiB each, at least 64 MiB.
    static func defaultSessionCacheMB(workers: Int) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
              let kb = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 256 }
        return max(64, min(2048, kb / 1024 / 4 / max(1, workers)))
    }
}
