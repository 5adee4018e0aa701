// The worker control block: a small shared-memory page per worker (its own memfd) that the worker writes
// and the front reads, so liveness and load are visible without messages. Every field is a naturally
// aligned 64-bit word written only by the worker (release stores) and read by the front (acquire loads).
#ifndef SY_CONTROL_H
#define SY_CONTROL_H
#include <stddef.h>
#include <stdint.h>

#define SY_CONTROL_MAGIC 0x4c5254435957534full  /* "OSWYCTRL" little-endian */
#define SY_CONTROL_SIZE 4096

enum sy_worker_state {
    SY_WORKER_STARTING = 0,   // mapping the model, warming up
    SY_WORKER_READY = 1,      // serving
    SY_WORKER_STOPPING = 2,   // drained, about to exit
};

typedef struct sy_worker_control {
    uint64_t magic;            // 0: SY_CONTROL_MAGIC, written by the creator (the front)
    uint64_t heartbeat;        // 8: bumped by the worker at least every loop iteration / idle wake-up
    uint64_t state;            // 16: enum sy_worker_state
    uint64_t running;          // 24: sequences in the current batch
    uint64_t waiting;          // 32: admitted requests not yet running
    uint64_t cached_sessions;  // 40: idle sessions holding KV cache
    uint64_t cached_bytes;     // 48: KV bytes those sessions hold
    uint64_t tokens_generated; // 56: completion tokens since start
    uint64_t steps;            // 64: forward passes since start
    uint64_t numa_node;        // 72: node the worker is bound to (UINT64_MAX: none)
    uint64_t _reserved[6];     // 80..127
} sy_worker_control;

_Static_assert(sizeof(sy_worker_control) == 128, "control block layout");
_Static_assert(offsetof(sy_worker_control, heartbeat) == 8, "heartbeat offset");
_Static_assert(offsetof(sy_worker_control, state) == 16, "state offset");
_Static_assert(offsetof(sy_worker_control, steps) == 64, "steps offset");
_Static_assert(offsetof(sy_worker_control, numa_node) == 72, "numa_node offset");
_Static_assert(sizeof(sy_worker_control) <= SY_CONTROL_SIZE, "fits its page");

#endif
