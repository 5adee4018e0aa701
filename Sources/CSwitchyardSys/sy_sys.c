#define _GNU_SOURCE
#include "sy_sys.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Static_assert(SY_MFD_CLOEXEC == MFD_CLOEXEC && SY_MFD_ALLOW_SEALING == MFD_ALLOW_SEALING, "memfd flags");
_Static_assert(SY_F_SEAL_SEAL == F_SEAL_SEAL && SY_F_SEAL_SHRINK == F_SEAL_SHRINK &&
                   SY_F_SEAL_GROW == F_SEAL_GROW && SY_F_SEAL_WRITE == F_SEAL_WRITE, "seal flags");
_Static_assert(SY_EFD_CLOEXEC == EFD_CLOEXEC && SY_EFD_NONBLOCK == EFD_NONBLOCK, "eventfd flags");

int sy_errno(void) { return errno; }
void sy_set_errno(int value) { errno = value; }

int sy_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
        tsp = &ts;
    }
    // FUTEX_WAIT (shared): the timeout is relative.
    return (int)syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, NULL, 0);
}

int sy_futex_wake(uint32_t *word, int count) {
    return (int)syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0);
}

int sy_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }
int sy_memfd_add_seals(int fd, int seals) { return fcntl(fd, F_ADD_SEALS, seals); }
int sy_memfd_get_seals(int fd) { return fcntl(fd, F_GET_SEALS); }

int sy_fd_get_cloexec(int fd) {
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0) return -1;
    return (flags & FD_CLOEXEC) ? 1 : 0;
}

int sy_fd_set_cloexec(int fd, int on) {
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0) return -1;
    flags = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
    return fcntl(fd, F_SETFD, flags);
}

int sy_fd_set_nonblocking(int fd, int on) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, flags);
}

int sy_fd_dup_min(int fd, int min_fd) { return fcntl(fd, F_DUPFD_CLOEXEC, min_fd); }

int sy_pidfd_open(pid_t pid, unsigned int flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
int sy_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int sy_eventfd(unsigned int initval, int flags) { return eventfd(initval, flags); }

int sy_sched_setaffinity(pid_t pid, const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) {
            errno = EINVAL;
            return -1;
        }
        CPU_SET(cpus[i], &set);
    }
    return sched_setaffinity(pid, sizeof(set), &set);
}

long sy_thread_involuntary_switches(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) != 0) return -1;
    return ru.ru_nivcsw;
}

int sy_sched_getaffinity(pid_t pid, int *cpus, int capacity) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(pid, sizeof(set), &set) != 0) return -1;
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &set)) continue;
        if (n < capacity) cpus[n] = cpu;
        n++;
    }
    return n;
}

int sy_set_parent_death_signal(int sig) { return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0); }

uint64_t sy_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int sy_current_cpu(void) { return sched_getcpu(); }
