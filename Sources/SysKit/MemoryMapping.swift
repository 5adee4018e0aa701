import CSwitchyardSys
import Glibc

/// Owns an mmap(2) region and unmaps it when dropped.
public struct MemoryMapping: ~Copyable, @unchecked Sendable {
    // @unchecked: the pointer is to shared memory whose synchronization is the user's protocol
    // (ShmRing uses atomics on it); the owner itself is move-only.
    public let base: UnsafeMutableRawPointer
    public let length: Int

    /// Maps `length` bytes of `fd` at `offset`, read-write, MAP_SHARED.
    public init(shared fd: borrowing FileDescriptor, length: Int, offset: Int = 0) throws(SysError) {
        guard length > 0 else { throw SysError(errno: EINVAL, call: "mmap (length 0)") }
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, off_t(offset))
        guard let p, p != MAP_FAILED else { throw SysError.last("mmap") }
        self.base = p
        self.length = length
    }

    /// Anonymous private mapping (zero-filled), for tests and scratch buffers.
    public init(anonymous length: Int) throws(SysError) {
        guard length > 0 else { throw SysError(errno: EINVAL, call: "mmap (length 0)") }
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw SysError.last("mmap") }
        self.base = p
        self.length = length
    }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: length) }

    deinit {
        _ = munmap(base, length)
    }
}

/// An anonymous memory file (memfd_create): never visible in /dev/shm or any file system, shared with a
/// child process by passing the descriptor (inheritance or SCM_RIGHTS).
public struct MemFD: ~Copyable, Sendable {
    public let fd: FileDescriptor
    public let size: Int

    /// Creates a close-on-exec, sealable memfd of `size` bytes (zero-filled) and, when `sealSize`, seals it
    /// against shrinking and growing (so a peer cannot truncate it under our mapping: SIGBUS) and against
    /// adding further seals.
    public init(name: String, size: Int, sealSize: Bool = true) throws(SysError) {
        guard size > 0 else { throw SysError(errno: EINVAL, call: "memfd size 0") }
        let raw = try retryOnEINTR("memfd_create") {
            sy_memfd_create(name, SY_MFD_CLOEXEC | SY_MFD_ALLOW_SEALING)
        }
        let fd = FileDescriptor(adopting: raw)
        _ = try retryOnEINTR("ftruncate") { ftruncate(fd.rawValue, off_t(size)) }
        if sealSize {
            _ = try retryOnEINTR("fcntl(F_ADD_SEALS)") {
                sy_memfd_add_seals(fd.rawValue, SY_F_SEAL_SHRINK | SY_F_SEAL_GROW | SY_F_SEAL_SEAL)
            }
        }
        self.fd = fd
        self.size = size
    }

    /// Adopts a memfd received from elsewhere (e.g. inherited from the parent); its size is read with
    /// fstat, so a lying peer cannot make us map past the end of the file.
    public init(adopting fd: consuming FileDescriptor) throws(SysError) {
        var st = stat()
        _ = try retryOnEINTR("fstat") { fstat(fd.rawValue, &st) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw SysError(errno: EINVAL, call: "memfd (not a file)") }
        self.size = Int(st.st_size)
        self.fd = fd
    }

    /// The F_SEAL_* bits currently set.
    public func seals() throws(SysError) -> Int32 {
        try retryOnEINTR("fcntl(F_GET_SEALS)") { sy_memfd_get_seals(fd.rawValue) }
    }

    /// Whether the size can no longer change (SHRINK and GROW seals both set).
    public func isSizeSealed() throws(SysError) -> Bool {
        let s = try seals()
        return s & SY_F_SEAL_SHRINK != 0 && s & SY_F_SEAL_GROW != 0
    }

    /// Maps the whole file MAP_SHARED read-write.
    public func map() throws(SysError) -> MemoryMapping {
        try MemoryMapping(shared: fd, length: size)
    }
}
