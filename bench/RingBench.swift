import ArgumentParser
import CSwitchyardSys
import Glibc
import Histogram
import ShmRing
import SysKit

/// `switchyard-bench ring`: round-trip latency (ring spin, ring futex, Unix socketpair baseline) and one-way
/// throughput between two processes. The second process is `switchyard-bench ring-peer` (hidden).
struct RingBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ring", abstract: "Shared-memory ring latency and throughput between two processes.")

    @Option(help: "Round trips per latency mode (throughput sends 20x as many records).") var messages: Int = 200_000
    @Option(help: "Payload bytes per message.") var size: Int = 64
    @Option(help: "Ring capacity in bytes (power of two).") var capacity: Int = 1 << 20
    @Option(help: "Records per commit in the throughput run.") var batch: Int = 32
    @Option(help: "Write JSON results to PATH ('-' for stdout).") var json: String?
    @Flag(help: "Do not pin the two processes to separate CPUs.") var noPin = false
    @Option(help: "Phases to run (comma-separated): uds, rtt, sleep (the always-sleep RTT alone), unpinned, local, throughput.") var phases = "uds,rtt,unpinned,local,throughput"

    func run() throws {
        guard messages > 0, size >= 8, size <= capacity / 4 else {
            throw ValidationError("--messages must be > 0 and --size in 8...capacity/4")
        }
        let exe = try currentExecutablePath()
        let cpus = try CPUAffinity.get()
        let pin = !noPin && cpus.count >= 2
        if pin { try CPUAffinity.set([cpus[0]]) }
        let childCPU = pin ? cpus[1] : -1
        var results: [(String, Double)] = []
        func log(_ s: String) { if json != "-" { print(s) } }

        log("ring bench: \(messages) round trips, \(size)-byte payloads, capacity \(capacity), pinned: \(pin)")
        let run = Set(phases.split(separator: ",").map(String.init))
        // Pinned: the two processes on two different CPUs (what spinning needs, and cross-CPU wake-ups for
        // the sleeping modes). Unpinned: the scheduler may run both on one CPU, where a wake-up needs no
        // inter-processor interrupt; the socket baseline and the always-sleeping futex mode are measured
        // both ways so that each comparison is like for like.
        if run.contains("uds") {
            let uds = try udsRoundTrips(exe: exe, childCPU: childCPU)
            results += summary("uds_rtt", uds.rtt) + uds.sleeps.summary("uds")
            log(describe("uds socketpair RTT (pinned)", uds.rtt) + uds.sleeps.describe)
        }
        let modes = [("spin", "spin", "ring spin RTT"),
                     ("futex", "futex-spin", "ring futex RTT (default policy: spin 20 us, then futex sleep)"),
                     ("futex_sleep", "futex", "ring futex RTT (always sleep, pinned)")]
        // "sleep" runs only the always-sleep mode (pinned), e.g. under `perf stat`.
        for (name, mode, label) in modes where run.contains("rtt") || (mode == "futex" && run.contains("sleep")) {
            let r = try ringRoundTrips(exe: exe, mode: mode, childCPU: childCPU)
            results += summary("\(name)_rtt", r.rtt) + r.sleeps.summary(name)
            log(describe(label, r.rtt) + r.sleeps.describe)
            if let oneWay = r.oneWay {
                results += summary("\(name)_oneway", oneWay)
                log(describe("  one-way wake-up (echo's commit to our return from waitForData)", oneWay))
            }
        }
        if run.contains("unpinned") {
            try CPUAffinity.set(cpus)
            let uds = try udsRoundTrips(exe: exe, childCPU: -1)
            results += summary("uds_unpinned_rtt", uds.rtt) + uds.sleeps.summary("uds_unpinned")
            log(describe("uds socketpair RTT (unpinned)", uds.rtt) + uds.sleeps.describe)
            let r = try ringRoundTrips(exe: exe, mode: "futex", childCPU: -1)
            results += summary("futex_sleep_unpinned_rtt", r.rtt) + r.sleeps.summary("futex_sleep_unpinned")
            log(describe("ring futex RTT (always sleep, unpinned)", r.rtt) + r.sleeps.describe)
            if let oneWay = r.oneWay {
                results += summary("futex_sleep_unpinned_oneway", oneWay)
                log(describe("  one-way wake-up (unpinned)", oneWay))
            }
            if pin { try CPUAffinity.set([cpus[0]]) }
        }

        let records = messages * 20
        if run.contains("local") {
            let localNs = try localCost(records: records)
            results.append(("local_ns_per_record", localNs))
            log("ring single-thread reserve+commit+drain: \(fmt(localNs)) ns/record (batch \(batch))")
        }
        for mode in ["spin", "futex-spin"] where run.contains("throughput") {
            let seconds = try ringThroughput(exe: exe, mode: mode, records: records, childCPU: childCPU)
            let rate = Double(records) / seconds
            let gbps = rate * Double(size) / 1e9
            let name = mode == "spin" ? "spin" : "futex"
            results.append(("\(name)_throughput_msgs_per_s", rate))
            results.append(("\(name)_throughput_gb_per_s", gbps))
            log("ring \(name) one-way: \(fmt(rate / 1e6)) M records/s, \(fmt(gbps)) GB/s payload (\(records) x \(size) B, batch \(batch))")
        }
        let best = max(results.first { $0.0 == "spin_throughput_msgs_per_s" }?.1 ?? 0,
                       results.first { $0.0 == "futex_throughput_msgs_per_s" }?.1 ?? 0)
        results.append(("throughput_msgs_per_s", best))
        results += [("messages", Double(messages)), ("size_bytes", Double(size)), ("pinned", pin ? 1 : 0)]

        if let json {
            let body = "{\n" + results.map { "  \"\($0.0)\": \(jsonNumber($0.1))" }.joined(separator: ",\n") + "\n}\n"
            if json == "-" {
                print(body, terminator: "")
            } else {
                guard let f = fopen(json, "w") else { throw SysError.last("fopen(\(json))") }
                fputs(body, f)
                fclose(f)
            }
        }
    }

    // MARK: Unix socketpair ping-pong baseline

    func udsRoundTrips(exe: String, childCPU: Int) throws -> (rtt: Histogram<UInt64>, sleeps: SleepCount) {
        let size = self.size, messages = self.messages
        let pair = try SocketPair()
        var child = try ChildProcess.spawn(
            path: exe, arguments: ["ring-peer", "--mode", "uds", "--size", "\(size)", "--cpu=\(childCPU)"],
            inherit: [InheritedDescriptor(pair.second.rawValue, as: 3)])
        let socket = pair.keepingFirst()  // our copy of the child's end is closed: its death reads as EOF
        var h = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 7)
        let warmup = min(10_000, messages / 10)
        var sleeps = SleepCount.start(roundTrips: warmup + messages)
        for i in 0..<(warmup + messages) {
            buffer.storeBytes(of: UInt64(i), as: UInt64.self)
            let t0 = sy_monotonic_ns()
            try socket.writeAll(UnsafeRawBufferPointer(buffer))
            guard try socket.readExactly(into: buffer) else { throw SysError(errno: EPIPE, call: "uds peer closed") }
            let t1 = sy_monotonic_ns()
            if i >= warmup { _ = h.record(t1 - t0) }
        }
        sleeps.stopSelf()
        _ = shutdown(socket.rawValue, Int32(SHUT_WR))  // EOF for the echo child
        _ = try child.wait()
        sleeps.stopChild()
        return (h, sleeps)
    }

    // MARK: Ring ping-pong

    func spawnRingPeer(exe: String, role: String, mode: String, childCPU: Int, count: Int) throws -> RingPeerProcess {
        let requests = try ShmRing(capacity: capacity)
        let responses = try ShmRing(capacity: capacity)
        let child = try ChildProcess.spawn(
            path: exe,
            arguments: ["ring-peer", "--mode", role, "--policy", mode, "--size", "\(size)", "--cpu=\(childCPU)",
                        "--count", "\(count)", "--parent", "\(getpid())"],
            inherit: [InheritedDescriptor(requests.fileDescriptor, as: 3),
                      InheritedDescriptor(responses.fileDescriptor, as: 4)])
        let channel = try RingChannel(sending: requests, receiving: responses, peer: PeerMonitor(pid: child.pid),
                                      policy: benchPolicy(mode))
        return RingPeerProcess(child: child, channel: channel)
    }

    /// Round trips through two rings. In the always-sleep mode ("futex") with payloads of at least 16
    /// bytes, the echo also stamps its send time into bytes 8..<16, which gives the one-way wake-up latency
    /// (the echo's clock read just before its commit + FUTEX_WAKE, to ours just after waitForData returns;
    /// CLOCK_MONOTONIC is one clock for all CPUs): the number to compare with a plain-C futex wait/wake
    /// figure, where an RTT holds two such wake-ups.
    func ringRoundTrips(exe: String, mode: String, childCPU: Int) throws
        -> (rtt: Histogram<UInt64>, oneWay: Histogram<UInt64>?, sleeps: SleepCount) {
        let size = self.size, messages = self.messages
        let warmup = min(10_000, messages / 10)
        let stamped = mode == "futex" && size >= 16
        var peer = try spawnRingPeer(exe: exe, role: "echo", mode: mode, childCPU: childCPU, count: warmup + messages)
        let channel = peer.channel
        // Hold the endpoints in locals: reading them through the channel in the loop retains/releases.
        let tx = channel.tx, rx = channel.rx
        var h = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var oneWay = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var sleeps = SleepCount.start(roundTrips: warmup + messages)
        for i in 0..<(warmup + messages) {
            let t0 = sy_monotonic_ns()
            let out = try tx.reserve(type: 1, length: size)
            out.storeBytes(of: UInt64(i), as: UInt64.self)
            tx.commit()
            var echoed: UInt64 = .max
            var sentAt: UInt64 = 0, wokeAt: UInt64 = 0
            while echoed == .max {
                try rx.waitForData()
                if stamped { wokeAt = sy_monotonic_ns() }
                try rx.drain { _, payload in
                    echoed = payload.load(as: UInt64.self)
                    if stamped { sentAt = payload.load(fromByteOffset: 8, as: UInt64.self) }
                }
            }
            let t1 = sy_monotonic_ns()
            guard echoed == UInt64(i) else { throw ValidationError("echo out of order: \(echoed) != \(i)") }
            if i >= warmup {
                _ = h.record(t1 - t0)
                if stamped, wokeAt >= sentAt { _ = oneWay.record(wokeAt - sentAt) }
            }
        }
        sleeps.stopSelf()
        channel.close()
        _ = try peer.child.wait()
        sleeps.stopChild()
        return (h, stamped ? oneWay : nil, sleeps)
    }

    // MARK: Single-thread cost (no cross-core traffic): the floor for the two-process numbers

    func localCost(records: Int) throws -> Double {
        // Option wrappers are slow to read (generic metadata look-ups): copy them out of the hot loops.
        let size = self.size, batch = self.batch
        let ring = try ShmRing(capacity: capacity)
        let tx = try RingProducer(ring: ring)
        let rx = try RingConsumer(ring: ring)
        var sum: UInt64 = 0
        let t0 = sy_monotonic_ns()
        var sent = 0
        while sent < records {
            for _ in 0..<batch {
                let out = try tx.reserve(type: 2, length: size)
                out.storeBytes(of: UInt64(sent), as: UInt64.self)
                sent += 1
            }
            tx.commit()
            try rx.drain { _, payload in sum &+= payload.load(as: UInt64.self) }
        }
        let t1 = sy_monotonic_ns()
        guard sum == UInt64(sent) * UInt64(sent - 1) / 2 else { throw ValidationError("local checksum mismatch") }
        return Double(t1 - t0) / Double(sent)
    }

    // MARK: One-way throughput

    func ringThroughput(exe: String, mode: String, records: Int, childCPU: Int) throws -> Double {
        let size = self.size, batch = self.batch
        var peer = try spawnRingPeer(exe: exe, role: "sink", mode: mode, childCPU: childCPU, count: records)
        let channel = peer.channel
        let tx = channel.tx  // a local: reading it through the channel in the loop retains/releases
        // Wait for the child's "ready" record so that process start-up is not timed.
        try channel.rx.waitForData(timeoutNanoseconds: 10_000_000_000)
        try channel.rx.drain { _, _ in }
        let t0 = sy_monotonic_ns()
        var sent = 0
        while sent < records {
            let out = try tx.reserve(type: 2, length: size)
            out.storeBytes(of: UInt64(sent), as: UInt64.self)
            sent += 1
            if sent % batch == 0 { tx.commit() }
        }
        tx.commit()
        // The sink answers with one record holding how many it received (and checked in order).
        var received: UInt64 = 0
        try channel.rx.waitForData(timeoutNanoseconds: 60_000_000_000)
        try channel.rx.drain { _, payload in received = payload.load(as: UInt64.self) }
        let t1 = sy_monotonic_ns()
        guard received == UInt64(records) else { throw ValidationError("sink saw \(received) of \(records) in order") }
        channel.close()
        _ = try peer.child.wait()
        return Double(t1 - t0) / 1e9
    }
}

