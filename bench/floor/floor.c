// The front + worker architecture's latency floor on this machine, with no request work at all.
//
// Three servers, each its own process(es), measured by one client in interleaved blocks (like
// `switchyard-bench front`), all with the front bench's request bytes:
//   raw      blocking read/write echo (the floor of any server process);
//   mailbox  "front" process: blocking read from the client, the bytes into a shared-memory mailbox, spin
//            for the answer up to 30 µs (pause, sched_yield every 8 polls) then futex, write back; "worker"
//            process: waits on the mailbox the same way (50 µs spin, then futex) and copies the bytes back
//            (the real front's and worker's wait policies);
//   uring    the same, with the front on io_uring (recv and send as SQEs, one submit_and_wait per turn).
// "added" = server − raw. What Switchyard adds beyond these is its own per-request work.
// With more arguments, running Switchyard servers' sockets are measured as further paths by the same client
// (a small single-threaded process, like a client of a real server).
// Build and run: bench/floor/run [ROUND_TRIPS [SERVER_SOCKET...]]   (needs liburing-dev; tools/install-deps installs it)
#define _GNU_SOURCE
#include <immintrin.h>
#include <liburing.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    _Alignas(64) _Atomic unsigned long req;    // request sequence (front → worker)
    _Atomic int worker_sleeps;
    _Alignas(64) _Atomic unsigned long resp;   // answer sequence (worker → front)
    _Atomic int front_sleeps;
    _Alignas(64) int len;
    char in[4096], out[4096];
} mailbox;

// Waits for *seq == v as Switchyard's ring consumers do: spin (pause, sched_yield every 8 polls) for up to
// `spin_ns`, then announce sleep in *sleeping and futex-wait on the low word of *seq. publish() stores the new
// sequence (release) and wakes the waiter only if it announced sleep. So an idle server costs no CPU, and a
// busy one never makes a system call to hand over.
static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void wait_seq(_Atomic unsigned long *seq, _Atomic int *sleeping, unsigned long v, long spin_ns) {
    long until = now_ns() + spin_ns;
    for (unsigned n = 1; atomic_load_explicit(seq, memory_order_acquire) != v; n++) {
        _mm_pause();
        if (n % 8 == 0) {
            sched_yield();
            if (now_ns() < until) continue;
            atomic_store(sleeping, 1);   // seq_cst: ordered before the re-check below
            while (atomic_load(seq) != v) syscall(SYS_futex, (unsigned *)seq, FUTEX_WAIT, (unsigned)(v - 1), NULL, NULL, 0);
            atomic_store(sleeping, 0);
            return;
        }
    }
}

