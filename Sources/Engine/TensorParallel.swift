// Tensor parallelism: the shared memory of one group of K shard processes (sy_tp.h has the C layout).
//
// Roles. Rank 0 (the leader) runs the scheduler; it publishes every step as a command (create / release /
// truncate a sequence slot, a forward batch, shutdown) and then executes it itself. Ranks 1..<K (followers)
// wait for the next command, copy its payload, acknowledge it and execute it. Every shard holds 1/K of
// every layer (Model's ShardLayout), so inside a forward pass each shard computes a PARTIAL product of the
// two projections that close a block (attn_output, ffn_down); `allReduce` sums the K partials.
//
// All-reduce. Rank r writes its partial [rows][dim] into slot [parity][r] of the partial area, arrives at
// the group barrier, and after the barrier every shard adds slot[parity][0], slot[parity][1], ... (rank
// order) to its residual x. Every shard performs the same float operations on the same values in the same
// order, so all shards keep bit-identical residuals. The parity alternates between consecutive
// all-reduces, which is why ONE barrier per all-reduce suffices: a fast shard may finish reading all-reduce
// n and write its partial for n+1 while a slow shard still reads n's partials, but the two use different
// parities; it can only come back to parity p (all-reduce n+2) after passing the barrier of n+1, which
// every shard reaches only after it finished reading n's partials.
//
// Waiting. Every wait (barrier, next command, acknowledgements) spins `spin` iterations, then sleeps on a
// futex in slices of 50 ms. Between slices it checks the group's `aborted` word and the liveness of the
// other ranks through pidfds (pidfd_open of the pid each rank registers when it attaches): a pidfd polls
// readable as soon as its process has exited, even while it is an unreaped zombie, and it cannot be fooled
// by pid reuse once opened (kill(pid, 0) can be, and succeeds on zombies). A waiter that sees a dead peer
// marks the group aborted, so the others fail at their next check without polling themselves; a rank
// that has not attached after `attachTimeout` seconds counts as dead too. So no shard ever waits forever
// on a peer that is gone: its wait throws TPError.
import CSwitchyardKernels
import CSwitchyardSys
#if canImport(Glibc)
import Glibc
#endif

public enum TPError: Error, Sendable, Equatable, CustomStringConvertible {
    case badArgument(String)
    case system(String, errno: Int32)
    /// The group was aborted (by `abort`, a divergence or a dead peer), seen by a wait.
    case aborted(String)
    case peerDied(rank: Int, pid: Int32)
    case peerNeverAttached(rank: Int, seconds: Double)
    /// A follower's state disagrees with the leader's command (a bug, or a follower out of memory).
    case diverged(String)

    public var description: String {
        switch self {
        case .badArgument(let s): return "tensor parallel: \(s)"
        case .system(let call, let e): return "tensor parallel: \(call) failed: \(String(cString: strerror(e))) (errno \(e))"
        case .aborted(let s): return "tensor parallel: group aborted (\(s))"
        case .peerDied(let r, let pid): return "tensor parallel: shard \(r) (pid \(pid)) died"
        case .peerNeverAttached(let r, let s): return "tensor parallel: shard \(r) did not attach within \(s) s"
        case .diverged(let s): return "tensor parallel: shard diverged from the leader: \(s)"
        }
    }
}

/// A command the leader publishes to the followers.
public enum TPCommand: Sendable, Equatable {
    case create(slot: Int, maxContext: Int)
    case release(slot: Int)
    case truncate(slot: Int, length: Int)
    /// Items (sequence slot, position = tokens already in the slot, tokens), in batch order.
    case forward([TPForwardItem])
    case shutdown
}

public struct TPForwardItem: Sendable, Equatable {
    public var slot: Int
    public var position: Int
    public var tokens: [Int32]
    public init(slot: Int, position: Int, tokens: [Int32]) { self.slot = slot; self.position = position; self.tokens = tokens }
}

/// All-reduce timing of one group handle (nanoseconds, since attach or `resetStats`).
public struct TPStats: Sendable {
    /// All-reduces performed.
    public var calls = 0
    /// Time inside allReduce: waiting at the barrier plus summing.
    public var totalNs: UInt64 = 0
    /// Of which waiting at the barrier (the slowest shard's lag plus the synchronization itself).
    public var waitNs: UInt64 = 0
}

