// NUMA placement end to end (issue 6): `--numa auto` with topologies injected through
// SWITCHYARD_NUMA_TOPOLOGY (laid out like /sys/devices/system/node), so 2- and 4-node placements run on a
// one-node machine. Echo workers: placement does not depend on the engine.
import ClientKit
import Foundation
import Glibc
import SysKit
import Testing

/// Writes DIR/nodeN/cpulist for each node.
func writeTopology(_ nodes: [[Int]]) throws -> String {
    let dir = try Paths.tempDir()
    for (i, cpus) in nodes.enumerated() {
        try FileManager.default.createDirectory(atPath: "\(dir)/node\(i)", withIntermediateDirectories: true)
        try (cpus.map(String.init).joined(separator: ",") + "\n").write(toFile: "\(dir)/node\(i)/cpulist", atomically: true, encoding: .utf8)
    }
    return dir
}

/// Two CPUs this process may run on (the same one twice on a one-CPU machine).
func twoUsableCPUs() -> (Int, Int) {
    let mine = Proc.allowedCPUs(getpid())
    return (mine.first ?? 0, mine.dropFirst().first ?? mine.first ?? 0)
}

@Suite(.serialized) struct PlacementEndToEndTests {
    /// Workers land on their nodes' CPUs and each worker's affinity matches the log.
    func check(nodes: [[Int]], workers: Int) throws {
        let topo = try writeTopology(nodes)
        defer { try? FileManager.default.removeItem(atPath: topo) }
        try withServer(["--engine", "echo", "--workers", "\(workers)", "--numa", "auto"],
                       env: ["SWITCHYARD_NUMA_TOPOLOGY": topo]) { s in
            let log = s.log
            // Nodes without CPUs hold no workers; the log lists the others.
            #expect(log.contains("topology: " + nodes.indices.filter { !nodes[$0].isEmpty }
                        .map { "node\($0)=\(nodes[$0].count) cpus" }.joined(separator: ", ") + ";"),
                    "the log does not show the injected topology:\n\(log.prefix(600))")
            var usedNodes = Set<Int>()
            for id in 0..<workers {
                let p = try #require(placementInLog(log, worker: id), "no placement for worker \(id) in the log")
                let node = try #require(p.node, "worker \(id) has no node")
                #expect(nodes.indices.contains(node))
                #expect(p.cpus.isSubset(of: Set(nodes[node])), "worker \(id) on node \(node) got CPUs \(p.cpus) outside the node")
                usedNodes.insert(node)
            }
            // Spread: as many distinct nodes as workers allow, among the nodes that have CPUs.
            let nodesWithCPUs = nodes.filter { !$0.isEmpty }.count
            #expect(usedNodes.count == min(workers, nodesWithCPUs), "workers on nodes \(usedNodes)")
            checkPinning(s, workers: workers)
            // Every worker serves.
            let r = try s.request("POST", "/v1/completions", json: ["prompt": "placed", "max_tokens": 8])
            #expect(r.head.status == 200)
        }
    }

    @Test func twoNodes() throws {
        let (a, b) = twoUsableCPUs()
        try check(nodes: [[a], [b]], workers: 2)
    }

    @Test func fourNodesTwoWithoutCPUs() throws {
        let (a, b) = twoUsableCPUs()
        // Nodes 0 and 2 hold memory only (no CPUs), as on some real machines; the workers go to 1 and 3.
        try check(nodes: [[], [a], [], [b]], workers: 2)
    }
}

/// Pins the calling thread to `cpu`.
func pinThisThread(to cpu: Int) -> Bool { (try? CPUAffinity.set([cpu])) != nil }

