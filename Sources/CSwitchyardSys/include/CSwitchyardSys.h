// CSwitchyardSys: the C shim. Only what Swift cannot call directly lives here: liburing's static-inline
// helpers and macros, futex(2) through syscall(2), memfd_create, pidfd_open, CPU_SET, libnuma, and C11
// atomics on memory shared between processes. Every name is prefixed `sy_`; every struct shared between
// processes carries _Static_assert checks on its size and field offsets.
#ifndef CSWITCHYARD_SYS_H
#define CSWITCHYARD_SYS_H

#include "sy_sys.h"     // errno, futex, memfd, pidfd, signals, CPU affinity, C11 atomics
#include "sy_uring.h"   // liburing helpers used by the front's event loop
#include "sy_numa.h"    // libnuma wrappers
#include "sy_control.h" // the worker control block (heartbeat, load) shared with the front
#include "sy_tp.h"      // a tensor-parallel group's shared memory (command area, all-reduce partials)
#include "sy_trace.h"   // request-path timestamps for latency breakdowns (off unless enabled)

#endif