struct RingPeerProcess: ~Copyable {
    var child: ChildProcess
    let channel: RingChannel
}

func benchPolicy(_ mode: String) -> WaitPolicy {
    switch mode {
    case "spin": .spin
    case "futex-spin": .futex(spinMicroseconds: 20)
    default: .futex(spinMicroseconds: 0)  // sleep as soon as there is nothing to do
    }
}

/// The bench's second process (hidden): `uds` echoes socket messages, `echo` echoes ring records, `sink`
/// counts ring records and reports the count.
struct RingBenchPeer: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ring-peer", abstract: "Ring bench peer.",
                                                    shouldDisplay: false)
    @Option var mode: String
    @Option var policy: String = "spin"
    @Option var size: Int = 64
    @Option var cpu: Int = -1
    @Option var count: Int = 0
    @Option var parent: Int32 = 0

    func run() throws {
        let size = self.size, count = self.count  // out of the option wrappers, for the hot loops
        if cpu >= 0 { try CPUAffinity.set([cpu]) }
        if mode == "uds" {
            let fd = FileDescriptor(adopting: 3)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 8), alignment: 8)
            defer { buffer.deallocate() }
            while try fd.readExactly(into: buffer) { try fd.writeAll(UnsafeRawBufferPointer(buffer)) }
            return
        }
        let channel = try RingChannel(sending: ShmRing(inheritedDescriptor: 4), receiving: ShmRing(inheritedDescriptor: 3),
                                      peer: .parent(expected: parent), policy: benchPolicy(policy))
        let rx = channel.rx, tx = channel.tx
        if mode == "echo" {
            // Always-sleep mode: stamp the send time into bytes 8..<16 of the last reply (see ringRoundTrips).
            let stamped = policy == "futex" && size >= 16
            var done = 0
            while done < count {
                try rx.waitForData()
                var last: UnsafeMutableRawBufferPointer?
                try rx.drain { type, payload in
                    // Echo in place: copy the request payload into a reply record.
                    if let out = try? tx.reserve(type: type, length: payload.count), let src = payload.baseAddress {
                        out.baseAddress?.copyMemory(from: src, byteCount: payload.count)
                        last = out
                    }
                    done += 1
                }
                if stamped, let last { last.storeBytes(of: sy_monotonic_ns(), toByteOffset: 8, as: UInt64.self) }
                tx.commit()
            }
        } else {
            let ready = try tx.reserve(type: 9, length: 8)
            ready.storeBytes(of: UInt64(0), as: UInt64.self)
            tx.commit()
            var received: UInt64 = 0
            while received < UInt64(count) {
                try rx.waitForData()
                try rx.drain { _, payload in
                    // Count only records that arrive in order (a lost or repeated one stops the count).
                    if payload.load(as: UInt64.self) == received { received += 1 }
                }
            }
            let out = try tx.reserve(type: 3, length: 8)
            out.storeBytes(of: received, as: UInt64.self)
            tx.commit()
        }
        // Wait for the parent to close (or die) so our last records are read before we exit.
        do { try rx.waitForData(timeoutNanoseconds: 10_000_000_000) } catch {}
    }
}