/// `serve --front-placement` (issue 5): with one CPU of its own, the front trades CPUs with a worker whose
/// CPU its client runs on (follow, the default), and keeps its CPU with `fixed`.
@Suite(.serialized) struct FrontPlacementEndToEndTests {
    /// Keep-alive round trips from a thread pinned to `cpu` until `until()` holds or `seconds` pass.
    /// Returns how many round trips were made.
    func clientLoop(_ s: Server, cpu: Int, seconds: Double, until: @escaping @Sendable () -> Bool) -> Int {
        final class Box: @unchecked Sendable { var count = 0; var error: String? }   // written before `done`
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        let endpoint = s.endpoint
        let t = Thread {
            defer { done.signal() }
            guard pinThisThread(to: cpu) else { box.error = "cannot pin the client to cpu \(cpu)"; return }
            let c = HTTPConnection(endpoint: endpoint, timeout: 10)
            defer { c.close() }
            let body = Array(#"{"prompt":"h","max_tokens":1}"#.utf8)
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline && !until() {
                for _ in 0..<200 {
                    guard let r = try? c.request(method: "POST", path: "/v1/completions", headers: [], body: body),
                          r.head.status == 200 else { box.error = "a request failed"; return }
                    box.count += 1
                }
            }
        }
        t.start()
        done.wait()
        #expect(box.error == nil, "\(box.error ?? "")")
        return box.count
    }

    func cpus(_ pid: pid_t) -> [Int] { Proc.allowedCPUs(pid) }

    /// Every worker on a CPU of its own and the front on the last one (so the rule applies on any machine
    /// with two or more CPUs); --policy client-hash sends this client's requests to one worker. Nil on one
    /// CPU (nothing to trade) and on several NUMA nodes (this client's worker may sit on another node than
    /// the front, and the front never trades across nodes).
    /// tools/test runs this suite on its own: the front trades only while its own CPU is quiet, and the
    /// other suites' servers pin their fronts to that same CPU.
    func args(_ placement: String) -> [String]? {
        let mine = Proc.allowedCPUs(getpid())
        guard mine.count >= 2, access("/sys/devices/system/node/node1", F_OK) != 0 else { return nil }
        return ["--engine", "echo", "--workers", "\(mine.count - 1)", "--policy", "client-hash",
                "--front-placement", placement]
    }

    @Test func frontFollowsAClientOntoItsWorkersCPU() throws {
        guard let a = args("follow") else { return }   // one CPU: nothing to trade
        try withServer(a) { s in
            #expect(s.log.contains("front: follows its clients"), "\(s.logTail())")
            let frontBefore = cpus(s.pid)
            try #require(frontBefore.count == 1, "front on cpus \(frontBefore)")
            let probe = try s.request("POST", "/v1/completions", json: ["prompt": "x", "max_tokens": 1])
            let id = try #require(probe.head.header("x-switchyard-worker").flatMap { Int($0) })
            let worker = try #require(s.workers()[id])
            let workerBefore = cpus(worker)
            try #require(workerBefore.count == 1 && workerBefore != frontBefore, "worker on cpus \(workerBefore)")
            let serverPID = s.pid
            let n = clientLoop(s, cpu: workerBefore[0], seconds: 45) {
                Proc.allowedCPUs(serverPID) == workerBefore
            }
            #expect(cpus(s.pid) == workerBefore, "the front stayed on \(cpus(s.pid)) after \(n) round trips from its worker's cpu")
            #expect(cpus(worker) == frontBefore, "worker \(id) is on \(cpus(worker))")
            #expect(s.log.contains("traded cpus: front → \(workerBefore[0]), worker \(id) → \(frontBefore[0])"), "\(s.logTail())")
            let metrics = try s.request("GET", "/metrics").text
            #expect(metrics.contains("switchyard_front_cpu_swaps_total 1"), "\(metrics.prefix(2000))")
            // A replacement worker starts on the CPU its predecessor was traded to.
            kill(worker, SIGKILL)
            var fresh: pid_t?
            #expect(waitUntil(20) { fresh = s.workers()[id]; return fresh != nil && fresh != worker })
            if let fresh {
                #expect(waitUntil(20) { cpus(fresh) == frontBefore }, "the new worker is on \(cpus(fresh))")
            }
            // It answers once ready.
            try s.waitHealthy(timeout: 30)
            let r = try s.request("POST", "/v1/completions", json: ["prompt": "after", "max_tokens": 8])
            #expect(r.head.status == 200)
        }
    }

    @Test func fixedPlacementStays() throws {
        guard let a = args("fixed") else { return }
        try withServer(a) { s in
            #expect(!s.log.contains("front: follows its clients"), "\(s.logTail())")
            let frontBefore = cpus(s.pid)
            let probe = try s.request("POST", "/v1/completions", json: ["prompt": "x", "max_tokens": 1])
            let id = try #require(probe.head.header("x-switchyard-worker").flatMap { Int($0) })
            let worker = try #require(s.workers()[id])
            let workerBefore = cpus(worker)
            let n = clientLoop(s, cpu: workerBefore.first ?? 0, seconds: 2) { false }
            #expect(n > 1000)
            #expect(cpus(s.pid) == frontBefore && cpus(worker) == workerBefore)
            #expect(!s.log.contains("traded cpus"), "\(s.logTail())")
        }
        // A value that is neither is refused at start, naming the option.
        let bad = try Server.launch(["--engine", "echo", "--front-placement", "sometimes"])
        defer { bad.stop() }
        #expect(bad.waitExit(timeout: 30))
        #expect(bad.log.contains("--front-placement"), "\(bad.logTail())")
    }
}
