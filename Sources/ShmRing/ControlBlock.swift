import CSwitchyardSys
import SysKit

/// A worker's control block (layout: `sy_worker_control` in sy_control.h): one shared page, created by the
/// front, inherited by the worker. The worker is the only writer (release stores); the front reads
/// (acquire loads) to see liveness (the heartbeat) and load without a message round trip.
public final class ControlBlock: @unchecked Sendable {
    // @unchecked Sendable: each field has a single writer (the worker) and is accessed atomically.
    let memfd: MemFD
    let mapping: MemoryMapping
    let base: UnsafeMutableRawPointer

    public enum Field: Int {
        case heartbeat = 8, state = 16, running = 24, waiting = 32, cachedSessions = 40, cachedBytes = 48
        case tokensGenerated = 56, steps = 64, numaNode = 72, idleWaits = 80, idleWaitsShared = 88
    }

    public enum State: UInt64 { case starting = 0, ready = 1, stopping = 2 }

    /// Creates a fresh, zeroed control block (front side).
    public init() throws(SysError) {
        memfd = try MemFD(name: "switchyard-control", size: Int(SY_CONTROL_SIZE))
        mapping = try memfd.map()
        base = mapping.base
        sy_store_release_u64(word(0), SY_CONTROL_MAGIC)
        sy_store_release_u64(word(Field.numaNode.rawValue), .max)
    }

    /// Attaches to an inherited control block (worker side). Checks size and magic.
    public init(inheritedDescriptor fd: Int32) throws(RingError) {
        let fdOwner = FileDescriptor(adopting: fd)
        let m: MemFD
        do { m = try MemFD(adopting: fdOwner) } catch { throw .system(error) }
        guard m.size >= Int(SY_CONTROL_SIZE) else {
            throw .invalidArgument("control block is \(m.size) bytes, expected \(SY_CONTROL_SIZE)")
        }
        do { mapping = try m.map() } catch { throw .system(error) }
        memfd = m
        base = mapping.base
        guard sy_load_acquire_u64(base.assumingMemoryBound(to: UInt64.self)) == SY_CONTROL_MAGIC else {
            throw .invalidArgument("control block has a bad magic number")
        }
    }

    public var fileDescriptor: Int32 { memfd.fd.rawValue }

    @inline(__always) func word(_ offset: Int) -> UnsafeMutablePointer<UInt64> {
        (base + offset).assumingMemoryBound(to: UInt64.self)
    }

    /// Worker side: publish a value (release: everything written before is visible to a reader of it).
    @inline(__always) public func store(_ field: Field, _ value: UInt64) { sy_store_release_u64(word(field.rawValue), value) }

    /// Front side: read a value.
    @inline(__always) public func load(_ field: Field) -> UInt64 { sy_load_acquire_u64(word(field.rawValue)) }

    /// Worker side: one more beat (single writer, so load + store is enough).
    @inline(__always) public func beat() { store(.heartbeat, load(.heartbeat) &+ 1) }

    public var state: State { State(rawValue: load(.state)) ?? .starting }
}
