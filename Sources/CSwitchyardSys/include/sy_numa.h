#ifndef SY_NUMA_H
#define SY_NUMA_H
#include <stdint.h>
#endif
