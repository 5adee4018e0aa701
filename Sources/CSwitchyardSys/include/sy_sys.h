// sy_sys.h: the parts of Linux that Swift cannot call directly (variadic fcntl, raw syscalls without a
// glibc wrapper, CPU_SET macros, C11 atomics on shared memory), plus the C layout of the shared-memory
// ring header. Every function returns what the kernel returns (-1 and errno on failure) unless noted.
#ifndef SY_SYS_H
#define SY_SYS_H

#include <stdint.h>
#include <stddef.h>
#include <stdatomic.h>
#include <sys/types.h>

// MARK: errno

int sy_errno(void);
void sy_set_errno(int value);

// MARK: futex (shared, not FUTEX_PRIVATE: the word lives in a MAP_SHARED memfd mapping used by two processes)

/// Sleeps while `*word == expected`. `timeout_ns < 0` waits forever (callers in Switchyard never do).
/// Returns 0 when woken (or spuriously), -1 with errno EAGAIN (the word already differed), ETIMEDOUT or EINTR.
int sy_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);
/// Wakes up to `count` waiters on `word`. Returns the number woken or -1.
int sy_futex_wake(uint32_t *word, int count);

// MARK: memfd and seals

#define SY_MFD_CLOEXEC 0x0001U
#define SY_MFD_ALLOW_SEALING 0x0002U
#define SY_F_SEAL_SEAL 0x0001
#define SY_F_SEAL_SHRINK 0x0002
#define SY_F_SEAL_GROW 0x0004
#define SY_F_SEAL_WRITE 0x0008

int sy_memfd_create(const char *name, unsigned int flags);
/// fcntl(fd, F_ADD_SEALS, seals).
int sy_memfd_add_seals(int fd, int seals);
/// fcntl(fd, F_GET_SEALS): the seal bits or -1.
int sy_memfd_get_seals(int fd);

// MARK: descriptor flags (fcntl is variadic, so Swift cannot call it)

/// Returns 1 if FD_CLOEXEC is set, 0 if not, -1 on error.
int sy_fd_get_cloexec(int fd);
int sy_fd_set_cloexec(int fd, int on);
int sy_fd_set_nonblocking(int fd, int on);
/// fcntl(fd, F_DUPFD_CLOEXEC, min_fd): a close-on-exec copy numbered >= min_fd.
int sy_fd_dup_min(int fd, int min_fd);

// MARK: pidfd (no glibc wrapper in Debian 12's glibc 2.36)

int sy_pidfd_open(pid_t pid, unsigned int flags);
int sy_pidfd_send_signal(int pidfd, int sig);

// MARK: eventfd

#define SY_EFD_CLOEXEC 02000000
#define SY_EFD_NONBLOCK 04000
int sy_eventfd(unsigned int initval, int flags);

// MARK: CPU affinity (CPU_SET is a macro)

/// Pins `pid` (0 = calling thread) to the `count` CPUs listed in `cpus`. EINVAL for a CPU >= CPU_SETSIZE.
int sy_sched_setaffinity(pid_t pid, const int *cpus, int count);
/// Writes up to `capacity` allowed CPU numbers of `pid` (0 = calling thread) into `cpus`;
/// returns how many CPUs are allowed (may exceed `capacity`), or -1.
int sy_sched_getaffinity(pid_t pid, int *cpus, int capacity);

/// The calling thread's involuntary context switches so far (getrusage(RUSAGE_THREAD).ru_nivcsw; a
/// sched_yield that hands the CPU over counts too), or -1.
long sy_thread_involuntary_switches(void);

/// Sets PR_SET_PDEATHSIG for the calling process (the child learns its parent died).
int sy_set_parent_death_signal(int sig);

// MARK: time

/// CLOCK_MONOTONIC in nanoseconds.
uint64_t sy_monotonic_ns(void);

// MARK: C11 atomics on plain (shared-memory) words. Swift cannot express atomics on memory it did not
// allocate as an Atomic, so these are the only way the ring touches its shared words.

