import CSwitchyardSys
import Glibc
import ShmRing
import SysKit
import Testing

/// The `switchyard` executable: $SWITCHYARD_BIN_DIR, else .build/release or .build/debug under the package
/// root found by walking up from this file (the newest one that has the binary).
func switchyardExecutable(filePath: String = #filePath) throws -> String {
    if let dir = getenv("SWITCHYARD_BIN_DIR").map({ String(cString: $0) }), !dir.isEmpty {
        let path = dir + "/switchyard"
        try #require(access(path, X_OK) == 0, "SWITCHYARD_BIN_DIR=\(dir) has no switchyard executable")
        return path
    }
    var dir = filePath
    while let slash = dir.lastIndex(of: "/"), slash != dir.startIndex {
        dir = String(dir[..<slash])
        if access(dir + "/Package.swift", F_OK) == 0 { break }
    }
    var best: (path: String, mtime: Int)?
    for config in ["release", "debug"] {
        let path = "\(dir)/.build/\(config)/switchyard"
        var st = stat()
        if stat(path, &st) == 0, best == nil || st.st_mtim.tv_sec > best!.mtime {
            best = (path, st.st_mtim.tv_sec)
        }
    }
    return try #require(best?.path, "build the switchyard executable first (swift build --product switchyard)")
}

/// A parent-side channel to a spawned `switchyard ring-peer` child.
struct PeerSession: ~Copyable {
    var child: ChildProcess
    let channel: RingChannel
    let requests: ShmRing
    let responses: ShmRing

    init(mode: String, count: UInt64, stream: Bool = false, capacity: Int = 1 << 18) throws {
        let requests = try ShmRing(capacity: capacity)   // parent -> child
        let responses = try ShmRing(capacity: capacity)  // child -> parent
        var args = ["ring-peer", "--rx-fd", "3", "--tx-fd", "4", "--parent", "\(getpid())", "--count", "\(count)",
                    "--mode", mode, "--rx-seed", "11", "--tx-seed", "22"]
        if stream { args.append("--stream") }
        let child = try ChildProcess.spawn(
            path: try switchyardExecutable(), arguments: args,
            inherit: [InheritedDescriptor(requests.fileDescriptor, as: 3),
                      InheritedDescriptor(responses.fileDescriptor, as: 4)])
        let policy: WaitPolicy = mode == "spin" ? .spin : .default
        let channel = try RingChannel(sending: requests, receiving: responses, peer: PeerMonitor(pid: child.pid),
                                      policy: policy)
        self.channel = channel
        self.requests = requests
        self.responses = responses
        self.child = child
    }
}

/// Result of the parent's sending thread.
final class SendOutcome: @unchecked Sendable {
    // @unchecked: written by the helper thread before join(), read after join().
    var error: RingError?
    var time: UInt64 = 0
}

@Suite(.serialized) struct CrossProcessTests {
    static let records: UInt64 = 5_000_000

    func exchange(mode: String) throws {
        let shmBefore = try listDevShm()
        var session = try PeerSession(mode: mode, count: Self.records)
        let tx = session.channel.tx
        let outcome = SendOutcome()
        let sender = try JoinableThread {
            do throws(RingError) {
                // The child receives with seed 11 and sends with seed 22.
                try RingStress.send(tx, pattern: RingStressPattern(seed: 11), count: Self.records)
            } catch {
                outcome.error = error
            }
        }
        let problem = try RingStress.receive(session.channel.rx, pattern: RingStressPattern(seed: 22),
                                             count: Self.records)
        sender.join()
        #expect(problem == nil, "parent received: \(problem ?? "")")
        #expect(outcome.error == nil)
        let status = try session.child.wait()
        #expect(status == .exited(0), "child verified what it received (\(status))")
        #expect(try listDevShm() == shmBefore, "nothing appears in /dev/shm")
    }

    @Test func fiveMillionRecordsEachWaySpinning() throws {
        try exchange(mode: "spin")
    }

    @Test func fiveMillionRecordsEachWayFutex() throws {
        try exchange(mode: "futex")
    }

