// NUMA topology discovery and worker placement.
//
// The topology is read from a directory laid out like /sys/devices/system/node (node0/cpulist, node1/cpulist,
// ...). `SWITCHYARD_NUMA_TOPOLOGY=DIR` points it elsewhere, so placement for 2- and 4-node machines is tested
// on a 1-node machine. Placement itself is a pure function of the topology and the request.
import Foundation

public struct NumaNode: Equatable, Sendable {
    public var id: Int
    public var cpus: [Int]
    public init(id: Int, cpus: [Int]) { self.id = id; self.cpus = cpus }
}

public struct NumaTopology: Equatable, Sendable {
    public var nodes: [NumaNode]
    public init(nodes: [NumaNode]) { self.nodes = nodes.sorted { $0.id < $1.id } }

    public var totalCPUs: Int { nodes.reduce(0) { $0 + $1.cpus.count } }

    public static let defaultDirectory = "/sys/devices/system/node"
    public static let environmentKey = "SWITCHYARD_NUMA_TOPOLOGY"

    /// The machine's topology: `SWITCHYARD_NUMA_TOPOLOGY` if set, else sysfs. When sysfs has no node
    /// directories (NUMA disabled in the kernel) the machine is one node holding `fallbackCPUs`.
    public static func discover(environment: [String: String] = ProcessInfo.processInfo.environment,
                                fallbackCPUs: @autoclosure () -> [Int]) throws(TopologyError) -> NumaTopology {
        if let dir = environment[environmentKey], !dir.isEmpty {
            return try load(directory: dir)
        }
        if let topo = try? load(directory: defaultDirectory) { return topo }
        return NumaTopology(nodes: [NumaNode(id: 0, cpus: fallbackCPUs())])
    }

    /// Reads `DIR/nodeN/cpulist` for every `nodeN` entry. Nodes without CPUs (memory-only) are skipped.
    public static func load(directory: String) throws(TopologyError) -> NumaTopology {
        let entries: [String]
        do { entries = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
            throw .unreadable(path: directory, reason: "\(error)")
        }
        var nodes: [NumaNode] = []
        for name in entries where name.hasPrefix("node") {
            guard let id = Int(name.dropFirst(4)), id >= 0 else { continue }
            let path = directory + "/" + name + "/cpulist"
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw .unreadable(path: path, reason: "missing or not UTF-8")
            }
            let cpus = try parseCPUList(text)
            if !cpus.isEmpty { nodes.append(NumaNode(id: id, cpus: cpus)) }
        }
        guard !nodes.isEmpty else { throw .noNodes(directory: directory) }
        return NumaTopology(nodes: nodes)
    }

    /// Parses the kernel's list format: "0-3,8,10-11" (whitespace and a trailing newline allowed).
    public static func parseCPUList(_ text: String) throws(TopologyError) -> [Int] {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.isEmpty { return [] }
        var cpus: [Int] = []
        for part in trimmed.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count == 1 || bounds.count == 2,
                  let lo = Int(bounds[0].trimmingCharacters(in: .whitespaces)), lo >= 0, lo < 1 << 16 else {
                throw .badCPUList(text)
            }
            let hi: Int
            if bounds.count == 2 {
                guard let h = Int(bounds[1].trimmingCharacters(in: .whitespaces)), h >= lo, h < 1 << 16 else {
                    throw .badCPUList(text)
                }
                hi = h
            } else {
                hi = lo
            }
            cpus.append(contentsOf: lo...hi)
        }
        return Array(Set(cpus)).sorted()
    }
}

public enum TopologyError: Error, Equatable, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case noNodes(directory: String)
    case badCPUList(String)

    public var description: String {
        switch self {
        case .unreadable(let p, let r): "NUMA topology: cannot read \(p): \(r)"
        case .noNodes(let d): "NUMA topology: no nodeN directories with CPUs under \(d)"
        case .badCPUList(let t): "NUMA topology: malformed cpulist '\(t.trimmingCharacters(in: .whitespacesAndNewlines))'"
        }
    }
}

/// Where one worker process runs: its NUMA node (memory is bound there) and one CPU per thread.
public struct WorkerPlacement: Equatable, Sendable {
    public var worker: Int
    public var group: Int
    public var node: Int?          // nil when --numa off
    public var cpus: [Int]         // empty when --numa off (no pinning)
    public init(worker: Int, group: Int, node: Int?, cpus: [Int]) {
        self.worker = worker; self.group = group; self.node = node; self.cpus = cpus
    }
}

public enum NumaMode: String, Sendable, CaseIterable {
    case auto
    case off
}

