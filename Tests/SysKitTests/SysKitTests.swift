import CSwitchyardSys
import Glibc
import SysKit
import Testing

private func devShmEntries() -> Set<String> {
    var names: Set<String> = []
    guard let dir = opendir("/dev/shm") else { return names }
    defer { closedir(dir) }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        names.insert(name)
    }
    return names
}

@Suite(.serialized) struct SysKitTests {
    @Test func sysErrorCarriesErrnoAndCall() {
        let e = SysError(errno: ENOENT, call: "open")
        #expect(e.errno == ENOENT)
        #expect(e.description.hasPrefix("open: "))
        #expect(e.description.contains("No such file"))
    }

    @Test func retryOnEINTRRetriesOnlyEINTR() throws {
        var calls = 0
        let result = try retryOnEINTR("fake") { () -> Int32 in
            calls += 1
            if calls < 3 {
                sy_set_errno(EINTR)
                return -1
            }
            return 42
        }
        #expect(result == 42)
        #expect(calls == 3)

        calls = 0
        #expect(throws: SysError(errno: EBADF, call: "fake")) {
            try retryOnEINTR("fake") { () -> Int32 in
                calls += 1
                sy_set_errno(EBADF)
                return -1
            }
        }
        #expect(calls == 1)
    }

    // Leak checks look for the specific objects a test created (unique memfd names, socket inodes, an
    // eventfd with a unique count), because other suites run in parallel in this process and open and close
    // descriptors of their own; the plain /proc/self/fd count is checked too where nothing else can race.

    @Test func fileDescriptorClosesOnDropAndNotOnRelease() throws {
        let tag = "leakcheck-\(getpid())-\(sy_monotonic_ns())"
        var socketInodes: [String] = []
        let magic: UInt32 = 0x5EED_1234
        do {
            let pair = try SocketPair()
            let efd = try EventFD(initialValue: magic)
            let memfd = try MemFD(name: tag, size: 4096)
            let mapping = try memfd.map()
            #expect(mapping.length == 4096)
            let targets = try openDescriptorTargets()
            socketInodes = [targets[pair.first.rawValue], targets[pair.second.rawValue]].compactMap { $0 }
            #expect(socketInodes.count == 2 && socketInodes.allSatisfy { $0.hasPrefix("socket:[") })
            #expect(targets.values.contains { $0.contains(tag) })
            #expect(eventFDsWithCount(magic) == 1)
            _ = efd.rawValue
        }
        let after = try openDescriptorTargets()
        #expect(!after.values.contains { $0.contains(tag) }, "memfd closed")
        #expect(!after.values.contains { socketInodes.contains($0) }, "sockets closed")
        #expect(eventFDsWithCount(magic) == 0, "eventfd closed")

        let raw: Int32
        let inode: String
        do {
            let fd = FileDescriptor(adopting: socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0))
            inode = try #require(try openDescriptorTargets()[fd.rawValue])
            raw = fd.release()
        }
        #expect(try openDescriptorTargets()[raw] == inode, "release() must not close")
        #expect(close(raw) == 0)
    }

    @Test func errorPathsDoNotLeak() throws {
        let tag = "errpath-\(getpid())-\(sy_monotonic_ns())"
        for _ in 0..<20 {
            #expect(throws: SysError.self) { _ = try MemFD(name: tag, size: -1) }
            #expect(throws: SysError.self) {
                let memfd = try MemFD(name: tag, size: 4096)
                _ = try MemoryMapping(shared: memfd.fd, length: 0)
            }
            #expect(throws: SysError.self) {
                _ = try ChildProcess.spawn(path: "/nonexistent/\(tag)", arguments: [])
            }
        }
        #expect(!(try openDescriptorTargets()).values.contains { $0.contains(tag) })
    }

    @Test func descriptorCountIsStable() throws {
        // The plain count, over many create/drop cycles: a leak of one descriptor per cycle would show up as
        // a growth of 200 that concurrent tests cannot hide.
        let before = try openDescriptorCount()
        for i in 0..<200 {
            let memfd = try MemFD(name: "count", size: 4096)
            _ = try memfd.map()
            _ = try EventFD()
            _ = try SocketPair()
            if i == 0 { #expect(try openDescriptorCount() > 0) }
        }
        #expect(try openDescriptorCount() < before + 100)
    }

    @Test func memfdIsSealedAgainstResizing() throws {
        let shmBefore = devShmEntries()
        let memfd = try MemFD(name: "sealed", size: 8192)
        #expect(try memfd.isSizeSealed())
        #expect(ftruncate(memfd.fd.rawValue, 4096) == -1)
        #expect(sy_errno() == EPERM)
        #expect(ftruncate(memfd.fd.rawValue, 16384) == -1)
        #expect(sy_memfd_add_seals(memfd.fd.rawValue, SY_F_SEAL_WRITE) == -1, "F_SEAL_SEAL forbids more seals")

        let unsealed = try MemFD(name: "unsealed", size: 8192, sealSize: false)
        #expect(try !unsealed.isSizeSealed())
        #expect(ftruncate(unsealed.fd.rawValue, 4096) == 0)

        // Data written through one mapping is seen through another (MAP_SHARED).
        let a = try memfd.map()
        let b = try memfd.map()
        a.base.storeBytes(of: 0xDEAD_BEEF, toByteOffset: 100, as: UInt32.self)
        #expect(b.base.load(fromByteOffset: 100, as: UInt32.self) == 0xDEAD_BEEF)
        #expect(devShmEntries() == shmBefore, "memfd must not appear in /dev/shm")
    }

    @Test func eventFDCounts() throws {
        let efd = try EventFD()
        #expect(try efd.consume() == nil)
        #expect(try !efd.wait(timeoutMs: 0))
        try efd.signal()
        try efd.signal(2)
        #expect(try efd.wait(timeoutMs: 0))
        #expect(try efd.consume() == 3)
        #expect(try efd.consume() == nil)
    }

    @Test func spawnInheritsDescriptorsAndReportsExit() throws {
        var inodes: [String] = []
        do {
            let pair = try SocketPair()
            // The child sees our socket as fd 5 (and, swapped, fd 6 -> a second dup) and writes to it.
            var child = try ChildProcess.spawn(
                path: "/bin/sh", arguments: ["-c", "echo hello >&5; exit 7"],
                inherit: [InheritedDescriptor(pair.second.rawValue, as: 5)])
            #expect(try child.wait() == .exited(7))
            var buffer = [UInt8](repeating: 0, count: 16)
            let n = try buffer.withUnsafeMutableBytes { try pair.first.read(into: $0) }
            #expect(String(decoding: buffer[0..<n], as: UTF8.self) == "hello\n")
            #expect(try pair.first.isCloseOnExec(), "our copy stays close-on-exec")
            let targets = try openDescriptorTargets()
            inodes = [targets[pair.first.rawValue], targets[pair.second.rawValue]].compactMap { $0 }
            // Exactly our two ends remain: the temporary copies made for spawning are closed.
            #expect(targets.values.filter { inodes.contains($0) }.count == 2)
        }
        #expect(!(try openDescriptorTargets()).values.contains { inodes.contains($0) })
    }

    @Test func spawnedChildDoesNotInheritOtherDescriptors() throws {
        let memfd = try MemFD(name: "private", size: 4096)
        #expect(memfd.size == 4096)
        var child = try ChildProcess.spawn(
            path: "/bin/sh", arguments: ["-c", "ls -l /proc/self/fd/ | grep -q memfd:private && exit 1; exit 0"])
        #expect(try child.wait() == .exited(0))
    }

    @Test func pidfdSeesDeathAndSignals() throws {
        var child = try ChildProcess.spawn(path: "/bin/sleep", arguments: ["30"])
        #expect(try !child.pidfd.hasExited())
        #expect(try child.wait(timeoutMs: 10) == nil)
        try child.send(signal: SIGKILL)
        #expect(try child.pidfd.waitForExit(timeoutMs: 2000))
        #expect(try child.wait() == .signaled(SIGKILL))
        #expect(throws: SysError.self) { _ = try PidFD(pid: 0x3fff_fff0) }
    }

    @Test func droppedChildIsKilledAndReaped() throws {
        let pid: pid_t
        do {
            let child = try ChildProcess.spawn(path: "/bin/sleep", arguments: ["30"])
            pid = child.pid
        }
        // Reaped: waitpid finds no such child.
        var status: Int32 = 0
        #expect(waitpid(pid, &status, WNOHANG) == -1)
        #expect(sy_errno() == ECHILD)
    }

    @Test func cpuAffinityRoundTrip() throws {
        let original = try CPUAffinity.get()
        #expect(!original.isEmpty)
        var result: [Int] = []
        // Run on a separate thread so the test runner's thread keeps its mask.
        let first = original[0]
        let box = ResultBox()
        let thread = try JoinableThread {
            do {
                try CPUAffinity.set([first])
                box.set(try CPUAffinity.get())
            } catch {
                box.set([])
            }
        }
        thread.join()
        result = box.get()
        #expect(result == [first])
        #expect(throws: SysError.self) { try CPUAffinity.set([]) }
        #expect(throws: SysError.self) { try CPUAffinity.set([100_000]) }
    }

    @Test func numaWrappersDegradeGracefully() throws {
        let cpus = try CPUAffinity.get()
        let node = try NUMA.node(ofCPU: cpus[0])
        #expect(node >= 0 && node <= NUMA.maxNode)
        if NUMA.isAvailable {
            #expect(try NUMA.cpus(ofNode: node).contains(cpus[0]))
        }
        #expect(throws: SysError.self) { try NUMA.setMemoryBinding(node: NUMA.maxNode + 1) }
    }
}

private final class ResultBox: @unchecked Sendable {
    // @unchecked: written by one thread before join(), read after it (join orders the accesses).
    private var value: [Int] = []
    func set(_ v: [Int]) { value = v }
    func get() -> [Int] { value }
}

/// How many of our eventfds hold `count` (from /proc/self/fdinfo).
private func eventFDsWithCount(_ count: UInt32) -> Int {
    guard let targets = try? openDescriptorTargets() else { return -1 }
    var found = 0
    for (fd, target) in targets where target.contains("eventfd") {
        guard let file = fopen("/proc/self/fdinfo/\(fd)", "r") else { continue }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, 256, file) != nil {
            let text = String(decoding: line.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if text.hasPrefix("eventfd-count:"), text.contains(String(count, radix: 16)) { found += 1 }
        }
    }
    return found
}
