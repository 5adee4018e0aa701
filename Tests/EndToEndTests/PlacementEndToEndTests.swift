// NUMA placement end to end (issue 6): `--numa auto` with topologies injected through
// SWITCHYARD_NUMA_TOPOLOGY (laid out like /sys/devices/system/node), so 2- and 4-node placements run on a
// one-node machine. Echo workers: placement does not depend on the engine.
import Foundation
import Glibc
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
    let mine = Proc.status(getpid(), "Cpus_allowed_list").map(Proc.expandCPUList) ?? [0]
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
