import CSwitchyardSys
import Glibc
import SysKit

/// A single-producer single-consumer ring of variable-length records in a memfd shared by two processes.
///
/// ## Memory layout (one memfd, mapped MAP_SHARED by both processes; `sy_ring_header` in sy_sys.h)
///
/// ```
/// offset  size  field              written by   meaning
///      0     8  magic              creator      0x474E495259535753 ("SWSYRING")
///      8     4  version            creator      1
///     12     4  flags              creator      bit 0: consumer is woken through an eventfd
///     16     8  capacity           creator      data bytes, power of two, 4 KiB ... 2 GiB
///     24     8  data_offset        creator      320
///     32     8  mapping_size       creator      data_offset + capacity (== memfd size, sealed)
///     40     4  closed             either       bit 0 producer closed, bit 1 consumer closed
///     64     8  head               producer     bytes ever published (monotonic, multiple of 8)
///    128     8  tail               consumer     bytes ever consumed (monotonic, multiple of 8)
///    192     4  consumer_sleeping  consumer     1 while the consumer waits for data
///    196     4  producer_wake      consumer     futex word the producer sleeps on (bumped to wake)
///    256     4  producer_sleeping  producer     1 while the producer waits for space
///    260     4  consumer_wake      producer     futex word the consumer sleeps on (bumped to wake)
///    320     -  data[capacity]                  records
/// ```
/// Offsets 0, 64, 128, 192 and 256 start separate 64-byte cache lines. Line 0 is read-only after creation
/// except `closed` (set once per side); every other line has a single writer: head
/// and tail (written on every commit / release) have lines of their own, and the sleeping flags (read by
/// the other side on every commit / release) live on lines written only around sleeping, so reading them
/// usually hits the reader's cache. Positions are byte counters that never wrap in practice (2^64 bytes); the byte offset of
/// a position is `position & (capacity - 1)`. Invariants both sides check on every load:
/// `tail <= head`, `head - tail <= capacity`, both multiples of 8, neither moves backwards.
///
/// A record is an 8-byte header `{ length: u32, type: u16, check: u16 }` followed by `length` payload
/// bytes and zero to seven bytes of padding up to a multiple of 8; payloads are therefore 8-byte aligned.
/// `check = 0xC35A ^ type ^ low16(length) ^ high16(length)` catches garbage headers. A record never
/// straddles the end of the data area: when it would, the producer first writes a padding record
/// (type 0xFFFF) that fills the data area exactly to its end, and the record starts at offset 0.
public final class ShmRing: @unchecked Sendable {
    // @unchecked Sendable: the immutable pointers may travel between threads; the words they point at
    // are only touched through the C11 atomics in sy_sys.h, and the SPSC protocol is enforced by only
    // ever creating one RingProducer and one RingConsumer per process side.

    /// The smallest and largest data capacities accepted.
    public static let minCapacity = 4096
    public static let maxCapacity = 1 << 31  // record lengths (incl. padding) are 32-bit

    let memfd: MemFD
    let mapping: MemoryMapping
    let base: UnsafeMutableRawPointer
    let data: UnsafeMutableRawPointer
    /// Data bytes (power of two).
    public let capacity: Int
    /// `flags` as read once at creation/attach.
    public let flags: UInt32

    /// Largest payload one record can carry (a record must fit in the data area).
    public var maxPayload: Int { min(capacity - 8, Int(UInt32.max) - 8) }

    /// Largest payload that fits whatever the write position, once the consumer has caught up: a record of
    /// up to half the data area (header included) either fits before the end or, after the padding record,
    /// at offset 0. A larger one fits only when the write offset happens to be at least its size, so a sender
    /// that must not stall on such luck refuses records above this.
    public var maxPayloadAnyOffset: Int { min(capacity / 2 - 8, maxPayload) }

    /// The memfd's descriptor number, to hand to a child (`InheritedDescriptor(ring.fileDescriptor, as: N)`)
    /// or over SCM_RIGHTS. It stays owned (and close-on-exec) here.
    public var fileDescriptor: Int32 { memfd.fd.rawValue }