static void publish(_Atomic unsigned long *seq, _Atomic int *sleeping, unsigned long v) {
    atomic_store(seq, v);   // seq_cst: ordered before reading `sleeping`
    if (atomic_load(sleeping)) syscall(SYS_futex, (unsigned *)seq, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static int listen_at(const char *path) {
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) { fprintf(stderr, "%s: path too long\n", path); exit(1); }
    strcpy(a.sun_path, path);
    unlink(path);
    if (l < 0 || bind(l, (void *)&a, sizeof a) || listen(l, 4)) { perror(path); exit(1); }
    return l;
}

static void child_setup(void) { prctl(PR_SET_PDEATHSIG, SIGKILL); }

static void raw_server(int l) {
    char b[4096];
    int c = accept(l, 0, 0);
    for (int n; (n = read(c, b, sizeof b)) > 0;) if (write(c, b, n) != n) break;
    exit(0);
}

static void worker(mailbox *m) {
    for (unsigned long seq = 1;; seq++) {
        wait_seq(&m->req, &m->worker_sleeps, seq, 50000);   // the worker's idle spin: 50 µs
        memcpy(m->out, m->in, m->len);
        publish(&m->resp, &m->front_sleeps, seq);
    }
}

static void mailbox_front(int l, mailbox *m) {
    int c = accept(l, 0, 0);
    for (unsigned long seq = 1;; seq++) {
        int n = read(c, m->in, sizeof m->in);
        if (n <= 0) exit(0);
        m->len = n;
        publish(&m->req, &m->worker_sleeps, seq);
        wait_seq(&m->resp, &m->front_sleeps, seq, 30000);   // the front's poll spin: 30 µs
        if (write(c, m->out, n) != n) exit(0);
    }
}

static void uring_front(int l, mailbox *m) {
    int c = accept(l, 0, 0);
    struct io_uring r;
    struct io_uring_params p = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
    if (io_uring_queue_init_params(64, &r, &p)) { p.flags = 0; if (io_uring_queue_init_params(64, &r, &p)) exit(1); }
    struct io_uring_sqe *s = io_uring_get_sqe(&r);
    io_uring_prep_recv(s, c, m->in, sizeof m->in, 0);
    io_uring_sqe_set_data64(s, 1);
    for (unsigned long seq = 1;;) {
        io_uring_submit_and_wait(&r, 1);
        struct io_uring_cqe *cqe;
        while (io_uring_peek_cqe(&r, &cqe) == 0) {
            unsigned long kind = cqe->user_data;
            int res = cqe->res;
            io_uring_cqe_seen(&r, cqe);
            if (kind != 1) continue;   // a send finished
            if (res <= 0) exit(0);
            m->len = res;
            publish(&m->req, &m->worker_sleeps, seq);
            wait_seq(&m->resp, &m->front_sleeps, seq++, 30000);
            s = io_uring_get_sqe(&r);
            io_uring_prep_send(s, c, m->out, res, MSG_NOSIGNAL);
            io_uring_sqe_set_data64(s, 2);
            s = io_uring_get_sqe(&r);
            io_uring_prep_recv(s, c, m->in, sizeof m->in, 0);
            io_uring_sqe_set_data64(s, 1);
        }
    }
}

static int connect_to(const char *path) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, path);   // checked by listen_at
    for (int i = 0; i < 500; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (void *)&a, sizeof a) == 0) return fd;
        close(fd);
        usleep(10000);
    }
    perror(path);
    exit(1);
}

/// Reads one HTTP/1.1 response with a Content-Length body (a Switchyard server's answer): 0, or -1 on error.
static int read_http(int fd, char *buf, int cap) {
    int got = 0, head = -1;
    long want = -1;
    for (;;) {
        if (head < 0) {
            for (int i = 0; i + 3 < got; i++)
                if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n') { head = i + 4; break; }
            if (head >= 0) {
                for (int i = 0; i + 16 < head; i++)
                    if (strncasecmp(buf + i, "\r\ncontent-length:", 17) == 0) { want = head + atol(buf + i + 17); break; }
                if (want < 0 || want > cap) return -1;
            }
        }
        if (want >= 0 && got >= want) return 0;
        if (got == cap) return -1;
        int n = read(fd, buf + got, cap - got);
        if (n <= 0) return -1;
        got += n;
    }
}