/// One shard's handle on a group's shared memory. Not thread-safe: one thread drives a handle (the
/// engine's), like the Engine itself. @unchecked Sendable so it can be handed to that thread; the shared
/// words are touched only through the C11 atomics of sy_sys.h.
public final class TPGroup: @unchecked Sendable {
    /// The memfd (inherit it into the shard processes; pass `byteCount` along).
    public let fd: Int32
    public let byteCount: Int
    /// This handle's rank; -1 for the creator's handle (it can abort the group and register pids, but not
    /// take part in steps).
    public let rank: Int
    public let size: Int
    /// Floats per partial row (the model's embedding width).
    public let dim: Int
    /// Rows per partial slot: an engine's maxBatchTokens must not exceed it; also the token capacity of a
    /// forward command.
    public let maxBatchTokens: Int
    public let maxItems: Int
    public let commandTokens: Int
    /// Spin iterations (PAUSE) before sleeping in a wait: ~0.1-0.5 ms, longer than the usual skew between
    /// shards at an all-reduce on idle cores, short enough not to starve a descheduled peer on busy ones.
    public var spin = 1 << 12
    /// Seconds a wait tolerates a rank that has not attached (registered its pid) yet.
    public var attachTimeout = 120.0

    private let base: UnsafeMutableRawPointer
    private let commandArea: UnsafeMutableRawPointer   // base + cmd_offset (validated at init)
    private let ownsFD: Bool
    private let partialBase: UnsafeMutablePointer<Float>
    private let slotFloats: Int          // maxBatchTokens * dim
    private var barriers: UInt32 = 0     // barriers this handle completed (all-reduces)
    private var seenStep: UInt32 = 0     // followers: last command executed
    private var pidfds: [Int32]          // per rank: -1 until opened
    private var unattachedSince: UInt64 = 0
    public private(set) var stats = TPStats()
    private var samples: UnsafeMutablePointer<UInt32>?
    private var sampleCapacity = 0
    public private(set) var sampleCount = 0

    static let sliceNs: Int64 = 50_000_000

    // MARK: Creating and attaching

    /// Bytes of the shared memory of a group of `size` shards (what `create` sizes the memfd to).
    public static func byteCount(size: Int, config: ModelConfig, maxBatchTokens: Int) throws -> Int {
        try layout(size: size, config: config, maxBatchTokens: maxBatchTokens).total
    }

    private struct Layout { var cmdOffset, partialOffset, total, maxItems, cmdTokens: Int }

    private static func layout(size: Int, config: ModelConfig, maxBatchTokens: Int) throws -> Layout {
        guard size >= 1, size <= Int(SY_TP_MAX_RANKS) else { throw TPError.badArgument("group size \(size) must be 1...\(SY_TP_MAX_RANKS)") }
        guard maxBatchTokens >= 1, maxBatchTokens <= 1 << 16 else { throw TPError.badArgument("maxBatchTokens \(maxBatchTokens) must be 1...65536") }
        guard config.dim >= 32, config.dim <= 1 << 16, config.dim % 16 == 0 else { throw TPError.badArgument("dim \(config.dim)") }
        let page = 4096
        func roundUp(_ v: Int) -> Int { (v + page - 1) / page * page }
        // A forward command carries at most maxBatchTokens tokens (so at most that many items).
        let maxItems = maxBatchTokens, cmdTokens = maxBatchTokens
        let cmdOffset = roundUp(Int(SY_TP_HEADER_SIZE))
        let cmdBytes = MemoryLayout<sy_tp_command>.size + maxItems * MemoryLayout<sy_tp_item>.size + 4 * cmdTokens
        let partialOffset = cmdOffset + roundUp(cmdBytes)
        let total = partialOffset + roundUp(2 * size * maxBatchTokens * config.dim * 4)
        return Layout(cmdOffset: cmdOffset, partialOffset: partialOffset, total: total, maxItems: maxItems, cmdTokens: cmdTokens)
    }