/// Voluntary context switches (getrusage ru_nvcsw) per round trip, of this process and of the peer: how
/// often each side really went to sleep (a FUTEX_WAIT or socket read that blocked). About 1 on both sides
/// means every round trip paid two sleeping wake-ups; about 0 means the mode spun.
struct SleepCount {
    let roundTrips: Int
    var selfStart: Int, childStart: Int
    var selfPerRTT = 0.0, childPerRTT = 0.0

    static func start(roundTrips: Int) -> SleepCount {
        SleepCount(roundTrips: max(1, roundTrips), selfStart: voluntarySwitches(RUSAGE_SELF.rawValue),
                   childStart: voluntarySwitches(RUSAGE_CHILDREN.rawValue))
    }
    /// After the last round trip.
    mutating func stopSelf() {
        selfPerRTT = Double(voluntarySwitches(RUSAGE_SELF.rawValue) - selfStart) / Double(roundTrips)
    }
    /// After the peer was reaped (RUSAGE_CHILDREN counts reaped children only; includes its start-up).
    mutating func stopChild() {
        childPerRTT = Double(voluntarySwitches(RUSAGE_CHILDREN.rawValue) - childStart) / Double(roundTrips)
    }
    func summary(_ prefix: String) -> [(String, Double)] {
        [("\(prefix)_self_sleeps_per_rtt", (selfPerRTT * 1000).rounded() / 1000),
         ("\(prefix)_peer_sleeps_per_rtt", (childPerRTT * 1000).rounded() / 1000)]
    }
    var describe: String { "; sleeps per RTT: ours \(fmt(selfPerRTT)), peer \(fmt(childPerRTT))" }
}