    /// Whether the consumer is woken through an eventfd rather than FUTEX_WAKE.
    public var consumerUsesEventFD: Bool { flags & SY_RING_FLAG_CONSUMER_EVENTFD != 0 }

    /// Creates a fresh ring: a memfd of 320 + `capacity` bytes, sealed against resizing, mapped shared.
    /// Nothing appears in /dev/shm. Use a new ring (never an old one) for a respawned peer.
    public init(capacity: Int, consumerUsesEventFD: Bool = false, name: String = "switchyard-ring") throws(RingError) {
        guard capacity >= Self.minCapacity, capacity <= Self.maxCapacity, capacity & (capacity - 1) == 0 else {
            throw .invalidArgument("capacity \(capacity) must be a power of two in \(Self.minCapacity)...\(Self.maxCapacity)")
        }
        let size = Int(SY_RING_HEADER_SIZE) + capacity
        do {
            memfd = try MemFD(name: name, size: size, sealSize: true)
            mapping = try memfd.map()
        } catch {
            throw .system(error)
        }
        base = mapping.base
        data = mapping.base + Int(SY_RING_HEADER_SIZE)
        self.capacity = capacity
        self.flags = consumerUsesEventFD ? SY_RING_FLAG_CONSUMER_EVENTFD : 0
        // The memfd is zero-filled, so positions, wake words and flags start at 0. The configuration line
        // is written before the descriptor is handed to anyone (spawn/sendmsg order it for the peer).
        base.storeBytes(of: SY_RING_MAGIC, toByteOffset: Int(SY_RING_OFF_MAGIC), as: UInt64.self)
        base.storeBytes(of: SY_RING_VERSION, toByteOffset: Int(SY_RING_OFF_VERSION), as: UInt32.self)
        base.storeBytes(of: flags, toByteOffset: Int(SY_RING_OFF_FLAGS), as: UInt32.self)
        base.storeBytes(of: UInt64(capacity), toByteOffset: Int(SY_RING_OFF_CAPACITY), as: UInt64.self)
        base.storeBytes(of: UInt64(SY_RING_HEADER_SIZE), toByteOffset: Int(SY_RING_OFF_DATA_OFFSET), as: UInt64.self)
        base.storeBytes(of: UInt64(size), toByteOffset: Int(SY_RING_OFF_MAPPING_SIZE), as: UInt64.self)
    }