    /// Sizes the (empty or new) memfd `fd`, writes the configuration and publishes the magic word LAST
    /// (release), so that a shard polling for it (`attach`) sees a complete header.
    private static func initialize(fd: Int32, size: Int, config: ModelConfig, maxBatchTokens: Int) throws -> Int {
        let l = try layout(size: size, config: config, maxBatchTokens: maxBatchTokens)
        guard ftruncate(fd, off_t(l.total)) == 0 else { throw TPError.system("ftruncate", errno: sy_errno()) }
        _ = sy_memfd_add_seals(fd, SY_F_SEAL_SHRINK | SY_F_SEAL_GROW)   // best effort (not a sealable fd: fine)
        guard let p = mmap(nil, l.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw TPError.system("mmap", errno: sy_errno())
        }
        defer { munmap(p, l.total) }
        // The memfd is zero-filled: counters, pids and acks start at 0.
        p.storeBytes(of: UInt32(SY_TP_VERSION), toByteOffset: Int(SY_TP_OFF_VERSION), as: UInt32.self)
        p.storeBytes(of: UInt32(size), toByteOffset: Int(SY_TP_OFF_SIZE), as: UInt32.self)
        p.storeBytes(of: UInt32(config.dim), toByteOffset: Int(SY_TP_OFF_DIM), as: UInt32.self)
        p.storeBytes(of: UInt32(maxBatchTokens), toByteOffset: Int(SY_TP_OFF_MAX_TOKENS), as: UInt32.self)
        p.storeBytes(of: UInt32(l.maxItems), toByteOffset: Int(SY_TP_OFF_MAX_ITEMS), as: UInt32.self)
        p.storeBytes(of: UInt32(l.cmdTokens), toByteOffset: Int(SY_TP_OFF_CMD_TOKENS), as: UInt32.self)
        p.storeBytes(of: UInt64(l.cmdOffset), toByteOffset: Int(SY_TP_OFF_CMD_OFFSET), as: UInt64.self)
        p.storeBytes(of: UInt64(l.partialOffset), toByteOffset: Int(SY_TP_OFF_PARTIAL_OFFSET), as: UInt64.self)
        p.storeBytes(of: UInt64(l.total), toByteOffset: Int(SY_TP_OFF_MAPPING_SIZE), as: UInt64.self)
        // Release: pairs with attach's acquire load of the magic; everything above is visible once it is.
        sy_store_release_u64((p + Int(SY_TP_OFF_MAGIC)).assumingMemoryBound(to: UInt64.self), SY_TP_MAGIC)
        return l.total
    }

    /// Creates the shared memory of a group of `size` shards of a model with `config`, whose engines run
    /// at most `maxBatchTokens` tokens per pass, in a new memfd. The returned handle (rank -1) owns the
    /// memfd; shard processes attach with `init(fd:byteCount:rank:size:)` on an inherited copy.
    public static func create(size: Int, config: ModelConfig, maxBatchTokens: Int) throws -> TPGroup {
        let fd = sy_memfd_create("switchyard-tp", SY_MFD_CLOEXEC | SY_MFD_ALLOW_SEALING)
        guard fd >= 0 else { throw TPError.system("memfd_create", errno: sy_errno()) }
        do {
            let total = try initialize(fd: fd, size: size, config: config, maxBatchTokens: maxBatchTokens)
            return try TPGroup(fd: fd, byteCount: total, rank: -1, size: size, owns: true)
        } catch { close(fd); throw error }
    }

