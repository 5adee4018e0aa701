// The process side of a tensor-parallel group (`switchyard serve --tp K`): which shard a worker process is,
// the group memory it shares with the group's other shards, and how the echo engine stands in for the real
// tensor-parallel engine so the group's process plumbing (spawn, readiness, supervision) is testable
// without a model.
//
// The group memory: the FRONT creates one EMPTY memfd per group (and a fresh one on every group respawn)
// and hands it to all K shards as an inherited descriptor (`--tp-fd N`). The front cannot size it (it never
// loads the model), so the LEADER (rank 0) sizes it with ftruncate and initializes it, publishing a ready
// word last; followers (rank ≥ 1) wait, bounded, for that word before they use the region. So no shard
// ever opens another's /proc/PID/fd, and a respawned group never sees its predecessor's state.
import CSwitchyardSys
import Engine
import Glibc
import SysKit

/// Which shard of a tensor-parallel group this process is. `size` 1 is a plain (whole-model) worker.
public struct ShardRole: Sendable, Equatable {
    public var rank: Int
    public var size: Int
    /// The group memory's inherited descriptor (-1 when size is 1).
    public var groupFD: Int32
    public init(rank: Int, size: Int, groupFD: Int32) {
        self.rank = rank; self.size = size; self.groupFD = groupFD
    }
    public static let whole = ShardRole(rank: 0, size: 1, groupFD: -1)
    public var isLeader: Bool { rank == 0 }
    public var isGrouped: Bool { size > 1 }

    /// The TP engine's limit on shards per group (sy_tp.h).
    public static let maxSize = Int(SY_TP_MAX_RANKS)

    /// Checks rank/size/fd; the message names the flag.
    public func validate() throws(WorkerError) {
        guard (1...Self.maxSize).contains(size) else { throw .setup("--tp-size \(size) must be 1...\(Self.maxSize)") }
        guard (0..<size).contains(rank) else { throw .setup("--tp-rank \(rank) must be 0...\(size - 1) for --tp-size \(size)") }
        if size > 1 && groupFD < 0 { throw .setup("--tp-size \(size) needs the group memory descriptor (--tp-fd)") }
    }
}

/// Checks that the model at `modelPath` splits into `size` shards: builds every rank's ShardLayout (KV heads,
/// FFN blocks, 32-block column alignment), so a split the model does not allow fails before any process is
/// spawned, with the layout's own message. Reads only the GGUF header (the file is mapped, not loaded).
public func validateTensorParallel(modelPath: String, size: Int) throws {
    let config = try ModelConfig(gguf: GGUFFile(path: modelPath))
    for rank in 0..<size { _ = try ShardLayout(config: config, shard: ShardSpec(rank: rank, size: size)) }
}

/// Waits until the leader has sized the group memfd to at least `minBytes` (fstat), polling every 1 ms.
/// Gives up after `timeoutSeconds`, or at once when the front (`parentPID`) is gone.
func waitForGroupMemory(fd: Int32, minBytes: Int, timeoutSeconds: Double, parentPID: Int32) throws(WorkerError) -> Int {
    let deadline = sy_monotonic_ns() + UInt64(timeoutSeconds * 1e9)
    while true {
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw .setup("group memory descriptor \(fd) is not a memfd (errno \(errno))")
        }
        if Int(st.st_size) >= minBytes { return Int(st.st_size) }
        if parentPID > 0 && getppid() != parentPID { throw .setup("the front exited while waiting for the group leader") }
        if sy_monotonic_ns() > deadline { throw .setup("the group leader did not set up the group memory within \(timeoutSeconds) s") }
        usleep(1000)
    }
}

/// The echo engine's group memory: one page with a header, so an echo group behaves like a model group at
/// the process level (the leader sizes and publishes it, followers attach and are counted before the
/// leader reports ready, followers exit when the leader shuts down) while the leader alone computes.
///
/// Layout (every field a naturally aligned u64, written with release stores and read with acquire loads):
///   0  magic      written LAST by the leader: the header below is initialized
///   8  size       K
///   16 shutdown   1 once the leader stopped cleanly (followers then exit 0)
///   24 attached   count of followers that mapped the region (fetch-add by each follower)
///   64 + 8·r      follower r's pid (diagnostics)
final class EchoGroupMemory {
    static let magic: UInt64 = 0x5054_4f48_4345_5953   // "SYECHOTP" little-endian
    static let byteCount = 4096
    let mapping: MemoryMapping
    let size: Int