public struct PlacementPlan: Equatable, Sendable {
    public var workers: [WorkerPlacement]
    /// True when more threads were asked for than the machine (or a node) has cores: cores are shared.
    public var oversubscribed: Bool
    /// Groups whose shards could not all sit on one node.
    public var splitGroups: [Int]
}

/// Places `workers` processes of `threadsPerWorker` threads, grouped `tp` to a tensor-parallel group.
///
/// Rules (`--numa auto`):
/// 1. Groups are placed one at a time on the node with the most free cores (ties: lowest id), so groups
///    spread over nodes in proportion to their size; a group whose shards fit on one node stays on it.
/// 2. Each thread gets its own core of the worker's node while free cores remain; when a node runs out, its
///    cores are reused round-robin (`oversubscribed`), never cores of another node (memory stays local).
/// 3. A group too large for any single node is spread over nodes shard by shard (`splitGroups`).
/// `--numa off` places nothing: no node, no pinning.
public func planPlacement(workers: Int, threadsPerWorker: Int, tp: Int, mode: NumaMode,
                          topology: NumaTopology) -> PlacementPlan {
    let tp = max(1, tp)
    let threads = max(1, threadsPerWorker)
    guard mode == .auto else {
        return PlacementPlan(workers: (0..<workers).map { WorkerPlacement(worker: $0, group: $0 / tp, node: nil, cpus: []) },
                             oversubscribed: false, splitGroups: [])
    }
    let nodes = topology.nodes
    var nextFree = [Int](repeating: 0, count: nodes.count)   // index of the next unused cpu per node
    var reuse = [Int](repeating: 0, count: nodes.count)      // round-robin cursor once a node is full
    var oversubscribed = false
    var split: [Int] = []
    var result: [WorkerPlacement] = []

    func freeCores(_ n: Int) -> Int { nodes[n].cpus.count - nextFree[n] }
    func mostFreeNode() -> Int {
        var best = 0
        for n in 1..<max(1, nodes.count) where freeCores(n) > freeCores(best) { best = n }
        return best
    }
    func takeCPUs(node n: Int, count: Int) -> [Int] {
        var cpus: [Int] = []
        for _ in 0..<count {
            if nextFree[n] < nodes[n].cpus.count {
                cpus.append(nodes[n].cpus[nextFree[n]])
                nextFree[n] += 1
            } else {
                oversubscribed = true
                cpus.append(nodes[n].cpus[reuse[n] % nodes[n].cpus.count])
                reuse[n] += 1
            }
        }
        return cpus
    }

    let groups = (workers + tp - 1) / tp
    for g in 0..<groups {
        let members = Array((g * tp)..<min(workers, (g + 1) * tp))
        let need = members.count * threads
        // A node that holds the whole group, preferring the one with the most free cores.
        let candidates = nodes.indices.filter { freeCores($0) >= need }
        if let home = candidates.max(by: { freeCores($0) < freeCores($1) || (freeCores($0) == freeCores($1) && $0 > $1) }) {
            for w in members {
                result.append(WorkerPlacement(worker: w, group: g, node: nodes[home].id, cpus: takeCPUs(node: home, count: threads)))
            }
        } else if members.count > 1 && nodes.count > 1 && nodes.contains(where: { $0.cpus.count >= need }) == false {
            // No node could ever hold this group: spread it shard by shard.
            split.append(g)
            for w in members {
                let n = mostFreeNode()
                result.append(WorkerPlacement(worker: w, group: g, node: nodes[n].id, cpus: takeCPUs(node: n, count: threads)))
            }
        } else {
            // Every node is (nearly) full: keep the group together on the emptiest node and share cores.
            let n = mostFreeNode()
            for w in members {
                result.append(WorkerPlacement(worker: w, group: g, node: nodes[n].id, cpus: takeCPUs(node: n, count: threads)))
            }
        }
    }
    return PlacementPlan(workers: result, oversubscribed: oversubscribed, splitGroups: split)
}

extension PlacementPlan {
    /// The CPUs for the front's event loop: those of `allowed` that no worker is pinned to, so the loop does
    /// not share a core with a worker that spins waiting for requests (on a small machine the front,
    /// a pinned worker and a client otherwise pile onto one CPU). Nil (leave the front where it is) when the
    /// workers are not pinned or take every allowed CPU.
    public func frontCPUs(allowed: [Int]) -> [Int]? {
        let pinned = Set(workers.flatMap(\.cpus))
        guard !pinned.isEmpty else { return nil }
        let free = allowed.filter { !pinned.contains($0) }
        return free.isEmpty ? nil : free
    }
}
