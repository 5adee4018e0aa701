import CSwitchyardSys
import Glibc

/// CPU affinity and NUMA placement of the calling thread.
public enum CPUAffinity {
    /// The CPUs the calling thread (pid 0) or process `pid` may run on.
    public static func get(pid: pid_t = 0) throws(SysError) -> [Int] {
        var cpus = [Int32](repeating: 0, count: 1024)
        let n = try retryOnEINTR("sched_getaffinity") { sy_sched_getaffinity(pid, &cpus, Int32(cpus.count)) }
        return cpus[0..<min(Int(n), cpus.count)].map { Int($0) }
    }

    /// Restricts the calling thread (pid 0) or process `pid` to `cpus`.
    public static func set(_ cpus: [Int], pid: pid_t = 0) throws(SysError) {
        guard !cpus.isEmpty else { throw SysError(errno: EINVAL, call: "sched_setaffinity (no CPUs)") }
        let list = cpus.map { Int32(clamping: $0) }
        _ = try retryOnEINTR("sched_setaffinity") { sy_sched_setaffinity(pid, list, Int32(list.count)) }
    }
}

/// libnuma, degrading to "one node 0 with every CPU" where NUMA is unavailable.
public enum NUMA {
    public static var isAvailable: Bool { sy_numa_available() >= 0 }
    public static var maxNode: Int { Int(sy_numa_max_node()) }

    public static func node(ofCPU cpu: Int) throws(SysError) -> Int {
        Int(try retryOnEINTR("numa_node_of_cpu") { sy_numa_node_of_cpu(Int32(clamping: cpu)) })
    }

    public static func cpus(ofNode node: Int) throws(SysError) -> [Int] {
        var cpus = [Int32](repeating: 0, count: 1024)
        let n = try retryOnEINTR("numa_node_to_cpus") {
            sy_numa_cpus_of_node(Int32(clamping: node), &cpus, Int32(cpus.count))
        }
        return cpus[0..<min(Int(n), cpus.count)].map { Int($0) }
    }

    public static func setMemoryBinding(node: Int) throws(SysError) {
        _ = try retryOnEINTR("numa_set_membind") { sy_numa_set_membind_node(Int32(clamping: node)) }
    }

    public static func runOn(node: Int) throws(SysError) {
        _ = try retryOnEINTR("numa_run_on_node") { sy_numa_run_on_node(Int32(clamping: node)) }
    }

    public static func bind(_ memory: UnsafeMutableRawBufferPointer, toNode node: Int) throws(SysError) {
        guard let base = memory.baseAddress else { return }
        _ = try retryOnEINTR("numa_tonode_memory") {
            sy_numa_tonode_memory(base, memory.count, Int32(clamping: node))
        }
    }
}
