#include "sy_control.h"
#include <errno.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

int sy_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int sy_epoll_add(int epfd, int fd, uint64_t data) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = data};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int sy_epoll_del(int epfd, int fd) {
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

int sy_epoll_ready(int epfd, uint64_t *data, int max, int timeout_ms) {
    struct epoll_event evs[64];
    if (max > 64) max = 64;
    int n;
    do { n = epoll_wait(epfd, evs, max, timeout_ms); } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) data[i] = evs[i].data.u64;
    return n;
}

int sy_timerfd_periodic(uint64_t interval_ns) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0) return -errno;
    struct itimerspec its = {
        .it_interval = {.tv_sec = (time_t)(interval_ns / 1000000000ull), .tv_nsec = (long)(interval_ns % 1000000000ull)},
        .it_value = {.tv_sec = (time_t)(interval_ns / 1000000000ull), .tv_nsec = (long)(interval_ns % 1000000000ull)},
    };
    if (timerfd_settime(fd, 0, &its, NULL) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}
