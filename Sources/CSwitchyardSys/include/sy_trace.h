// Request-path tracing for latency breakdowns (`switchyard-bench front --breakdown`). Off unless the process
// calls sy_trace_enable (the front and its workers do when SWITCHYARD_TRACE names a directory). Each process
// keeps a table of SY_TRACE_SLOTS requests (indexed by request id modulo the table size) holding one
// CLOCK_MONOTONIC timestamp per point; CLOCK_MONOTONIC is system-wide, so the front's and the workers' tables
// can be joined by request id afterwards. Marking is a branch when disabled and a clock read when enabled;
// only the thread that owns a point writes it (the front's loop, a worker's engine loop).
#ifndef SY_TRACE_H
#define SY_TRACE_H
#include <stdint.h>

#define SY_TRACE_SLOTS 65536
#define SY_TRACE_POINTS 12

enum sy_trace_point {
    SY_TP_FRONT_RECV = 0,       // the front takes the request's bytes off the socket (before parsing)
    SY_TP_FRONT_PARSED = 1,     // HTTP request complete
    SY_TP_FRONT_DECODED = 2,    // JSON decoded, about to route
    SY_TP_FRONT_SUBMITTED = 3,  // submit record routed, encoded and in the ring, about to be published
    SY_TP_WORKER_SEEN = 4,      // the worker decoded the submit record (after the publish and its wake-up)
    SY_TP_WORKER_ADMITTED = 5,  // handled by the scheduler (queued for the next step)
    SY_TP_WORKER_DONE = 6,      // the done record encoded (end of the step that finished it)
    SY_TP_WORKER_COMMITTED = 7, // the done record (and all before it) in the response ring, about to be published
    SY_TP_FRONT_SEEN = 8,       // the front decoded the request's first response record
    SY_TP_FRONT_DRAINED = 9,    // the front decoded its done record
    SY_TP_FRONT_FINAL = 10,     // the final event reaches the connection
    SY_TP_FRONT_QUEUED = 11,    // the response is built and queued for sending
};

/// Allocates the table (idempotent). Returns 0, or -1 if memory is short (tracing stays off).
int sy_trace_enable(void);
int sy_trace_enabled(void);
/// Records now for (request id, point). No-op when tracing is off.
void sy_trace_mark(uint64_t id, enum sy_trace_point point);
/// Same, but only if the point is not yet set for this id (e.g. the first of a request's records).
void sy_trace_mark_first(uint64_t id, enum sy_trace_point point);
/// Writes "id t0 .. t11" lines (0 = not recorded) for ids 1..max_id still in the table. 0 or -errno.
int sy_trace_dump(const char *path, uint64_t max_id);
#endif
