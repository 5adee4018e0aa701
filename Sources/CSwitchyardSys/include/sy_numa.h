// sy_numa.h: thin wrappers over libnuma. Every function is safe to call on a machine without NUMA
// (sy_numa_available() < 0): they then report a single node 0 holding every CPU and do nothing.
#ifndef SY_NUMA_H
#define SY_NUMA_H
#include <stddef.h>
#include <stdint.h>

/// >= 0 when the NUMA API can be used, -1 otherwise (libnuma's numa_available).
int sy_numa_available(void);
/// Highest node number (0 without NUMA).
int sy_numa_max_node(void);
/// Node of `cpu`, or -1 with errno set (0 without NUMA).
int sy_numa_node_of_cpu(int cpu);
/// Writes up to `capacity` CPU numbers of `node` into `cpus`; returns how many the node has (may exceed
/// `capacity`), or -1.
int sy_numa_cpus_of_node(int node, int *cpus, int capacity);
/// Restricts the calling thread's future allocations to `node` (numa_set_membind). 0 or -1 (EINVAL).
int sy_numa_set_membind_node(int node);
/// Runs the calling thread only on `node`'s CPUs (numa_run_on_node). 0 or -1.
int sy_numa_run_on_node(int node);
/// Binds the pages of [start, start+size) to `node` (numa_tonode_memory). 0 or -1 (EINVAL).
int sy_numa_tonode_memory(void *start, size_t size, int node);
#endif
