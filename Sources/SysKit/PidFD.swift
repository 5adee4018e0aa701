import CSwitchyardSys
import Glibc

/// A pidfd (pidfd_open): a descriptor for a process that becomes readable when the process exits.
/// Unlike a pid it cannot be recycled, so liveness checks and signals reach the right process.
public struct PidFD: ~Copyable, Sendable {
    public let fd: FileDescriptor
    public let pid: pid_t

    /// Opens a pidfd for `pid` (close-on-exec). ESRCH if it is already gone.
    public init(pid: pid_t) throws(SysError) {
        self.fd = FileDescriptor(adopting: try retryOnEINTR("pidfd_open") { sy_pidfd_open(pid, 0) })
        self.pid = pid
    }

    /// True once the process has exited (non-blocking check).
    public func hasExited() throws(SysError) -> Bool {
        try fd.poll(events: Int16(POLLIN), timeoutMs: 0) != 0
    }

    /// Waits up to `timeoutMs` (-1 = forever) for the process to exit; true if it has.
    public func waitForExit(timeoutMs: Int32) throws(SysError) -> Bool {
        try fd.poll(events: Int16(POLLIN), timeoutMs: timeoutMs) != 0
    }

    /// Sends `signal` to the process (no race with pid reuse).
    public func send(signal: Int32) throws(SysError) {
        _ = try retryOnEINTR("pidfd_send_signal") { sy_pidfd_send_signal(fd.rawValue, signal) }
    }
}
