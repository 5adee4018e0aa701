// sy_uring: the slice of liburing the front's event loop needs, as plain functions Swift can call.
// liburing implements most of its API as static-inline functions and macros, which Swift cannot import
// reliably; each one used by the front gets a thin non-inline wrapper here. Nothing here allocates per I/O.
//
// The ring itself is opaque (sy_uring *). SQEs and CQEs are the kernel's structs: Swift reads
// cqe->user_data / res / flags directly and fills SQEs only through the sy_prep_* functions.
#ifndef SY_URING_H
#define SY_URING_H
#include <stdint.h>
#include <stddef.h>
#include <linux/time_types.h>

struct io_uring_sqe;
struct io_uring_cqe;
typedef struct sy_uring sy_uring;

// IORING_OP_FUTEX_WAIT (kernel 6.7) is newer than liburing 2.3's headers: probed by number.
#define SY_IORING_OP_FUTEX_WAIT 51
#define SY_IORING_OP_RECV 27
#define SY_IORING_OP_ACCEPT 13
#define SY_IORING_OP_POLL_ADD 6
#define SY_IORING_OP_ASYNC_CANCEL 14
#define SY_IORING_OP_SEND 26

// Setup flags actually used by sy_uring_create (reported for the start-up log).
#define SY_SETUP_SINGLE_ISSUER 1u
#define SY_SETUP_COOP_TASKRUN 2u
#define SY_SETUP_TASKRUN_FLAG 4u
#define SY_SETUP_DEFER_TASKRUN 8u

// Creates a ring with `entries` SQEs. Tries SINGLE_ISSUER|DEFER_TASKRUN|TASKRUN_FLAG,
// SINGLE_ISSUER|COOP_TASKRUN|TASKRUN_FLAG, SINGLE_ISSUER|COOP_TASKRUN, then COOP_TASKRUN, then none
// (older kernels refuse unknown flags with -EINVAL). Returns NULL and sets *err (a positive errno) on failure.
// SINGLE_ISSUER binds the ring to the creating thread: create it on the thread that will submit (with
// DEFER_TASKRUN that thread is also the only one whose waits post completions).
sy_uring *sy_uring_create(unsigned entries, unsigned *setup_used, int *err);
void sy_uring_destroy(sy_uring *r);
int sy_uring_fd(sy_uring *r);

// Fills supported[op] = 1 for every opcode the kernel supports (op < n). Returns the number of opcodes
// probed (last_op + 1), or -errno.
int sy_uring_probe(sy_uring *r, uint8_t *supported, unsigned n);
// Kernel feature bits from io_uring_params.features.
uint32_t sy_uring_features(sy_uring *r);

// A free SQE or NULL when the submission queue is full (submit, then retry).
struct io_uring_sqe *sy_uring_get_sqe(sy_uring *r);
int sy_uring_submit(sy_uring *r);
// Non-zero if CQEs are ready (1), or completions wait in the kernel only (2: task work under COOP_TASKRUN when
// the ring has TASKRUN_FLAG, or CQ overflow): then sy_uring_peek_batch enters the kernel to post them. No
// system call.
int sy_uring_events_pending(sy_uring *r);
// Submits and waits for at least `wait_nr` completions. Returns submitted count or -errno (-EINTR possible).
int sy_uring_submit_and_wait(sy_uring *r, unsigned wait_nr);
// Copies up to `count` ready CQE pointers into cqes without consuming them; consume with sy_uring_cq_advance.
unsigned sy_uring_peek_batch(sy_uring *r, struct io_uring_cqe **cqes, unsigned count);
void sy_uring_cq_advance(sy_uring *r, unsigned n);
void sy_uring_cqe_seen(sy_uring *r, struct io_uring_cqe *cqe);

// CQE accessors (also readable directly from Swift; these keep the flag macros in C).
uint64_t sy_cqe_user_data(const struct io_uring_cqe *cqe);
int32_t sy_cqe_res(const struct io_uring_cqe *cqe);
uint32_t sy_cqe_flags(const struct io_uring_cqe *cqe);
int sy_cqe_has_more(uint32_t flags);     // IORING_CQE_F_MORE: a multishot request stays armed
int sy_cqe_has_buffer(uint32_t flags);   // IORING_CQE_F_BUFFER: a provided buffer was consumed
uint16_t sy_cqe_buffer_id(uint32_t flags);

