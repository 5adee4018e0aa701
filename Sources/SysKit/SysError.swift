import CSwitchyardSys
import Glibc

/// A failed system call: the `errno` it left and the name of the call (e.g. "memfd_create").
public struct SysError: Error, Equatable, CustomStringConvertible, Sendable {
    public let errno: Int32
    public let call: String

    public init(errno: Int32, call: String) {
        self.errno = errno
        self.call = call
    }

    /// The current thread's errno, attributed to `call`.
    public static func last(_ call: String) -> SysError {
        SysError(errno: sy_errno(), call: call)
    }

    public var description: String {
        let message = strerror(errno).map { String(cString: $0) } ?? "errno \(errno)"
        return "\(call): \(message) (errno \(errno))"
    }
}

/// Runs `body` (a raw system call that returns -1 and sets errno on failure) and retries it while it
/// fails with EINTR. This is the only place in Switchyard that retries EINTR.
/// Returns the call's non-negative result; throws any other failure as `SysError(errno, call)`.
@inlinable
public func retryOnEINTR<T: BinaryInteger>(_ call: String, _ body: () -> T) throws(SysError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let err = sy_errno()
        if err != EINTR { throw SysError(errno: err, call: call) }
    }
}
