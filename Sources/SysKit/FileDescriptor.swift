import CSwitchyardSys
import Glibc

/// Owns one open file descriptor and closes it when dropped. Move-only, so a descriptor has exactly one
/// owner and no error path can leak or double-close it. `release()` hands the raw number out (the caller
/// then owns it); `take()` moves the owner.
public struct FileDescriptor: ~Copyable, Sendable {
    /// The raw descriptor number (valid while this owner lives).
    public let rawValue: Int32

    /// Takes ownership of `rawValue` (which must be an open descriptor nobody else closes).
    public init(adopting rawValue: Int32) {
        self.rawValue = rawValue
    }

    /// Gives up ownership without closing; the caller must close the returned number.
    public consuming func release() -> Int32 {
        let fd = rawValue
        discard self
        return fd
    }

    /// Moves this owner into a new binding (readable at call sites that hand an owner on).
    public consuming func take() -> FileDescriptor {
        FileDescriptor(adopting: release())
    }

    /// Closes now, reporting an error (the descriptor is gone either way; EINTR is not retried for
    /// close(2) on Linux, which always releases the number).
    public consuming func close() throws(SysError) {
        let fd = release()
        if Glibc.close(fd) != 0 { throw SysError.last("close") }
    }

    deinit {
        _ = Glibc.close(rawValue)
    }

    /// Whether FD_CLOEXEC is set.
    public func isCloseOnExec() throws(SysError) -> Bool {
        try retryOnEINTR("fcntl(F_GETFD)") { sy_fd_get_cloexec(rawValue) } == 1
    }

    public func setCloseOnExec(_ on: Bool) throws(SysError) {
        _ = try retryOnEINTR("fcntl(F_SETFD)") { sy_fd_set_cloexec(rawValue, on ? 1 : 0) }
    }

    public func setNonBlocking(_ on: Bool) throws(SysError) {
        _ = try retryOnEINTR("fcntl(F_SETFL)") { sy_fd_set_nonblocking(rawValue, on ? 1 : 0) }
    }

    /// dup(2) with FD_CLOEXEC set on the copy.
    public func duplicate() throws(SysError) -> FileDescriptor {
        FileDescriptor(adopting: try retryOnEINTR("fcntl(F_DUPFD_CLOEXEC)") { sy_fd_dup_min(rawValue, 0) })
    }

    /// Reads up to `buffer.count` bytes; returns 0 at end of file. EAGAIN is thrown (non-blocking fds).
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SysError) -> Int {
        try retryOnEINTR("read") { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// Writes up to `buffer.count` bytes; returns how many were written.
    public func write(_ buffer: UnsafeRawBufferPointer) throws(SysError) -> Int {
        try retryOnEINTR("write") { Glibc.write(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// Writes all of `buffer` (looping over short writes).
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws(SysError) {
        var done = 0
        while done < buffer.count {
            let rest = UnsafeRawBufferPointer(rebasing: buffer[done...])
            done += try write(rest)
        }
    }

    /// Reads exactly `buffer.count` bytes; returns false on end of file before the first byte, throws
    /// EPIPE-like `SysError(EIO, "read")` on end of file in the middle.
    public func readExactly(into buffer: UnsafeMutableRawBufferPointer) throws(SysError) -> Bool {
        var done = 0
        while done < buffer.count {
            let n = try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            if n == 0 {
                if done == 0 { return false }
                throw SysError(errno: EIO, call: "read (short)")
            }
            done += n
        }
        return true
    }

    /// Waits until the descriptor has one of `events` (POLLIN, ...) or `timeoutMs` passes (-1 = forever).
    /// Returns the revents (0 on timeout).
    public func poll(events: Int16, timeoutMs: Int32) throws(SysError) -> Int16 {
        var pfd = pollfd(fd: rawValue, events: events, revents: 0)
        let n = try retryOnEINTR("poll") { Glibc.poll(&pfd, 1, timeoutMs) }
        return n == 0 ? 0 : pfd.revents
    }
}

/// A connected pair of Unix stream sockets (both close-on-exec).
public struct SocketPair: ~Copyable, Sendable {
    public let first: FileDescriptor
    public let second: FileDescriptor

    public init() throws(SysError) {
        var fds: [Int32] = [-1, -1]
        _ = try retryOnEINTR("socketpair") {
            socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
        }
        first = FileDescriptor(adopting: fds[0])
        second = FileDescriptor(adopting: fds[1])
    }

    /// Keeps `first` and closes `second` (e.g. after handing `second` to a child).
    public consuming func keepingFirst() -> FileDescriptor {
        _ = second
        return first
    }
}

/// Counts this process's open descriptors (entries of /proc/self/fd, minus the one used to list them).
public func openDescriptorCount() throws(SysError) -> Int {
    guard let dir = opendir("/proc/self/fd") else { throw SysError.last("opendir(/proc/self/fd)") }
    defer { closedir(dir) }
    var count = 0
    while let entry = readdir(dir) {
        let isDot = withUnsafeBytes(of: entry.pointee.d_name) { raw in raw.first == UInt8(ascii: ".") }
        if !isDot { count += 1 }
    }
    return count - 1  // the directory stream's own descriptor
}

/// This process's open descriptors and what each refers to (the /proc/self/fd link target, e.g.
/// "socket:[1234]", "/memfd:name (deleted)", "anon_inode:[eventfd]"). Lets a test look for one specific
/// leaked object even while other threads open and close descriptors.
public func openDescriptorTargets() throws(SysError) -> [Int32: String] {
    guard let dir = opendir("/proc/self/fd") else { throw SysError.last("opendir(/proc/self/fd)") }
    defer { closedir(dir) }
    let own = dirfd(dir)
    var result: [Int32: String] = [:]
    var buffer = [CChar](repeating: 0, count: 512)
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        guard let fd = Int32(name), fd != own else { continue }
        let n = readlink("/proc/self/fd/\(name)", &buffer, buffer.count - 1)
        guard n >= 0 else { continue }  // closed meanwhile
        result[fd] = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    return result
}