    @Test(arguments: ["spin", "futex"])
    func killedChildIsNoticedByABlockedConsumer(mode: String) throws {
        var session = try PeerSession(mode: mode, count: 0, stream: true)
        let rx = session.channel.rx
        let pattern = RingStressPattern(seed: 22)
        var next: UInt64 = 0
        // Receive (and verify) mid-stream, then SIGKILL the child and keep receiving.
        while next < 200_000 {
            try rx.waitForData()
            try rx.drain { type, payload in
                if pattern.verify(seq: next, type: type, payload: payload) != nil { next = .max / 2 }
                next += 1
            }
        }
        #expect(next < .max / 2, "stream records verified")
        // An independent observer notes when the kernel reports the child gone (its pidfd readable): under
        // heavy machine load, carrying out a SIGKILL can itself take a while, which is not ours to measure.
        let died = SendOutcome()
        let observer = try PidFD(pid: session.child.pid)
        let observerFD = observer.fd.rawValue
        let watcher = try JoinableThread {
            var pfd = pollfd(fd: observerFD, events: Int16(POLLIN), revents: 0)
            while poll(&pfd, 1, 10_000) < 0 && sy_errno() == EINTR {}
            died.time = sy_monotonic_ns()
        }
        try session.child.send(signal: SIGKILL)
        let killedAt = sy_monotonic_ns()
        var outcome: RingError?
        do {
            while true {
                try rx.waitForData(timeoutNanoseconds: 5_000_000_000)  // a bug shows as timedOut, not a hang
                try rx.drain { _, _ in }
            }
        } catch {
            outcome = error
        }
        let noticed = sy_monotonic_ns()
        watcher.join()
        let exitMs = Double(Int64(bitPattern: died.time &- killedAt)) / 1e6
        let noticedMs = Double(Int64(bitPattern: noticed &- max(died.time, killedAt))) / 1e6  // < 0: before the observer
        #expect(outcome == .peerDied(pid: session.child.pid))
        #expect(noticedMs < 100, "\(mode): noticed \(noticedMs) ms after the child was gone (\(exitMs) ms after SIGKILL)")
        #expect(exitMs < 5000, "the kernel took \(exitMs) ms to carry out SIGKILL")
        #expect(try session.child.wait() == .signaled(SIGKILL))
    }

    @Test func killedChildIsNoticedByABlockedProducerAndTheRingIsRecreated() throws {
        for attempt in 0..<2 {
            // The child streams to us and never reads, so our producer fills the ring and blocks.
            var session = try PeerSession(mode: "futex", count: 0, stream: true, capacity: 4096)
            let tx = session.channel.tx
            let pid = session.child.pid
            let killedAt = SendOutcome()
            let died = SendOutcome()
            let observer = try PidFD(pid: pid)
            let observerFD = observer.fd.rawValue
            let killer = try JoinableThread {
                usleep(50_000)
                killedAt.time = sy_monotonic_ns()
                _ = kill(pid, SIGKILL)  // safe by pid: the child is not reaped until the test waits for it
                // Note when the kernel reports the child gone (see the consumer test).
                var pfd = pollfd(fd: observerFD, events: Int16(POLLIN), revents: 0)
                while poll(&pfd, 1, 10_000) < 0 && sy_errno() == EINTR {}
                died.time = sy_monotonic_ns()
            }
            var outcome: RingError?
            var blockedAt: UInt64 = 0
            do {
                while true {
                    let buffer = try tx.reserve(type: 1, length: 100, timeoutNanoseconds: 5_000_000_000)
                    buffer.initializeMemory(as: UInt8.self, repeating: 1)
                    blockedAt = sy_monotonic_ns()
                }
            } catch {
                outcome = error
            }
            let noticed = sy_monotonic_ns()
            killer.join()
            #expect(outcome == .peerDied(pid: pid), "attempt \(attempt)")
            // The producer blocked (the ring filled) before the kill, and gave up within 100 ms of it.
            #expect(blockedAt > 0 && blockedAt < killedAt.time, "the ring filled before the kill")
            let noticedMs = Double(Int64(bitPattern: noticed &- max(killedAt.time, died.time))) / 1e6
            #expect(noticedMs < 100, "noticed \(noticedMs) ms after the child was gone")
            #expect(died.time &- killedAt.time < 5_000_000_000, "the kernel carried out SIGKILL")
            #expect(try session.child.wait() == .signaled(SIGKILL))
        }
        // A fresh pair of rings for a respawned peer works end to end.
        var session = try PeerSession(mode: "futex", count: 10_000)
        let tx = session.channel.tx
        let sender = try JoinableThread { try? RingStress.send(tx, pattern: RingStressPattern(seed: 11), count: 10_000) }
        let problem = try RingStress.receive(session.channel.rx, pattern: RingStressPattern(seed: 22), count: 10_000)
        sender.join()
        #expect(problem == nil)
        #expect(try session.child.wait() == .exited(0))
    }
}

func listDevShm() throws -> Set<String> {
    var names: Set<String> = []
    guard let dir = opendir("/dev/shm") else { return names }
    defer { closedir(dir) }
    while let entry = readdir(dir) {
        names.insert(withUnsafeBytes(of: entry.pointee.d_name) {
            String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self)
        })
    }
    return names
}
