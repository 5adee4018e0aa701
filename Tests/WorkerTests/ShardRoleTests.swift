// The process side of tensor-parallel groups: shard roles and the echo engine's group memory (the leader
// sizes the front's empty memfd and publishes it; followers wait for it, check the size, count themselves in).
import CSwitchyardSys
import Glibc
import Testing
@testable import Worker

/// An empty memfd, as the front creates one per group.
func emptyMemfd() throws -> Int32 {
    let fd = sy_memfd_create("shard-test", SY_MFD_CLOEXEC | SY_MFD_ALLOW_SEALING)
    try #require(fd >= 0, "memfd_create: errno \(errno)")
    return fd
}

@Suite struct ShardRoleTests {
    @Test func rolesAreValidated() throws {
        try ShardRole.whole.validate()
        try ShardRole(rank: 1, size: 2, groupFD: 3).validate()
        let bad: [(ShardRole, String)] = [
            (ShardRole(rank: 0, size: 0, groupFD: 3), "--tp-size 0"),
            (ShardRole(rank: 0, size: ShardRole.maxSize + 1, groupFD: 3), "--tp-size \(ShardRole.maxSize + 1)"),
            (ShardRole(rank: 2, size: 2, groupFD: 3), "--tp-rank 2"),
            (ShardRole(rank: -1, size: 2, groupFD: 3), "--tp-rank -1"),
            (ShardRole(rank: 1, size: 2, groupFD: -1), "--tp-fd"),
        ]
        for (role, text) in bad {
            #expect(throws: WorkerError.self) { try role.validate() }
            do { try role.validate() } catch { #expect("\(error)".contains(text), "\(role): \(error)") }
        }
    }

    @Test func echoGroupMemoryIsPublishedByTheLeaderAndJoinedByFollowers() throws {
        let fd = try emptyMemfd()
        defer { close(fd) }
        // Nothing published yet: a follower gives up after its timeout instead of waiting forever.
        #expect(throws: WorkerError.self) {
            _ = try EchoGroupMemory.attach(fd: fd, rank: 1, size: 3, timeoutSeconds: 0.05, parentPID: 0)
        }
        let leader = try EchoGroupMemory.create(fd: fd, size: 3)
        var st = stat()
        #expect(fstat(fd, &st) == 0 && Int(st.st_size) == EchoGroupMemory.byteCount)
        #expect(leader.attached == 0)
        #expect(throws: WorkerError.self) { try leader.waitForFollowers(timeoutSeconds: 0.05, parentPID: 0) }
        let f1 = try EchoGroupMemory.attach(fd: fd, rank: 1, size: 3, timeoutSeconds: 1, parentPID: 0)
        let f2 = try EchoGroupMemory.attach(fd: fd, rank: 2, size: 3, timeoutSeconds: 1, parentPID: 0)
        try leader.waitForFollowers(timeoutSeconds: 1, parentPID: 0)
        #expect(leader.attached == 2)
        // A follower told a different group size refuses the memory.
        #expect(throws: WorkerError.self) {
            _ = try EchoGroupMemory.attach(fd: fd, rank: 1, size: 2, timeoutSeconds: 1, parentPID: 0)
        }
        #expect(!f1.isShutDown && !f2.isShutDown)
        leader.shutdown()
        #expect(f1.followUntilShutdown(parentPID: 0) == 0)
        #expect(f2.isShutDown)
    }

    @Test func aDescriptorThatIsNotAMemfdIsRefused() throws {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        #expect(throws: WorkerError.self) {
            _ = try EchoGroupMemory.attach(fd: fds[0], rank: 1, size: 2, timeoutSeconds: 0.05, parentPID: 0)
        }
    }
}
