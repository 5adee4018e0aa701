#include "sy_numa.h"

#include <errno.h>
#include <numa.h>

int sy_numa_available(void) { return numa_available(); }

int sy_numa_max_node(void) { return numa_available() < 0 ? 0 : numa_max_node(); }

int sy_numa_node_of_cpu(int cpu) {
    if (numa_available() < 0) return cpu >= 0 ? 0 : (errno = EINVAL, -1);
    return numa_node_of_cpu(cpu);
}

int sy_numa_cpus_of_node(int node, int *cpus, int capacity) {
    if (numa_available() < 0 || node < 0 || node > numa_max_node()) {
        errno = EINVAL;
        return -1;
    }
    struct bitmask *mask = numa_allocate_cpumask();
    if (mask == NULL) {
        errno = ENOMEM;
        return -1;
    }
    if (numa_node_to_cpus(node, mask) != 0) {
        numa_bitmask_free(mask);
        return -1;
    }
    int n = 0;
    for (unsigned int cpu = 0; cpu < mask->size; cpu++) {
        if (!numa_bitmask_isbitset(mask, cpu)) continue;
        if (n < capacity) cpus[n] = (int)cpu;
        n++;
    }
    numa_bitmask_free(mask);
    return n;
}

int sy_numa_set_membind_node(int node) {
    if (numa_available() < 0 || node < 0 || node > numa_max_node()) {
        errno = EINVAL;
        return -1;
    }
    struct bitmask *mask = numa_allocate_nodemask();
    if (mask == NULL) {
        errno = ENOMEM;
        return -1;
    }
    numa_bitmask_setbit(mask, (unsigned int)node);
    numa_set_membind(mask);
    numa_bitmask_free(mask);
    return 0;
}

int sy_numa_run_on_node(int node) {
    if (numa_available() < 0) return node == 0 ? 0 : (errno = EINVAL, -1);
    return numa_run_on_node(node);
}

int sy_numa_tonode_memory(void *start, size_t size, int node) {
    if (numa_available() < 0) return node == 0 ? 0 : (errno = EINVAL, -1);
    if (node < 0 || node > numa_max_node()) {
        errno = EINVAL;
        return -1;
    }
    numa_tonode_memory(start, size, node);
    return 0;
}