static inline uint32_t sy_load_acquire_u32(const uint32_t *p) {
    return atomic_load_explicit((const _Atomic uint32_t *)p, memory_order_acquire);
}
static inline uint64_t sy_load_acquire_u64(const uint64_t *p) {
    return atomic_load_explicit((const _Atomic uint64_t *)p, memory_order_acquire);
}
static inline uint32_t sy_load_relaxed_u32(const uint32_t *p) {
    return atomic_load_explicit((const _Atomic uint32_t *)p, memory_order_relaxed);
}
static inline uint64_t sy_load_relaxed_u64(const uint64_t *p) {
    return atomic_load_explicit((const _Atomic uint64_t *)p, memory_order_relaxed);
}
static inline void sy_store_release_u32(uint32_t *p, uint32_t v) {
    atomic_store_explicit((_Atomic uint32_t *)p, v, memory_order_release);
}
static inline void sy_store_release_u64(uint64_t *p, uint64_t v) {
    atomic_store_explicit((_Atomic uint64_t *)p, v, memory_order_release);
}
static inline void sy_store_relaxed_u32(uint32_t *p, uint32_t v) {
    atomic_store_explicit((_Atomic uint32_t *)p, v, memory_order_relaxed);
}
static inline uint32_t sy_fetch_add_u32(uint32_t *p, uint32_t v) {
    return atomic_fetch_add_explicit((_Atomic uint32_t *)p, v, memory_order_seq_cst);
}
static inline uint64_t sy_fetch_add_u64(uint64_t *p, uint64_t v) {
    return atomic_fetch_add_explicit((_Atomic uint64_t *)p, v, memory_order_seq_cst);
}
/// Full (StoreLoad) barrier. On x86-64 a locked read-modify-write of the stack is a full barrier and
/// cheaper than MFENCE (the Linux kernel's smp_mb does the same).
static inline void sy_fence_seq_cst(void) {
#if defined(__x86_64__)
    __asm__ __volatile__("lock; orl $0, -8(%%rsp)" ::: "memory", "cc");
#else
    atomic_thread_fence(memory_order_seq_cst);
#endif
}
/// Prefetch for writing: asks for the cache line holding `p` in exclusive state before it is written (x86
/// PREFETCHW, a no-op on CPUs without it; ARM PRFM PSTL1KEEP). A hint: no fault, no visible effect.
static inline void sy_prefetch_write(const void *p) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("prefetchw %0" :: "m"(*(const char *)p));
#elif defined(__aarch64__)
    __asm__ __volatile__("prfm pstl1keep, %0" :: "Q"(*(const char *)p));
#else
    __builtin_prefetch(p, 1, 3);
#endif
}
/// Spin-wait hint (PAUSE / YIELD).
static inline void sy_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

// MARK: shared-memory ring header (shared between processes; see ShmRing.swift for the protocol)

#define SY_RING_MAGIC 0x474E495259535753ULL /* "SWSYRING" little-endian */
#define SY_RING_VERSION 1U
#define SY_RING_CACHE_LINE 64
#define SY_RING_HEADER_SIZE 320
/// Record header: 8 bytes, then the payload, then zero padding to the next multiple of 8.
#define SY_RING_RECORD_HEADER_SIZE 8
/// Record type reserved for the padding record written at wrap-around.
#define SY_RING_TYPE_PADDING 0xFFFFU
/// `flags` bit: the producer writes the consumer's eventfd (instead of FUTEX_WAKE) when it sleeps.
#define SY_RING_FLAG_CONSUMER_EVENTFD 0x1U
/// `closed` bits.
#define SY_RING_CLOSED_PRODUCER 0x1U
#define SY_RING_CLOSED_CONSUMER 0x2U

/// The first 320 bytes of a ring mapping; the data area (capacity bytes) follows at `data_offset`.
/// Offsets are from the start of the mapping; there are no pointers (each process maps it elsewhere).
/// Each 64-byte line has a single writer. The two hot positions (head, tail) have lines of their own; the
/// sleeping flags, which the other side reads on every commit/release, sit on lines that are written only
/// when a side goes to sleep, so that reading them does not pull a freshly written line across cores.
typedef struct sy_ring_header {
    // Line 0 (0-63): configuration, written once by the creator before the fd is shared; plus `closed`.
    uint64_t magic;         // 0: SY_RING_MAGIC
    uint32_t version;       // 8: SY_RING_VERSION
    uint32_t flags;         // 12: SY_RING_FLAG_*
    uint64_t capacity;      // 16: data bytes, a power of two, 4096 ... 2^31
    uint64_t data_offset;   // 24: == SY_RING_HEADER_SIZE
    uint64_t mapping_size;  // 32: data_offset + capacity (== the memfd's size)
    uint32_t closed;        // 40: SY_RING_CLOSED_* bits, each set once by its side (seq_cst RMW)
    uint8_t _pad0[20];      // 44..63

    // Line 1 (64-127): the producer's position, written on every commit.
    _Alignas(SY_RING_CACHE_LINE) uint64_t head;  // 64: bytes ever published (monotonic, multiple of 8)
    uint8_t _pad1[56];

    // Line 2 (128-191): the consumer's position, written on every release.
    _Alignas(SY_RING_CACHE_LINE) uint64_t tail;  // 128: bytes ever consumed (monotonic, multiple of 8)
    uint8_t _pad2[56];

    // Line 3 (192-255): written by the consumer, only around sleeping / waking the producer.
    _Alignas(SY_RING_CACHE_LINE) uint32_t consumer_sleeping;  // 192: 1 while the consumer waits for data
    uint32_t producer_wake;  // 196: futex word the producer sleeps on; the consumer bumps it to wake it
    uint8_t _pad3[56];

    // Line 4 (256-319): written by the producer, only around sleeping / waking the consumer.
    _Alignas(SY_RING_CACHE_LINE) uint32_t producer_sleeping;  // 256: 1 while the producer waits for space
    uint32_t consumer_wake;  // 260: futex word the consumer sleeps on; the producer bumps it to wake it
    uint8_t _pad4[56];
} sy_ring_header;