    /// Attaches to a ring created by another process, taking ownership of `fd` (e.g. an inherited
    /// descriptor: `FileDescriptor(adopting: 3)`). The whole header is validated against the real size of
    /// the memfd, and the size seals must be present (so the peer cannot truncate it under our mapping).
    public init(attaching fd: consuming FileDescriptor) throws(RingError) {
        do {
            memfd = try MemFD(adopting: fd)
            guard try memfd.isSizeSealed() else { throw RingError.corruptHeader("memfd is not sealed against resizing") }
            guard memfd.size >= Int(SY_RING_HEADER_SIZE) + Self.minCapacity else {
                throw RingError.corruptHeader("memfd of \(memfd.size) bytes is too small for a ring")
            }
            mapping = try memfd.map()
        } catch let error as RingError {
            throw error
        } catch let error as SysError {
            throw .system(error)
        } catch {
            throw .invalidArgument("\(error)")
        }
        base = mapping.base
        data = mapping.base + Int(SY_RING_HEADER_SIZE)
        let magic = base.load(fromByteOffset: Int(SY_RING_OFF_MAGIC), as: UInt64.self)
        let version = base.load(fromByteOffset: Int(SY_RING_OFF_VERSION), as: UInt32.self)
        let hflags = base.load(fromByteOffset: Int(SY_RING_OFF_FLAGS), as: UInt32.self)
        let cap = base.load(fromByteOffset: Int(SY_RING_OFF_CAPACITY), as: UInt64.self)
        let dataOffset = base.load(fromByteOffset: Int(SY_RING_OFF_DATA_OFFSET), as: UInt64.self)
        let mappingSize = base.load(fromByteOffset: Int(SY_RING_OFF_MAPPING_SIZE), as: UInt64.self)
        guard magic == SY_RING_MAGIC else { throw .corruptHeader("bad magic 0x\(String(magic, radix: 16))") }
        guard version == SY_RING_VERSION else { throw .corruptHeader("unsupported version \(version)") }
        guard hflags & ~SY_RING_FLAG_CONSUMER_EVENTFD == 0 else { throw .corruptHeader("unknown flags 0x\(String(hflags, radix: 16))") }
        guard dataOffset == UInt64(SY_RING_HEADER_SIZE) else { throw .corruptHeader("data offset \(dataOffset)") }
        guard cap >= UInt64(Self.minCapacity), cap <= UInt64(Self.maxCapacity), cap & (cap - 1) == 0 else {
            throw .corruptHeader("capacity \(cap) is not a power of two in range")
        }
        guard mappingSize == dataOffset + cap, mappingSize == UInt64(memfd.size) else {
            throw .corruptHeader("mapping size \(mappingSize) does not match capacity \(cap) / memfd size \(memfd.size)")
        }
        capacity = Int(cap)
        flags = hflags
        let head = sy_load_acquire_u64(word64(SY_RING_OFF_HEAD))
        let tail = sy_load_acquire_u64(word64(SY_RING_OFF_TAIL))
        guard tail <= head, head - tail <= cap, head & 7 == 0, tail & 7 == 0 else {
            throw .corruptHeader("positions head \(head) tail \(tail) are inconsistent")
        }
    }

    /// Attaches to an inherited descriptor number (the child side of spawning).
    public convenience init(inheritedDescriptor fd: Int32) throws(RingError) {
        try self.init(attaching: FileDescriptor(adopting: fd))
    }

    /// Raw view of the whole mapping (header + data), for tests that corrupt it on purpose.
    public var unsafeMapping: UnsafeMutableRawBufferPointer { mapping.bytes }

    /// Current published/consumed positions (a racy snapshot, for diagnostics).
    public var positions: (head: UInt64, tail: UInt64) {
        (sy_load_acquire_u64(word64(SY_RING_OFF_HEAD)), sy_load_acquire_u64(word64(SY_RING_OFF_TAIL)))
    }

    /// A 64-bit header word at `offset` (one of the SY_RING_OFF_* constants, asserted against the C struct).
    func word64(_ offset: Int32) -> UnsafeMutablePointer<UInt64> {
        (base + Int(offset)).assumingMemoryBound(to: UInt64.self)
    }

    /// A 32-bit header word at `offset`.
    func word32(_ offset: Int32) -> UnsafeMutablePointer<UInt32> {
        (base + Int(offset)).assumingMemoryBound(to: UInt32.self)
    }
}

/// How a blocked side waits: spin, then (optionally) sleep on the futex / eventfd.
public struct WaitPolicy: Sendable {
    /// Spin (PAUSE + re-check) for this long before sleeping.
    public var spinNanoseconds: UInt64
    /// Sleep after spinning (false: spin until the condition, a timeout or the peer's death).
    public var sleeps: Bool
    /// How often a waiting side checks that the peer is alive (also the futex sleep slice).
    public var peerCheckNanoseconds: UInt64
    /// After spinning this long without success, call sched_yield() between spins, so that a spinning side
    /// does not starve the other side when there are more runnable threads than CPUs.
    public var yieldAfterNanoseconds: UInt64

    public init(spinNanoseconds: UInt64, sleeps: Bool, peerCheckNanoseconds: UInt64 = 20_000_000,
                yieldAfterNanoseconds: UInt64 = 50_000) {
        self.spinNanoseconds = spinNanoseconds
        self.sleeps = sleeps
        self.peerCheckNanoseconds = max(1_000_000, peerCheckNanoseconds)
        self.yieldAfterNanoseconds = yieldAfterNanoseconds
    }

