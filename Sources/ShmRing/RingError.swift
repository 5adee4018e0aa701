import SysKit

/// Everything that can go wrong with a ring. A peer is untrusted: anything it wrote that does not make
/// sense is reported as `corruptHeader` / `corruptRecord`, never read out of bounds.
public enum RingError: Error, Equatable, CustomStringConvertible, Sendable {
    /// A system call failed.
    case system(SysError)
    /// A caller passed a bad argument (capacity, record type, missing eventfd...).
    case invalidArgument(String)
    /// The shared header (magic, version, sizes, positions) does not make sense.
    case corruptHeader(String)
    /// The record at `position` (a byte counter) has a bad length, type, check or alignment.
    case corruptRecord(position: UInt64, reason: String)
    /// The payload is longer than the ring can ever hold (`max` bytes).
    case recordTooLarge(length: Int, max: Int)
    /// The peer process exited; `pid` is the peer's.
    case peerDied(pid: Int32)
    /// The peer closed its side of the ring and (for a consumer) everything it sent has been read.
    case closed
    /// A wait with a timeout ran out.
    case timedOut

    public var description: String {
        switch self {
        case .system(let e): "ring: \(e)"
        case .invalidArgument(let why): "ring: invalid argument: \(why)"
        case .corruptHeader(let why): "ring: corrupt header: \(why)"
        case .corruptRecord(let pos, let why): "ring: corrupt record at position \(pos): \(why)"
        case .recordTooLarge(let length, let max): "ring: record of \(length) bytes exceeds the maximum \(max)"
        case .peerDied(let pid): "ring: peer process \(pid) died"
        case .closed: "ring: closed by the peer"
        case .timedOut: "ring: timed out"
        }
    }
}