    /// Rank 0, when the spawner handed every shard the same EMPTY memfd: sizes and initializes it and
    /// attaches as rank 0. Followers `attach` to the same fd (they wait for the initialization).
    public static func create(fd: Int32, size: Int, config: ModelConfig, maxBatchTokens: Int) throws -> TPGroup {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw TPError.system("fstat", errno: sy_errno()) }
        guard st.st_size == 0 else { throw TPError.badArgument("group memfd already has \(st.st_size) bytes (create needs an empty one)") }
        let total = try initialize(fd: fd, size: size, config: config, maxBatchTokens: maxBatchTokens)
        return try TPGroup(fd: fd, byteCount: total, rank: 0, size: size, owns: false)
    }

    /// Rank > 0, on the memfd rank 0 initializes with `create(fd:...)`: waits (1 ms polls of its size and
    /// magic word) up to `timeoutSeconds` for the header, then attaches as `rank`.
    public static func attach(fd: Int32, rank: Int, size: Int, timeoutSeconds: Double) throws -> TPGroup {
        let deadline = sy_monotonic_ns() + UInt64(max(0, timeoutSeconds) * 1e9)
        while true {
            var st = stat()
            guard fstat(fd, &st) == 0 else { throw TPError.system("fstat", errno: sy_errno()) }
            let bytes = Int(st.st_size)
            if bytes >= Int(SY_TP_HEADER_SIZE), let p = mmap(nil, bytes, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED {
                let ready = sy_load_acquire_u64(p.assumingMemoryBound(to: UInt64.self)) == SY_TP_MAGIC
                let mapped = Int(clamping: p.load(fromByteOffset: Int(SY_TP_OFF_MAPPING_SIZE), as: UInt64.self))
                munmap(p, bytes)
                if ready {
                    guard mapped == bytes else { throw TPError.badArgument("group header says \(mapped) bytes, memfd has \(bytes)") }
                    return try TPGroup(fd: fd, byteCount: bytes, rank: rank, size: size)
                }
            }
            if sy_monotonic_ns() > deadline { throw TPError.peerNeverAttached(rank: 0, seconds: timeoutSeconds) }
            var ts = timespec(tv_sec: 0, tv_nsec: 1_000_000)
            nanosleep(&ts, nil)
        }
    }

    /// Maps a group's memfd (inherited from the creator) as shard `rank` of `size` and registers this
    /// process's pid for that rank. The fd is not closed by the handle (the caller may close it afterwards).
    public convenience init(fd: Int32, byteCount: Int, rank: Int, size: Int) throws {
        guard rank >= 0, rank < size else { throw TPError.badArgument("rank \(rank) must be 0..<\(size)") }
        try self.init(fd: fd, byteCount: byteCount, rank: rank, size: size, owns: false)
    }

    private init(fd: Int32, byteCount: Int, rank: Int, size: Int, owns: Bool) throws {
        guard byteCount >= Int(SY_TP_HEADER_SIZE), size >= 1, size <= Int(SY_TP_MAX_RANKS) else {
            throw TPError.badArgument("mapping of \(byteCount) bytes for \(size) shards")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw TPError.system("fstat", errno: sy_errno()) }
        guard Int(st.st_size) == byteCount else { throw TPError.badArgument("memfd has \(st.st_size) bytes, expected \(byteCount)") }
        guard let p = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw TPError.system("mmap", errno: sy_errno())
        }
        func u32(_ off: Int32) -> Int { Int(p.load(fromByteOffset: Int(off), as: UInt32.self)) }
        func u64(_ off: Int32) -> Int { Int(clamping: p.load(fromByteOffset: Int(off), as: UInt64.self)) }
        let dim = u32(SY_TP_OFF_DIM), maxTok = u32(SY_TP_OFF_MAX_TOKENS)
        let items = u32(SY_TP_OFF_MAX_ITEMS), cmdTok = u32(SY_TP_OFF_CMD_TOKENS)
        let cmdOff = u64(SY_TP_OFF_CMD_OFFSET), partOff = u64(SY_TP_OFF_PARTIAL_OFFSET)
        // Validate everything the offsets below rely on (a foreign or truncated mapping is an error).
        // Bounds first (values come from shared memory), so the products below cannot overflow.
        guard dim <= 1 << 16, maxTok <= 1 << 16, items <= 1 << 16, cmdTok <= 1 << 16, cmdOff <= byteCount, partOff <= byteCount else {
            munmap(p, byteCount)
            throw TPError.badArgument("group header has implausible sizes")
        }
        let cmdEnd = cmdOff + MemoryLayout<sy_tp_command>.size + items * MemoryLayout<sy_tp_item>.size + 4 * cmdTok
        guard p.load(fromByteOffset: Int(SY_TP_OFF_MAGIC), as: UInt64.self) == SY_TP_MAGIC,
              u32(SY_TP_OFF_VERSION) == Int(SY_TP_VERSION), u32(SY_TP_OFF_SIZE) == size,
              u64(SY_TP_OFF_MAPPING_SIZE) == byteCount, dim >= 16, maxTok >= 1, items >= 1, cmdTok >= 1,
              cmdOff >= Int(SY_TP_HEADER_SIZE), cmdOff % 64 == 0, partOff % 64 == 0, cmdEnd <= partOff,
              partOff + 2 * size * maxTok * dim * 4 <= byteCount
        else {
            munmap(p, byteCount)
            throw TPError.badArgument("not a tensor-parallel group mapping for \(size) shards (magic/version/size/offsets)")
        }
        self.fd = fd
        self.byteCount = byteCount
        self.rank = rank
        self.size = size
        self.dim = dim
        self.maxBatchTokens = maxTok
        self.maxItems = items
        self.commandTokens = cmdTok
        self.base = p
        self.commandArea = p + cmdOff
        self.ownsFD = owns
        self.partialBase = (p + partOff).assumingMemoryBound(to: Float.self)
        self.slotFloats = maxTok * dim
        self.pidfds = [Int32](repeating: -1, count: size)
        // A shard attaches to a fresh group (seenStep 0, its ack word 0): commands the leader published
        // before it attached wait in order (the leader does not overwrite command n before every follower
        // acknowledged n - 1). A group is never re-joined: it restarts as a unit with a new memfd.
        if rank >= 0 { registerPeer(rank: rank, pid: getpid()) }
    }

    deinit {
        for f in pidfds where f >= 0 { close(f) }
        samples?.deallocate()
        munmap(base, byteCount)
        if ownsFD { close(fd) }
    }

    /// Records `pid` as rank `rank`'s process (a shard does this itself when it attaches; a spawner may do
    /// it right after spawning, so that a child dying before it attaches is noticed too).
    public func registerPeer(rank r: Int, pid: Int32) {
        guard r >= 0, r < size else { return }
        let p = pidWord(r)
        sy_store_release_u32(p, UInt32(bitPattern: pid))
    }

    /// The pid registered for each rank (0: not attached yet).
    public var peerPIDs: [Int32] { (0..<size).map { Int32(bitPattern: sy_load_acquire_u32(pidWord($0))) } }

    // MARK: Shared words

    private func word(_ off: Int32) -> UnsafeMutablePointer<UInt32> {
        (base + Int(off)).assumingMemoryBound(to: UInt32.self)
    }
    private func pidWord(_ r: Int) -> UnsafeMutablePointer<UInt32> {
        (base + Int(SY_TP_OFF_RANKS) + r * Int(SY_TP_RANK_STRIDE) + Int(SY_TP_RANK_OFF_PID)).assumingMemoryBound(to: UInt32.self)
    }
    private func ack(_ r: Int) -> UnsafeMutablePointer<UInt32> {
        (base + Int(SY_TP_OFF_RANKS) + r * Int(SY_TP_RANK_STRIDE) + Int(SY_TP_RANK_OFF_ACK)).assumingMemoryBound(to: UInt32.self)
    }

    // MARK: Abort and liveness

    /// Marks the group failed (first reason wins) and wakes every waiter; their waits throw.
    public func abort(reason: Int32 = Int32(SY_TP_ABORT_REQUESTED)) {
        if sy_tp_cas_u32(word(SY_TP_OFF_ABORTED), 0, UInt32(reason)) != 0 {
            sy_store_release_u32(word(SY_TP_OFF_ABORT_RANK), UInt32(rank >= 0 ? rank : Int(SY_TP_MAX_RANKS)))
        }
        _ = sy_futex_wake(word(SY_TP_OFF_STEP), Int32.max)
        _ = sy_futex_wake(word(SY_TP_OFF_ARRIVALS), Int32.max)
    }

    public var isAborted: Bool { sy_load_acquire_u32(word(SY_TP_OFF_ABORTED)) != 0 }

    private func abortedError() -> TPError {
        let why: String
        switch Int(sy_load_acquire_u32(word(SY_TP_OFF_ABORTED))) {
        case Int(SY_TP_ABORT_PEER_DIED): why = "a shard died"
        case Int(SY_TP_ABORT_DIVERGED): why = "a shard diverged"
        default: why = "abort requested"
        }
        let by = Int(sy_load_acquire_u32(word(SY_TP_OFF_ABORT_RANK)))
        return .aborted(by < size ? "\(why), seen by rank \(by)" : why)
    }

    /// Throws if the group is aborted or another rank has died (or never attached); see the file comment.
    public func checkPeers() throws {
        if isAborted { throw abortedError() }
        var waitingForAttach = false
        for r in 0..<size where r != rank {
            let pid = Int32(bitPattern: sy_load_acquire_u32(pidWord(r)))
            if pid == 0 {
                waitingForAttach = true
                let now = sy_monotonic_ns()
                if unattachedSince == 0 { unattachedSince = now }
                if Double(now - unattachedSince) / 1e9 > attachTimeout {
                    abort(reason: Int32(SY_TP_ABORT_PEER_DIED))
                    throw TPError.peerNeverAttached(rank: r, seconds: attachTimeout)
                }
                continue
            }
            if pidfds[r] < 0 {
                let f = sy_pidfd_open(pid, 0)
                if f < 0 {
                    if sy_errno() == ESRCH { abort(reason: Int32(SY_TP_ABORT_PEER_DIED)); throw TPError.peerDied(rank: r, pid: pid) }
                    // No pidfd support: fall back to kill(pid, 0) (fooled by zombies, see the file comment).
                    if kill(pid, 0) != 0 && sy_errno() == ESRCH { abort(reason: Int32(SY_TP_ABORT_PEER_DIED)); throw TPError.peerDied(rank: r, pid: pid) }
                    continue
                }
                pidfds[r] = f
            }
            var pfd = pollfd(fd: pidfds[r], events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 0) > 0 && pfd.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                abort(reason: Int32(SY_TP_ABORT_PEER_DIED))
                throw TPError.peerDied(rank: r, pid: pid)
            }
        }
        if !waitingForAttach { unattachedSince = 0 }
    }

    /// Waits until `done(*word)`: spins, then sleeps on the futex in slices, checking peers between slices.
    /// `sleepers` counts waiters inside FUTEX_WAIT so that wakers skip the syscall when nobody sleeps:
    /// the waiter increments it (seq_cst) BEFORE re-reading the word, the waker changes the word (seq_cst)
    /// BEFORE reading `sleepers`, so either the waker sees the sleeper or the sleeper sees the new word.
    @inline(__always)
    private func wait(_ w: UnsafeMutablePointer<UInt32>, sleepers: UnsafeMutablePointer<UInt32>,
                      until done: (UInt32) -> Bool) throws {
        for _ in 0..<spin {
            if done(sy_load_acquire_u32(w)) { return }
            sy_cpu_relax()
        }
        while true {
            try checkPeers()
            _ = sy_fetch_add_u32(sleepers, 1)
            let v = sy_load_acquire_u32(w)
            if done(v) { _ = sy_fetch_add_u32(sleepers, UInt32.max); return }
            _ = sy_futex_wait(w, v, TPGroup.sliceNs)
            _ = sy_fetch_add_u32(sleepers, UInt32.max)   // -1
            if done(sy_load_acquire_u32(w)) { return }
        }
    }

    // MARK: Barrier and all-reduce

    /// Rank r's partial for the next all-reduce: [maxBatchTokens][dim] floats in shared memory.
    public var ownPartial: UnsafeMutablePointer<Float> { partial(parity: Int(barriers & 1), rank: max(rank, 0)) }

    func partial(parity: Int, rank r: Int) -> UnsafeMutablePointer<Float> {
        partialBase + (parity * size + r) * slotFloats
    }

    /// Waits until every shard has arrived at this barrier (the group's n-th, counted by every handle).
    public func barrier() throws {
        guard rank >= 0 else { throw TPError.badArgument("the creator's handle takes no part in steps") }
        barriers &+= 1
        // Barrier n completes when the arrivals counter reaches n * size (mod 2^32; compared as a signed
        // distance, which is valid while no shard is 2^31 arrivals behind).
        let target = barriers &* UInt32(size)
        let arrivals = word(SY_TP_OFF_ARRIVALS)
        // seq_cst RMW: publishes this shard's partial (written before) to whoever observes the count.
        let now = sy_fetch_add_u32(arrivals, 1) &+ 1
        if now == target {
            if sy_load_acquire_u32(word(SY_TP_OFF_BARRIER_SLEEPERS)) != 0 { _ = sy_futex_wake(arrivals, Int32.max) }
            return
        }
        try wait(arrivals, sleepers: word(SY_TP_OFF_BARRIER_SLEEPERS)) { Int32(bitPattern: $0 &- target) >= 0 }
    }

    /// All-reduce of the partials of the current parity: after the barrier, x[i] += p_0[i] + ... in rank
    /// order for the first `rows` rows (each shard wrote its own slot through `ownPartial` before calling).
    /// `pool` (the engine's syk_pool) splits the sum across its threads for large batches.
    public func allReduce(rows: Int, addInto x: UnsafeMutablePointer<Float>, pool: OpaquePointer?) throws {
        // A partial slot holds maxBatchTokens rows: more would read past it into the next rank's slot.
        guard rows >= 0, rows <= maxBatchTokens else {
            throw TPError.badArgument("all-reduce of \(rows) rows; the group's slots hold 0...\(maxBatchTokens)")
        }
        let t0 = sy_monotonic_ns()
        let parity = Int(barriers & 1)
        try barrier()
        let t1 = sy_monotonic_ns()
        var task = TPReduceTask(x: x, partials: partial(parity: parity, rank: 0), slotFloats: slotFloats,
                                size: size, count: rows * dim)
        if let pool, task.count >= 1 << 14 {
            withUnsafeMutablePointer(to: &task) { syk_pool_run(pool, tpReduceRun, $0) }
        } else {
            withUnsafeMutablePointer(to: &task) { tpReduceRun($0, 0, 1) }
        }
        let t2 = sy_monotonic_ns()
        stats.calls += 1
        stats.waitNs &+= t1 - t0
        stats.totalNs &+= t2 - t0
        if let samples, sampleCount < sampleCapacity {
            samples[sampleCount] = UInt32(clamping: t2 - t0)
            sampleCount += 1
        }
    }

    /// Records each all-reduce's duration (ns) into a preallocated buffer of `capacity` samples.
    public func recordSamples(capacity: Int) {
        samples?.deallocate()
        samples = capacity > 0 ? .allocate(capacity: capacity) : nil
        sampleCapacity = max(capacity, 0)
        sampleCount = 0
    }

    /// The recorded all-reduce durations in nanoseconds.
    public var recordedSamples: [UInt32] { samples.map { Array(UnsafeBufferPointer(start: $0, count: sampleCount)) } ?? [] }

    public func resetStats() { stats = TPStats(); sampleCount = 0 }

    // MARK: Commands

    /// Leader: publishes `command` after every follower acknowledged the previous one.
    public func publish(_ command: TPCommand) throws {
        switch command {
        case .create(let slot, let maxContext): try publish(op: SY_TP_OP_CREATE, slot: slot, length: maxContext)
        case .release(let slot): try publish(op: SY_TP_OP_RELEASE, slot: slot, length: 0)
        case .truncate(let slot, let length): try publish(op: SY_TP_OP_TRUNCATE, slot: slot, length: length)
        case .shutdown: try publish(op: SY_TP_OP_SHUTDOWN, slot: 0, length: 0)
        case .forward(let items):
            try publishForward(itemCount: items.count) { i in (items[i].slot, items[i].position, items[i].tokens[...]) }
        }
    }

    /// Leader: publishes a forward command of `itemCount` items given by `item(i)` (no intermediate arrays).
    public func publishForward(itemCount: Int, item: (Int) -> (slot: Int, position: Int, tokens: ArraySlice<Int32>)) throws {
        guard itemCount >= 1, itemCount <= maxItems else { throw TPError.badArgument("forward of \(itemCount) items (limit \(maxItems))") }
        var total = 0
        for i in 0..<itemCount {
            let it = item(i)
            guard it.slot >= 0, it.slot <= Int(UInt32.max), it.position >= 0, it.position <= Int(UInt32.max), !it.tokens.isEmpty else {
                throw TPError.badArgument("forward item \(i): slot \(it.slot) position \(it.position) tokens \(it.tokens.count)")
            }
            total += it.tokens.count
        }
        guard total <= commandTokens else { throw TPError.badArgument("forward of \(total) tokens (limit \(commandTokens))") }
        try beginPublish()
        let area = commandArea
        let cmd = area.assumingMemoryBound(to: sy_tp_command.self)
        let items = (area + MemoryLayout<sy_tp_command>.size).assumingMemoryBound(to: sy_tp_item.self)
        let toks = (area + MemoryLayout<sy_tp_command>.size + maxItems * MemoryLayout<sy_tp_item>.size).assumingMemoryBound(to: Int32.self)
        var n = 0
        for i in 0..<itemCount {
            let it = item(i)
            items[i] = sy_tp_item(slot: UInt32(it.slot), position: UInt32(it.position), ntok: UInt32(it.tokens.count), _pad: 0)
            for t in it.tokens { toks[n] = t; n += 1 }
        }
        cmd.pointee = sy_tp_command()
        cmd.pointee.op = UInt32(SY_TP_OP_FORWARD)
        cmd.pointee.nitems = UInt32(itemCount)
        cmd.pointee.ntokens = UInt32(n)
        endPublish()
    }

    private func publish(op: Int, slot: Int, length: Int) throws {
        guard slot >= 0, slot <= Int(UInt32.max), length >= 0, length <= Int(UInt32.max) else {
            throw TPError.badArgument("command slot \(slot) length \(length)")
        }
        try beginPublish()
        let cmd = commandArea.assumingMemoryBound(to: sy_tp_command.self)
        cmd.pointee = sy_tp_command()
        cmd.pointee.op = UInt32(op)
        cmd.pointee.slot = UInt32(slot)
        cmd.pointee.length = UInt32(length)
        endPublish()
    }

    /// Waits until every follower acknowledged the current command (copied its payload), so the command
    /// area may be overwritten. Normally immediate: a follower acknowledges before it executes.
    private func beginPublish() throws {
        guard rank == 0 else { throw TPError.badArgument("only rank 0 publishes commands (this is rank \(rank))") }
        if isAborted { throw abortedError() }
        let step = sy_load_relaxed_u32(word(SY_TP_OFF_STEP))   // only this thread writes it
        for r in 1..<max(size, 1) {
            let a = ack(r)
            var spins = 0
            var lastCheck = sy_monotonic_ns()
            while sy_load_acquire_u32(a) != step {   // acquire: the follower finished reading the payload
                spins += 1
                if spins < spin { sy_cpu_relax(); continue }
                var ts = timespec(tv_sec: 0, tv_nsec: 20_000)
                nanosleep(&ts, nil)
                let now = sy_monotonic_ns()
                if now - lastCheck > UInt64(TPGroup.sliceNs) { try checkPeers(); lastCheck = now }
            }
        }
    }

    private func endPublish() {
        let step = word(SY_TP_OFF_STEP)
        // seq_cst RMW: releases the payload written above to followers that acquire-load `step`, and
        // orders before the read of step_sleepers (see `wait`).
        _ = sy_fetch_add_u32(step, 1)
        seenStep &+= 1
        if sy_load_acquire_u32(word(SY_TP_OFF_STEP_SLEEPERS)) != 0 { _ = sy_futex_wake(step, Int32.max) }
    }

    /// Follower: waits for the leader's next command (as long as the leader lives), copies it and
    /// acknowledges it. Throws when the group is aborted or the leader (or another shard) died.
    public func nextCommand() throws -> TPCommand {
        guard rank > 0 else { throw TPError.badArgument("only followers (rank > 0) receive commands") }
        let seen = seenStep
        try wait(word(SY_TP_OFF_STEP), sleepers: word(SY_TP_OFF_STEP_SLEEPERS)) { $0 != seen }
        let area = commandArea
        let cmd = area.load(as: sy_tp_command.self)
        let command: TPCommand
        switch Int(cmd.op) {
        case Int(SY_TP_OP_CREATE): command = .create(slot: Int(cmd.slot), maxContext: Int(cmd.length))
        case Int(SY_TP_OP_RELEASE): command = .release(slot: Int(cmd.slot))
        case Int(SY_TP_OP_TRUNCATE): command = .truncate(slot: Int(cmd.slot), length: Int(cmd.length))
        case Int(SY_TP_OP_SHUTDOWN): command = .shutdown
        case Int(SY_TP_OP_FORWARD):
            let n = Int(cmd.nitems), total = Int(cmd.ntokens)
            guard n >= 1, n <= maxItems, total <= commandTokens else { throw TPError.diverged("forward command with \(n) items, \(total) tokens") }
            let items = (area + MemoryLayout<sy_tp_command>.size).assumingMemoryBound(to: sy_tp_item.self)
            let toks = (area + MemoryLayout<sy_tp_command>.size + maxItems * MemoryLayout<sy_tp_item>.size).assumingMemoryBound(to: Int32.self)
            var out: [TPForwardItem] = []
            out.reserveCapacity(n)
            var off = 0
            for i in 0..<n {
                let it = items[i]
                let k = Int(it.ntok)
                guard k >= 1, off + k <= total else { throw TPError.diverged("forward item \(i) with \(k) tokens") }
                out.append(TPForwardItem(slot: Int(it.slot), position: Int(it.position), tokens: Array(UnsafeBufferPointer(start: toks + off, count: k))))
                off += k
            }
            command = .forward(out)
        default:
            throw TPError.diverged("unknown command op \(cmd.op)")
        }
        seenStep &+= 1
        sy_store_release_u32(ack(rank), seenStep)   // release: our reads of the payload happen before
        return command
    }
}

/// ctx of tpReduceRun: x[i] += Σ_r partials[r * slotFloats + i] (r in rank order) for i in 0..<count.
struct TPReduceTask {
    var x: UnsafeMutablePointer<Float>
    var partials: UnsafeMutablePointer<Float>
    var slotFloats: Int
    var size: Int
    var count: Int
}

/// syk_pool task: thread ith of nth handles a contiguous range of elements (a multiple of 16). Every
/// element gets ((x + p_0) + p_1) + ... — the same operations on every shard, whatever the split.
let tpReduceRun: @convention(c) (UnsafeMutableRawPointer?, Int32, Int32) -> Void = { ctx, ith, nth in
    guard let t = ctx?.assumingMemoryBound(to: TPReduceTask.self).pointee else { return }
    let blocks = (t.count + 15) / 16
    let lo = min(t.count, blocks * Int(ith) / Int(nth) * 16), hi = min(t.count, blocks * (Int(ith) + 1) / Int(nth) * 16)
    guard lo < hi else { return }
    let x = t.x
    for r in 0..<t.size {
        let p = t.partials + r * t.slotFloats
        for i in lo..<hi { x[i] += p[i] }
    }
}
