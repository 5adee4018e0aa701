import CSwitchyardSys
import Glibc

/// An eventfd(2) counter: `signal` adds to it, `consume` reads and resets it. Used to wake a process that
/// sleeps in poll/io_uring rather than on a futex.
public struct EventFD: ~Copyable, Sendable {
    public let fd: FileDescriptor

    /// A close-on-exec eventfd (non-blocking by default, as an io_uring loop wants it).
    public init(initialValue: UInt32 = 0, nonBlocking: Bool = true) throws(SysError) {
        let flags = SY_EFD_CLOEXEC | (nonBlocking ? SY_EFD_NONBLOCK : 0)
        fd = FileDescriptor(adopting: try retryOnEINTR("eventfd") { sy_eventfd(initialValue, flags) })
    }

    /// Adopts an inherited eventfd descriptor.
    public init(adopting fd: consuming FileDescriptor) {
        self.fd = fd
    }

    public var rawValue: Int32 { fd.rawValue }

    /// Adds `value` to the counter (wakes pollers). A counter at its maximum (EAGAIN) already wakes them.
    public func signal(_ value: UInt64 = 1) throws(SysError) {
        var v = value
        do {
            _ = try retryOnEINTR("write(eventfd)") { Glibc.write(fd.rawValue, &v, 8) }
        } catch where error.errno == EAGAIN {
            return
        }
    }

    /// Reads and resets the counter: nil if it was zero (non-blocking fd), else its value.
    public func consume() throws(SysError) -> UInt64? {
        var v: UInt64 = 0
        do {
            _ = try retryOnEINTR("read(eventfd)") { Glibc.read(fd.rawValue, &v, 8) }
        } catch where error.errno == EAGAIN {
            return nil
        }
        return v
    }

    /// Waits up to `timeoutMs` for the counter to become non-zero; true if it is.
    public func wait(timeoutMs: Int32) throws(SysError) -> Bool {
        try fd.poll(events: Int16(POLLIN), timeoutMs: timeoutMs) & Int16(POLLIN) != 0
    }
}