// SQE preparation. Every prep_* call zeroes the SQE's other fields first (as liburing does).
void sy_prep_nop(struct io_uring_sqe *sqe);
void sy_prep_accept(struct io_uring_sqe *sqe, int fd, int flags);
void sy_prep_multishot_accept(struct io_uring_sqe *sqe, int fd, int flags);
// Multishot recv into buffers picked from provided-buffer group `bgid`.
void sy_prep_recv_multishot(struct io_uring_sqe *sqe, int fd, uint16_t bgid);
// One-shot recv with buffer select (fallback when multishot recv is unsupported).
void sy_prep_recv_select(struct io_uring_sqe *sqe, int fd, uint16_t bgid);
// send(2) with MSG_NOSIGNAL: a vanished peer yields -EPIPE, never SIGPIPE. buf must stay valid until the CQE.
void sy_prep_send(struct io_uring_sqe *sqe, int fd, const void *buf, size_t len);
// recv(2) of up to len bytes into buf with `flags` (e.g. MSG_DONTWAIT: -EAGAIN instead of waiting for data).
// buf must stay valid until the CQE.
void sy_prep_recv(struct io_uring_sqe *sqe, int fd, void *buf, size_t len, int flags);
void sy_prep_poll_add(struct io_uring_sqe *sqe, int fd, unsigned mask);
void sy_prep_poll_multishot(struct io_uring_sqe *sqe, int fd, unsigned mask);
// Cancels the request(s) with this user_data (all of them when `all` is non-zero).
void sy_prep_cancel_data(struct io_uring_sqe *sqe, uint64_t user_data, int all);
// Cancels every pending request on fd (IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL).
void sy_prep_cancel_fd(struct io_uring_sqe *sqe, int fd);
// Relative timeout: completes with -ETIME after *ts (or after `count` other completions when count > 0).
// ts must stay valid until the CQE.
void sy_prep_timeout(struct io_uring_sqe *sqe, struct __kernel_timespec *ts, unsigned count);
void sy_prep_timeout_remove(struct io_uring_sqe *sqe, uint64_t user_data);
void sy_prep_link_timeout(struct io_uring_sqe *sqe, struct __kernel_timespec *ts);
void sy_prep_close(struct io_uring_sqe *sqe, int fd);
// IORING_OP_FUTEX_WAIT (kernel 6.7+; liburing 2.3 has no helper, so the SQE is filled by hand as the kernel
// reads it): completes with 0 once FUTEX_WAKE is called on `word` (a shared 32-bit futex: another process
// maps the same memory), or at once with -EAGAIN when *word != expected.
void sy_prep_futex_wait(struct io_uring_sqe *sqe, uint32_t *word, uint32_t expected);
// Whether IORING_OP_FUTEX_WAIT works here: on a throwaway ring, the probe lists the opcode and a wait on a
// word holding another value completes with -EAGAIN (so opcode, flags and SQE layout are all accepted).
// 1 yes, 0 no (the reason, a positive errno or the unexpected result, in *detail when not NULL).
int sy_uring_futex_wait_works(int *detail);
void sy_sqe_set_data64(struct io_uring_sqe *sqe, uint64_t data);
void sy_sqe_set_flags(struct io_uring_sqe *sqe, unsigned flags);   // IOSQE_* bits
void sy_sqe_set_buf_group(struct io_uring_sqe *sqe, uint16_t bgid);
#define SY_IOSQE_IO_LINK 4u
#define SY_IOSQE_CQE_SKIP_SUCCESS 64u

// Provided-buffer ring (IORING_REGISTER_PBUF_RING). liburing 2.3 has no io_uring_setup_buf_ring, so the ring
// is a page-aligned anonymous mapping registered by hand. Shape: `entries` (a power of two, <= 32768)
// io_uring_buf slots, and one contiguous data area of entries * buf_size bytes; buffer id i always points at
// data + i * buf_size. Every buffer starts in the ring; the kernel takes them, the loop returns each one
// (sy_buf_ring_recycle) as soon as it has copied the bytes out.
typedef struct sy_buf_ring sy_buf_ring;
sy_buf_ring *sy_buf_ring_create(sy_uring *r, unsigned entries, unsigned buf_size, uint16_t bgid, int *err);
void sy_buf_ring_destroy(sy_uring *r, sy_buf_ring *br);
const uint8_t *sy_buf_ring_buffer(const sy_buf_ring *br, uint16_t bid);
unsigned sy_buf_ring_buf_size(const sy_buf_ring *br);
// Puts buffer `bid` back and publishes it to the kernel (store-release of the ring tail).
void sy_buf_ring_recycle(sy_buf_ring *br, uint16_t bid);

// SO_PEERCRED of a connected Unix socket (struct ucred needs _GNU_SOURCE, which Swift's Glibc lacks).
// Returns 0 or -errno.
int sy_peer_cred(int fd, uint32_t *uid, int32_t *pid);

// eventfd/signalfd for the front's loop (sys/eventfd.h and sys/signalfd.h are not in Swift's Glibc module).
// Prefixed sy_fr_ to stay clear of the ring shim's names. All return an fd (CLOEXEC) or -errno.
int sy_fr_eventfd(int nonblocking);
// A non-blocking signalfd for SIGTERM and SIGINT (the caller blocks them first).
int sy_fr_signalfd_shutdown(void);
// Reads every pending signal; returns the last signal number, 0 if none.
int sy_fr_signalfd_read(int fd);

#endif