static int cmp(const void *a, const void *b) { long x = *(const long *)a, y = *(const long *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    int total = argc > 1 ? atoi(argv[1]) : 20000;
    if (total < 500) total = 500;
    // Optional: running Switchyard servers' sockets, each measured by the same client as one more path (e.g.
    // the same build started with different options, compared in the same minutes).
    enum { LOCAL = 3, MAXP = 12 };
    int servers = argc > 2 ? argc - 2 : 0;
    if (servers > MAXP - LOCAL) { fprintf(stderr, "at most %d server sockets\n", MAXP - LOCAL); return 1; }
    int paths_n = LOCAL + servers;
    char dir[] = "/tmp/sy-floor-XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    const char *names[MAXP] = {"raw", "mailbox", "uring"};
    char paths[LOCAL][128], server_names[MAXP][16];
    int fds[MAXP];
    for (int k = 0; k < LOCAL; k++) {
        snprintf(paths[k], sizeof paths[k], "%s/%s.sock", dir, names[k]);
        int l = listen_at(paths[k]);
        mailbox *m = mmap(0, sizeof(mailbox), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (k > 0 && fork() == 0) { child_setup(); worker(m); }
        if (fork() == 0) {
            child_setup();
            if (k == 0) raw_server(l); else if (k == 1) mailbox_front(l, m); else uring_front(l, m);
        }
        close(l);
        fds[k] = connect_to(paths[k]);
    }
    for (int i = 0; i < servers; i++) {
        const char *server = argv[2 + i];
        if (strlen(server) >= sizeof(((struct sockaddr_un *)0)->sun_path)) { fprintf(stderr, "socket path too long\n"); return 1; }
        snprintf(server_names[i], sizeof server_names[i], servers == 1 ? "server" : "server%d", i + 1);
        names[LOCAL + i] = server_names[i];
        fds[LOCAL + i] = connect_to(server);
    }
    static const char body[] = "{\"prompt\":\"h\",\"max_tokens\":1}";
    char req[256], buf[65536];
    int len = snprintf(req, sizeof req, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s",
                       sizeof body - 1, body);
    long *lat[MAXP];
    for (int k = 0; k < paths_n; k++) lat[k] = malloc(sizeof(long) * total);
    // Where the client ran after each round trip, per path (which CPU it shares with which server process
    // decides much of the latency on a small machine).
    enum { CPUS_SHOWN = 4 };
    long on_cpu[MAXP][CPUS_SHOWN] = {{0}};
    for (int i = 0; i < 1000; i++)   // warm-up
        for (int k = 0; k < paths_n; k++) {
            if (write(fds[k], req, len) != len) return 1;
            if (k >= LOCAL ? read_http(fds[k], buf, sizeof buf) < 0 : read(fds[k], buf, sizeof buf) <= 0) { fprintf(stderr, "%s: no answer\n", names[k]); return 1; }
        }
    for (int done = 0; done < total; done += 500)
        for (int k = 0; k < paths_n; k++)
            for (int i = done; i < done + 500 && i < total; i++) {
                long t = now_ns();
                int got = 0;
                if (write(fds[k], req, len) != len) return 1;
                if (k >= LOCAL) { if (read_http(fds[k], buf, sizeof buf) < 0) return 1; }
                else while (got < len) { int n = read(fds[k], buf + got, sizeof buf - got); if (n <= 0) return 1; got += n; }
                lat[k][i] = now_ns() - t;
                int cpu = sched_getcpu();
                if (cpu >= 0 && cpu < CPUS_SHOWN) on_cpu[k][cpu]++;
            }
    long p50[MAXP], p99[MAXP];
    for (int k = 0; k < paths_n; k++) {
        qsort(lat[k], total, sizeof(long), cmp);
        p50[k] = lat[k][total / 2];
        p99[k] = lat[k][total * 99 / 100];
    }
    printf("round trip, %d each, interleaved in blocks of 500, %d-byte request\n", total, len);
    for (int k = 0; k < paths_n; k++) {
        printf("%-8s p50 %6.1f us  p99 %6.1f us  (added p50 %5.1f us, p99 %5.1f us)  client on cpu", names[k], p50[k] / 1e3,
               p99[k] / 1e3, (p50[k] - p50[0]) / 1e3, (p99[k] - p99[0]) / 1e3);
        for (int c = 0; c < CPUS_SHOWN; c++) if (on_cpu[k][c]) printf(" %d: %ld%%", c, on_cpu[k][c] * 100 / total);
        printf("\n");
    }
    for (int k = 0; k < LOCAL; k++) { close(fds[k]); unlink(paths[k]); }
    for (int k = LOCAL; k < paths_n; k++) close(fds[k]);
    rmdir(dir);
    return 0;
}
