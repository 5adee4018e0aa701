// Where the worker process meets the tensor-parallel engine (TPGroup, TPLeaderRunner, TPFollower): every
// call into that API is in this file, so the rest of the worker (rings, scheduler, placement) is the same
// for a whole-model worker, a group leader and a follower.
import CSwitchyardSys
import Engine
import Glibc
import SysKit

extension WorkerProcess {
    /// How long a leader waits for its followers to attach, and a follower for its leader to publish the
    /// group memory (model load and repack included). On timeout the shard exits 1 and the front restarts
    /// the whole group.
    static let followerAttachTimeout = 120.0

    /// Loads the model (a shard's share of it in a group). Repacked weights go to a file shared by every
    /// worker on this NUMA node (mapped read-only, MAP_SHARED), so N workers hold one copy; the file
    /// survives restarts. Private memory if the cache directory can't be used.
    static func loadModel(path: String, cacheDirectory: String?, shard: ShardRole, log: (String) -> Void) throws -> Model {
        if let cacheDirectory, let m = try? Model(path: path, options: modelOptions(shard: shard, repack: .sharedFile(directory: cacheDirectory))) {
            return m
        }
        log("repack cache unavailable; weights repacked into private memory")
        return try Model(path: path, options: modelOptions(shard: shard, repack: .privateMemory))
    }

    /// A grouped shard loads (repacks, maps) only its rows of every layer. ShardSpec/ShardLayout reject a
    /// group larger than the model's KV heads with an error naming the limit.
    static func modelOptions(shard: ShardRole, repack: RepackStorage) throws -> ModelOptions {
        shard.isGrouped ? ModelOptions(repack: repack, shard: try ShardSpec(rank: shard.rank, size: shard.size))
                        : ModelOptions(repack: repack)
    }

    /// Bytes of KV cache one token takes in the WHOLE model (all KV heads, f16 K and V): the same number in
    /// every shard of a group, so all shards size their slot tables alike.
    static func wholeModelKVBytesPerToken(_ c: ModelConfig) -> Int {
        c.nLayer * 2 * c.kvDim * MemoryLayout<UInt16>.size
    }

    /// Pins the engine's pool threads one per CPU of the worker's set (the calling thread takes the first).
    static func pinEngineThreads(_ engine: Engine, cpus: [Int]) throws {
        guard cpus.count > 1 else { return }
        for (i, tid) in engine.workerThreadIDs.enumerated() {
            try CPUAffinity.set([cpus[(i + 1) % cpus.count]], pid: tid)
        }
        try CPUAffinity.set([cpus[0]])
    }

    /// Group leader (rank 0): given the group memory it initialized (TPGroup.create on the front's memfd),
    /// builds its shard's engine and the runner the scheduler drives. `shutdown` tells the followers to exit
    /// (called on every exit path); `failure` says why the group can no longer compute (nil while it can).
    static func makeTensorParallelLeader(_ o: WorkerOptions, group: TPGroup, model: Model, slots: Int, log: (String) -> Void) throws
        -> (runner: ModelRunner, shutdown: () -> Void, failure: () -> String?) {
        group.attachTimeout = followerAttachTimeout
        let engine = try Engine(model: model, threads: max(1, o.threads), maxBatchTokens: o.maxBatchTokens, group: group)
        try pinEngineThreads(engine, cpus: o.cpus)
        let runner = TPLeaderRunner(engine: engine, group: group, contextLength: o.contextLength, slots: slots)
        if let failure = runner.failure { throw failure }
        log("worker \(o.id): tensor-parallel leader of \(o.tp.size) shards (\(model.shard), group memory \(group.byteCount) bytes)")
        return (runner, { runner.shutdown() }, { runner.failure.map { "\($0)" } })
    }

    /// Follower (rank ≥ 1): no rings, no control block; it maps the group memory once the leader published
    /// it and runs the leader's steps until the leader shuts the group down (0) or the group aborts (1).
    static func runFollower(_ o: WorkerOptions, log: @escaping (String) -> Void) throws -> Int32 {
        let me = "worker \(o.id) shard \(o.tp.rank)/\(o.tp.size)"
        switch o.engine {
        case .echo:
            let group = try EchoGroupMemory.attach(fd: o.tp.groupFD, rank: o.tp.rank, size: o.tp.size,
                                                   timeoutSeconds: followerAttachTimeout, parentPID: o.parentPID)
            log("\(me) attached (echo stand-in): pid \(getpid()), node \(o.node.map(String.init) ?? "none"), cpus \(o.cpus)")
            let code = group.followUntilShutdown(parentPID: o.parentPID)
            log("\(me) stopping (\(code == 0 ? "leader shut the group down" : "front gone"))")
            return code
        case .model:
            guard let path = o.modelPath else { throw WorkerError.setup("--model is required for --engine model") }
            // Waits (bounded) for the leader to size and publish the group memory (it does so from the GGUF
            // header, before loading weights), and registers this shard before its own weight load.
            let group = try TPGroup.attach(fd: o.tp.groupFD, rank: o.tp.rank, size: o.tp.size, timeoutSeconds: followerAttachTimeout)
            group.attachTimeout = followerAttachTimeout
            let model = try loadModel(path: path, cacheDirectory: repackDirectory(modelPath: path, node: o.node), shard: o.tp,
                                      log: { log("\(me): \($0)") })
            // The same slot count as the leader's (see WorkerProcess.run): slot numbers are shared.
            let slots = o.maxRunning + max(8, (o.sessionCacheMB << 20) / max(1, wholeModelKVBytesPerToken(model.config) * 256))
            let engine = try Engine(model: model, threads: max(1, o.threads), maxBatchTokens: o.maxBatchTokens, group: group)
            try pinEngineThreads(engine, cpus: o.cpus)
            let follower = TPFollower(engine: engine, group: group, contextLength: o.contextLength, slots: min(slots, 1024))
            log("\(me) attached: pid \(getpid()), \(model.shard), node \(o.node.map(String.init) ?? "none"), cpus \(o.cpus)")
            do {
                try follower.run()
            } catch {
                log("\(me): group stopped: \(error)")
                return 1
            }
            log("\(me) stopping (leader shut the group down)")
            return 0
        }
    }
}
