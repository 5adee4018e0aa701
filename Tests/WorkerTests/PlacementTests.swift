import Foundation
import Testing
import Worker

/// Writes a fake /sys/devices/system/node tree: one `nodeN/cpulist` per entry.
func makeTopologyDir(_ cpulists: [Int: String]) throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("numa-\(UUID().uuidString)").path
    for (id, list) in cpulists {
        let nodeDir = dir + "/node\(id)"
        try FileManager.default.createDirectory(atPath: nodeDir, withIntermediateDirectories: true)
        try (list + "\n").write(toFile: nodeDir + "/cpulist", atomically: true, encoding: .utf8)
    }
    // Files that are not node directories are ignored, as in sysfs (possible, online, ...).
    try "0-1\n".write(toFile: dir + "/online", atomically: true, encoding: .utf8)
    return dir
}

/// Runs `body` with a fake topology tree and removes the tree afterwards, so test runs leave nothing in /tmp.
func withTopologyDir<R>(_ cpulists: [Int: String], _ body: (String) throws -> R) throws -> R {
    let dir = try makeTopologyDir(cpulists)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    return try body(dir)
}

@Test func parsesKernelCPULists() throws {
    #expect(try NumaTopology.parseCPUList("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11])
    #expect(try NumaTopology.parseCPUList("\n") == [])
    for bad in ["3-1", "a", "1,,2", "-1", "1-", "99999"] {
        #expect(throws: TopologyError.self) { try NumaTopology.parseCPUList(bad) }
    }
}

@Test func environmentOverridesSysfs() throws {
    try withTopologyDir([0: "0-3", 1: "4-7"]) { dir in
        let topo = try NumaTopology.discover(environment: [NumaTopology.environmentKey: dir], fallbackCPUs: [0])
        #expect(topo.nodes == [NumaNode(id: 0, cpus: [0, 1, 2, 3]), NumaNode(id: 1, cpus: [4, 5, 6, 7])])
        #expect(throws: TopologyError.self) {
            try NumaTopology.discover(environment: [NumaTopology.environmentKey: dir + "/missing"], fallbackCPUs: [0])
        }
    }
}

@Test func twoNodesSpreadReplicasAndGiveEachThreadACore() throws {
    let topo = try withTopologyDir([0: "0-3", 1: "4-7"]) { try NumaTopology.load(directory: $0) }
    let plan = planPlacement(workers: 4, threadsPerWorker: 2, tp: 1, mode: .auto, topology: topo)
    #expect(plan.workers.map(\.node) == [0, 1, 0, 1])
    #expect(plan.workers.map(\.cpus) == [[0, 1], [4, 5], [2, 3], [6, 7]])
    #expect(!plan.oversubscribed)
    // Every thread has its own core, and every core is on the worker's node.
    let all = plan.workers.flatMap(\.cpus)
    #expect(Set(all).count == all.count)
    for w in plan.workers {
        let node = try #require(topo.nodes.first { $0.id == w.node })
        #expect(Set(w.cpus).isSubset(of: node.cpus))
    }
}

@Test func fourNodesWithUnevenSizes() throws {
    let topo = try withTopologyDir([0: "0-1", 1: "2-5", 2: "6-7", 3: "8-13"]) { try NumaTopology.load(directory: $0) }
    let plan = planPlacement(workers: 6, threadsPerWorker: 1, tp: 1, mode: .auto, topology: topo)
    // Most free cores first: node3 (6), node1 (4), then node3 (5) ... proportional to size.
    let perNode = Dictionary(grouping: plan.workers, by: { $0.node ?? -1 }).mapValues(\.count)
    #expect(perNode[3, default: 0] >= perNode[1, default: 0])
    #expect(perNode[1, default: 0] >= perNode[0, default: 0])
    #expect(plan.workers.count == 6)
    #expect(!plan.oversubscribed)
    #expect(Set(plan.workers.flatMap(\.cpus)).count == 6)
}

@Test func tensorParallelGroupsStayOnOneNode() throws {
    let topo = try withTopologyDir([0: "0-3", 1: "4-7", 2: "8-11", 3: "12-15"]) { try NumaTopology.load(directory: $0) }
    let plan = planPlacement(workers: 8, threadsPerWorker: 2, tp: 2, mode: .auto, topology: topo)
    for g in 0..<4 {
        let nodes = Set(plan.workers.filter { $0.group == g }.map(\.node))
        #expect(nodes.count == 1, "group \(g) split over \(nodes)")
    }
    #expect(Set(plan.workers.map(\.node)).count == 4)
    #expect(plan.splitGroups.isEmpty)
    // A group larger than any node is split, and says so.
    let big = planPlacement(workers: 4, threadsPerWorker: 2, tp: 4, mode: .auto, topology: topo)
    #expect(big.splitGroups == [0])
}

@Test func oversubscriptionReusesCoresOfTheSameNode() throws {
    let topo = NumaTopology(nodes: [NumaNode(id: 0, cpus: [0, 1])])
    let plan = planPlacement(workers: 3, threadsPerWorker: 1, tp: 1, mode: .auto, topology: topo)
    #expect(plan.oversubscribed)
    #expect(plan.workers.map(\.cpus) == [[0], [1], [0]])
    let off = planPlacement(workers: 3, threadsPerWorker: 1, tp: 1, mode: .off, topology: topo)
    #expect(off.workers.allSatisfy { $0.node == nil && $0.cpus.isEmpty })
}

@Test func frontAvoidsPinnedWorkerCPUs() throws {
    let topo = NumaTopology(nodes: [NumaNode(id: 0, cpus: [0, 1, 2, 3])])
    // One worker on a 4-CPU machine: the front gets the other three.
    let one = planPlacement(workers: 1, threadsPerWorker: 1, tp: 1, mode: .auto, topology: topo)
    #expect(one.workers.map(\.cpus) == [[0]])
    #expect(one.frontCPUs(allowed: [0, 1, 2, 3]) == [1, 2, 3])
    // Two workers of two threads: nothing is left, the front stays unpinned.
    let full = planPlacement(workers: 2, threadsPerWorker: 2, tp: 1, mode: .auto, topology: topo)
    #expect(full.frontCPUs(allowed: [0, 1, 2, 3]) == nil)
    // --numa off: workers unpinned, so is the front.
    let off = planPlacement(workers: 1, threadsPerWorker: 1, tp: 1, mode: .off, topology: topo)
    #expect(off.frontCPUs(allowed: [0, 1, 2, 3]) == nil)
    // Only CPUs the front may use count (a restricted cpuset).
    #expect(one.frontCPUs(allowed: [0, 3]) == [3])
    #expect(one.frontCPUs(allowed: [0]) == nil)
}
