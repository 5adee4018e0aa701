import ArgumentParser
import Glibc
import Front
import Worker

/// `switchyard worker`: started by `switchyard serve` with its rings as inherited descriptors; not for
/// direct use.
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run one worker process (started by `switchyard serve`).",
        shouldDisplay: false
    )

    @Option var id = 0
    @Option var parent: Int32 = 0
    @Option var engine: String = "model"
    @Option var model: String?
    @Option var threads = 1
    @Option(help: "CPUs to pin to, comma-separated (empty: no pinning)") var cpus = ""
    @Option var node: Int?
    @Option var sessionCacheMb = 256
    @Option var maxQueue = 64
    @Option var maxRunning = 16
    @Option var context = 2048
    @Option var maxBatchTokens = 512
    @Option(help: "Microseconds an idle worker spins for the next request before sleeping.") var idleSpinUs = 50
    @Option(help: "Microseconds of that spin before it yields the CPU between checks (0: from the start; ≥ --idle-spin-us: never).") var idleYieldAfterUs = 0
    @Option var logLevel = "info"
    @Option(help: "This process's shard of its tensor-parallel group (0 = leader).") var tpRank = 0
    @Option(help: "Shards in the group (1 = a whole-model worker).") var tpSize = 1
    @Option(help: "Inherited descriptor of the group memory (an empty memfd the leader sizes).") var tpFd: Int32 = -1

    func run() throws {
        var o = WorkerOptions()
        o.id = id
        o.parentPID = parent
        guard let kind = EngineKind(rawValue: engine) else {
            throw ValidationError("--engine must be one of \(EngineKind.allCases.map(\.rawValue))")
        }
        o.engine = kind
        o.modelPath = model
        o.threads = threads
        o.cpus = cpus.split(separator: ",").compactMap { Int($0) }
        o.node = node
        o.sessionCacheMB = sessionCacheMb
        o.maxQueue = maxQueue
        o.maxRunning = maxRunning
        o.contextLength = context
        o.maxBatchTokens = maxBatchTokens
        o.idleSpinNanoseconds = UInt64(max(0, min(idleSpinUs, 10_000))) * 1000
        o.idleYieldAfterNanoseconds = UInt64(max(0, min(idleYieldAfterUs, 10_000))) * 1000
        o.tp = ShardRole(rank: tpRank, size: tpSize, groupFD: tpFd)
        let name = tpSize > 1 ? "worker[\(id).\(tpRank)]" : "worker[\(id)]"
        let logger = LogLevel.stderrLogger(prefix: name, threshold: LogLevel(name: logLevel) ?? .info)
        let code = try WorkerProcess.run(o) { msg in logger(.info, msg) }
        throw ExitCode(code)
    }
}