func voluntarySwitches(_ who: Int32) -> Int {
    var usage = rusage()
    guard getrusage(who, &usage) == 0 else { return 0 }
    return usage.ru_nvcsw
}

func summary(_ prefix: String, _ h: Histogram<UInt64>) -> [(String, Double)] {
    [("\(prefix)_p50_ns", Double(h.valueAtPercentile(50))), ("\(prefix)_p99_ns", Double(h.valueAtPercentile(99))),
     ("\(prefix)_p999_ns", Double(h.valueAtPercentile(99.9))), ("\(prefix)_mean_ns", h.mean)]
}

func describe(_ name: String, _ h: Histogram<UInt64>) -> String {
    "\(name): p50 \(fmt(Double(h.valueAtPercentile(50)) / 1000)) us, p99 \(fmt(Double(h.valueAtPercentile(99)) / 1000)) us, "
        + "p99.9 \(fmt(Double(h.valueAtPercentile(99.9)) / 1000)) us, mean \(fmt(h.mean / 1000)) us (n=\(h.totalCount))"
}

func fmt(_ x: Double) -> String {
    let scaled = (x * 100).rounded() / 100
    return "\(scaled)"
}

func jsonNumber(_ x: Double) -> String {
    guard x.isFinite else { return "null" }
    if x == x.rounded() && abs(x) < 1e15 { return "\(Int64(x))" }
    return "\(x)"
}