    private func word(_ offset: Int) -> UnsafeMutablePointer<UInt64> {
        (mapping.base + offset).assumingMemoryBound(to: UInt64.self)
    }

    private init(mapping: consuming MemoryMapping, size: Int) {
        self.mapping = mapping; self.size = size
    }

    /// Leader: sizes the front's empty memfd, fills the header, then publishes the magic (release), so a
    /// follower that reads the magic (acquire) sees the whole header.
    static func create(fd: Int32, size: Int) throws -> EchoGroupMemory {
        guard ftruncate(fd, off_t(byteCount)) == 0 else { throw WorkerError.setup("ftruncate(group memory): errno \(errno)") }
        let m = EchoGroupMemory(mapping: try mapBorrowed(fd: fd, length: byteCount), size: size)
        sy_store_release_u64(m.word(8), UInt64(size))
        sy_store_release_u64(m.word(16), 0)
        sy_store_release_u64(m.word(24), 0)
        sy_store_release_u64(m.word(0), magic)
        return m
    }

    /// Follower: waits for the leader's magic, checks the group size, counts itself in.
    static func attach(fd: Int32, rank: Int, size: Int, timeoutSeconds: Double, parentPID: Int32) throws -> EchoGroupMemory {
        let bytes = try waitForGroupMemory(fd: fd, minBytes: byteCount, timeoutSeconds: timeoutSeconds, parentPID: parentPID)
        let m = EchoGroupMemory(mapping: try mapBorrowed(fd: fd, length: min(bytes, byteCount)), size: size)
        let deadline = sy_monotonic_ns() + UInt64(timeoutSeconds * 1e9)
        while sy_load_acquire_u64(m.word(0)) != magic {
            if sy_monotonic_ns() > deadline { throw WorkerError.setup("group memory was never published by the leader") }
            usleep(1000)
        }
        let k = sy_load_acquire_u64(m.word(8))
        guard k == UInt64(size) else { throw WorkerError.setup("group memory is for \(k) shards, this shard was told \(size)") }
        if rank < 64 - 8 { sy_store_release_u64(m.word(64 + 8 * rank), UInt64(getpid())) }
        _ = sy_fetch_add_u64(m.word(24), 1)
        return m
    }

    /// Maps `fd` without taking ownership of it (the inherited descriptor stays open; the mapping
    /// outlives any close).
    private static func mapBorrowed(fd: Int32, length: Int) throws -> MemoryMapping {
        let dup = try FileDescriptor(adopting: retryOnEINTR("dup") { Glibc.dup(fd) })
        return try MemoryMapping(shared: dup, length: length)
    }

    var attached: Int { Int(sy_load_acquire_u64(word(24))) }
    var isShutDown: Bool { sy_load_acquire_u64(word(16)) != 0 }
    func shutdown() { sy_store_release_u64(word(16), 1) }

    /// Leader: waits until all K-1 followers attached (bounded; the front restarts the group on failure).
    func waitForFollowers(timeoutSeconds: Double, parentPID: Int32) throws {
        let deadline = sy_monotonic_ns() + UInt64(timeoutSeconds * 1e9)
        while attached < size - 1 {
            if parentPID > 0 && getppid() != parentPID { throw WorkerError.setup("the front exited while waiting for followers") }
            if sy_monotonic_ns() > deadline {
                throw WorkerError.setup("only \(attached) of \(size - 1) follower shard(s) attached within \(timeoutSeconds) s")
            }
            usleep(1000)
        }
    }

    /// Follower loop: sleeps until the leader shuts the group down (exit 0) or the front goes away (1). A
    /// dead leader is handled by the front, which kills the whole group.
    func followUntilShutdown(parentPID: Int32) -> Int32 {
        while !isShutDown {
            if parentPID > 0 && getppid() != parentPID { return 1 }
            usleep(10_000)
        }
        return 0
    }
}