// Swift does not import over-aligned structs, so Swift code addresses the header through these offsets;
// the asserts below tie them to the struct.
#define SY_RING_OFF_MAGIC 0
#define SY_RING_OFF_VERSION 8
#define SY_RING_OFF_FLAGS 12
#define SY_RING_OFF_CAPACITY 16
#define SY_RING_OFF_DATA_OFFSET 24
#define SY_RING_OFF_MAPPING_SIZE 32
#define SY_RING_OFF_CLOSED 40
#define SY_RING_OFF_HEAD 64
#define SY_RING_OFF_TAIL 128
#define SY_RING_OFF_CONSUMER_SLEEPING 192
#define SY_RING_OFF_PRODUCER_WAKE 196
#define SY_RING_OFF_PRODUCER_SLEEPING 256
#define SY_RING_OFF_CONSUMER_WAKE 260

_Static_assert(sizeof(sy_ring_header) == SY_RING_HEADER_SIZE, "ring header is 320 bytes");
_Static_assert(_Alignof(sy_ring_header) == SY_RING_CACHE_LINE, "ring header is cache-line aligned");
_Static_assert(offsetof(sy_ring_header, magic) == SY_RING_OFF_MAGIC, "magic");
_Static_assert(offsetof(sy_ring_header, version) == SY_RING_OFF_VERSION, "version");
_Static_assert(offsetof(sy_ring_header, flags) == SY_RING_OFF_FLAGS, "flags");
_Static_assert(offsetof(sy_ring_header, capacity) == SY_RING_OFF_CAPACITY, "capacity");
_Static_assert(offsetof(sy_ring_header, data_offset) == SY_RING_OFF_DATA_OFFSET, "data_offset");
_Static_assert(offsetof(sy_ring_header, mapping_size) == SY_RING_OFF_MAPPING_SIZE, "mapping_size");
_Static_assert(offsetof(sy_ring_header, head) == SY_RING_OFF_HEAD, "head on its own line");
_Static_assert(offsetof(sy_ring_header, consumer_wake) == SY_RING_OFF_CONSUMER_WAKE, "consumer_wake");
_Static_assert(offsetof(sy_ring_header, producer_sleeping) == SY_RING_OFF_PRODUCER_SLEEPING, "producer_sleeping");
_Static_assert(offsetof(sy_ring_header, tail) == SY_RING_OFF_TAIL, "tail on its own line");
_Static_assert(offsetof(sy_ring_header, producer_wake) == SY_RING_OFF_PRODUCER_WAKE, "producer_wake");
_Static_assert(offsetof(sy_ring_header, consumer_sleeping) == SY_RING_OFF_CONSUMER_SLEEPING, "consumer_sleeping");
_Static_assert(offsetof(sy_ring_header, closed) == SY_RING_OFF_CLOSED, "closed on its own line");
_Static_assert(sizeof(_Atomic uint64_t) == 8 && _Alignof(_Atomic uint64_t) == 8, "lock-free 64-bit words");

/// The 8-byte record header at the start of every record.
typedef struct sy_ring_record_header {
    uint32_t length;  // payload bytes (not counting this header or the padding)
    uint16_t type;    // caller's type; SY_RING_TYPE_PADDING for the wrap-around padding record
    uint16_t check;   // sy_ring_record_check(length, type): catches garbage headers
} sy_ring_record_header;

_Static_assert(sizeof(sy_ring_record_header) == SY_RING_RECORD_HEADER_SIZE, "record header is 8 bytes");
_Static_assert(offsetof(sy_ring_record_header, length) == 0, "length");
_Static_assert(offsetof(sy_ring_record_header, type) == 4, "type");
_Static_assert(offsetof(sy_ring_record_header, check) == 6, "check");

static inline uint16_t sy_ring_record_check(uint32_t length, uint16_t type) {
    return (uint16_t)(0xC35AU ^ type ^ (uint16_t)length ^ (uint16_t)(length >> 16));
}

/// The CPU the calling thread runs on (sched_getcpu, via the vDSO), or -1.
int sy_current_cpu(void);

#endif
