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
    uint64_t idle_waits;       // 80: idle waits for a request that did not find one at once (RingConsumer)
    uint64_t idle_waits_shared;// 88: of those, the ones whose spin gave the CPU to another task for a moment
                               //     (a sched_yield that took 2-200 µs): something shares the worker's CPU
    uint64_t _reserved[4];     // 96..127
} sy_worker_control;

_Static_assert(sizeof(sy_worker_control) == 128, "control block layout");
_Static_assert(offsetof(sy_worker_control, heartbeat) == 8, "heartbeat offset");
_Static_assert(offsetof(sy_worker_control, state) == 16, "state offset");
_Static_assert(offsetof(sy_worker_control, steps) == 64, "steps offset");
_Static_assert(offsetof(sy_worker_control, numa_node) == 72, "numa_node offset");
_Static_assert(offsetof(sy_worker_control, idle_waits) == 80, "idle_waits offset");
_Static_assert(offsetof(sy_worker_control, idle_waits_shared) == 88, "idle_waits_shared offset");
_Static_assert(sizeof(sy_worker_control) <= SY_CONTROL_SIZE, "fits its page");



// epoll helpers for the front's worker supervision (struct epoll_event is packed on x86-64, so Swift
// code goes through these): the pool's epoll fd is what the io_uring loop polls.
int sy_epoll_create(void);
int sy_epoll_add(int epfd, int fd, uint64_t data);
int sy_epoll_del(int epfd, int fd);
/// Waits up to timeout_ms (0: poll) and stores up to `max` ready entries' data; returns the count or -errno.
int sy_epoll_ready(int epfd, uint64_t *data, int max, int timeout_ms);
/// A CLOCK_MONOTONIC timerfd firing every `interval_ns` (non-blocking, close-on-exec), or -errno.
int sy_timerfd_periodic(uint64_t interval_ns);
#endif