    /// Spin only: lowest latency, burns a core.
    public static let spin = WaitPolicy(spinNanoseconds: .max, sleeps: false)
    /// Spin briefly (`spinMicroseconds`), then futex-sleep.
    public static func futex(spinMicroseconds: UInt64 = 20) -> WaitPolicy {
        WaitPolicy(spinNanoseconds: spinMicroseconds * 1000, sleeps: true)
    }
    /// The default: 20 µs of spinning, then sleep.
    public static let `default` = futex()
}

/// Watches the process on the other side of a ring through a pidfd. A waiting side asks it every
/// `WaitPolicy.peerCheckNanoseconds`, so it learns of the peer's death within that interval.
public final class PeerMonitor: Sendable {
    let pidfd: PidFD
    public var pid: Int32 { pidfd.pid }

    /// Watches process `pid` (the caller must make sure `pid` is the intended process: a child not yet
    /// reaped, or the parent checked with `parent(expected:)`).
    public init(pid: Int32) throws(RingError) {
        do { pidfd = try PidFD(pid: pid) } catch { throw .system(error) }
    }

    /// Watches the parent; fails with `peerDied` if the parent is no longer `expected` (it died before
    /// we opened the pidfd and we were re-parented).
    public static func parent(expected: Int32) throws(RingError) -> PeerMonitor {
        let monitor: PeerMonitor
        do { monitor = try PeerMonitor(pid: getppid()) } catch { throw .peerDied(pid: expected) }
        // getppid() is checked after pidfd_open: if it still is `expected`, the pidfd is the parent's.
        guard getppid() == expected, monitor.pid == expected else { throw .peerDied(pid: expected) }
        return monitor
    }

    /// False once the peer has exited (a poll of the pidfd; a failing poll counts as dead).
    public func isAlive() -> Bool {
        (try? pidfd.hasExited()) == false
    }

    /// Sends a signal to the peer.
    public func send(signal: Int32) throws(RingError) {
        do { try pidfd.send(signal: signal) } catch { throw .system(error) }
    }
}

/// An eventfd shared between the rings of a process that wants to be woken in a poll/io_uring loop.
public final class RingNotifier: Sendable {
    public let eventFD: EventFD
    public init(_ eventFD: consuming EventFD) { self.eventFD = eventFD }
    /// A fresh non-blocking, close-on-exec eventfd.
    public convenience init() throws(RingError) {
        do { self.init(try EventFD()) } catch { throw .system(error) }
    }
    public var fileDescriptor: Int32 { eventFD.rawValue }
}

@inline(__always) func align8(_ n: UInt64) -> UInt64 { (n + 7) & ~7 }

/// Tracks a deadline and the next peer check during one wait.
struct WaitClock {
    let deadline: UInt64  // .max: none
    let peerEvery: UInt64
    var nextPeerCheck: UInt64

    init(timeoutNanoseconds: UInt64?, policy: WaitPolicy) {
        let now = sy_monotonic_ns()
        deadline = timeoutNanoseconds.map { now &+ $0 } ?? .max
        peerEvery = policy.peerCheckNanoseconds
        nextPeerCheck = now &+ policy.peerCheckNanoseconds
    }

    /// Throws if the deadline passed or (every peerEvery) the peer is dead.
    mutating func check(now: UInt64, peer: PeerMonitor?) throws(RingError) {
        if now >= nextPeerCheck {
            nextPeerCheck = now &+ peerEvery
            if let peer, !peer.isAlive() { throw .peerDied(pid: peer.pid) }
        }
        if now >= deadline { throw .timedOut }
    }

    /// How long the next futex sleep may last.
    func sleepSlice(now: UInt64) -> Int64 {
        let untilPeer = nextPeerCheck > now ? nextPeerCheck - now : 0
        let untilDeadline = deadline > now ? deadline - now : 0
        return Int64(clamping: max(50_000, min(untilPeer, untilDeadline)))
    }
}
