// sy_tp.h: C layout of a tensor-parallel group's shared memory (one memfd, MAP_SHARED by the K shard
// processes of one group). See TensorParallel.swift for the protocol and docs/ARCHITECTURE.md
// ("Tensor parallelism") for the design.
//
// Mapping layout (offsets from the start of the mapping, no pointers):
//   [0, SY_TP_HEADER_SIZE)            sy_tp_header: configuration, counters, per-rank lines
//   [cmd_offset, +cmd_bytes)          the command area: sy_tp_command, then sy_tp_item[max_items],
//                                     then int32 tokens[cmd_tokens]
//   [partial_offset, +partial_bytes)  all-reduce partials: float [2 parities][size][max_tokens][dim]
#ifndef SY_TP_H
#define SY_TP_H

#include <stdint.h>
#include <stddef.h>
#include <stdatomic.h>

#define SY_TP_MAGIC 0x3150544C59535753ULL /* "SWSYLTP1" little-endian */
#define SY_TP_VERSION 1U
#define SY_TP_MAX_RANKS 16
#define SY_TP_CACHE_LINE 64
#define SY_TP_HEADER_SIZE 1280 /* 64 * (4 + SY_TP_MAX_RANKS) */

/// Commands the leader (rank 0) publishes.
enum {
    SY_TP_OP_NONE = 0,
    SY_TP_OP_CREATE = 1,    // slot: create an empty sequence in that slot
    SY_TP_OP_RELEASE = 2,   // slot: free the slot's sequence
    SY_TP_OP_TRUNCATE = 3,  // slot, length: keep the first `length` positions
    SY_TP_OP_FORWARD = 4,   // nitems items (slot, position, ntok) and ntokens tokens, item by item
    SY_TP_OP_SHUTDOWN = 5,  // followers return normally
};

/// `aborted` values (0: running).
enum { SY_TP_ABORT_NONE = 0, SY_TP_ABORT_REQUESTED = 1, SY_TP_ABORT_PEER_DIED = 2, SY_TP_ABORT_DIVERGED = 3 };

/// The first SY_TP_HEADER_SIZE bytes of the mapping. Each 64-byte line has one writer (or, for the
/// barrier line, is written only with atomic read-modify-writes).
typedef struct sy_tp_header {
    // Line 0 (0-63): configuration written once by the creator before the fd is shared, plus `aborted`.
    uint64_t magic;           // 0: SY_TP_MAGIC
    uint32_t version;         // 8: SY_TP_VERSION
    uint32_t size;            // 12: shards in the group (K), 1...SY_TP_MAX_RANKS
    uint32_t dim;             // 16: residual width (floats per partial row)
    uint32_t max_tokens;      // 20: rows per partial slot (the engines' maxBatchTokens bound)
    uint32_t max_items;       // 24: items per forward command
    uint32_t cmd_tokens;      // 28: tokens per forward command
    uint64_t cmd_offset;      // 32
    uint64_t partial_offset;  // 40
    uint64_t mapping_size;    // 48: == the memfd's size
    uint32_t aborted;         // 56: SY_TP_ABORT_*; set once (0 -> reason) by compare-exchange, never cleared
    uint32_t abort_rank;      // 60: rank that set `aborted` (or SY_TP_MAX_RANKS for the owner)

    // Line 1 (64-127): the leader's command counter. Followers wait for it to pass the last command
    // they executed (futex word); `step_sleepers` counts followers inside FUTEX_WAIT.
    _Alignas(SY_TP_CACHE_LINE) uint32_t step;  // 64: commands ever published (the latest is `step`)
    uint32_t step_sleepers;                      // 68
    uint8_t _pad1[56];

    // Line 2 (128-191): the barrier. `arrivals` counts arrivals ever (every shard adds 1 per barrier, so
    // barrier number b (1, 2, ...) is complete when arrivals >= b * size, compared with wrap-around);
    // it is also the futex word. `barrier_sleepers` counts shards inside FUTEX_WAIT on it.
    _Alignas(SY_TP_CACHE_LINE) uint32_t arrivals;  // 128
    uint32_t barrier_sleepers;                       // 132
    uint8_t _pad2[56];

    // Line 3 (192-255): reserved.
    _Alignas(SY_TP_CACHE_LINE) uint8_t _reserved[64];

    // Lines 4... (256 + 64 r): rank r's line, written by rank r only (and `pid` by the owner's hint).
    struct {
        _Alignas(SY_TP_CACHE_LINE) int32_t pid;  // +0: the shard process (0 until it attaches)
        uint32_t ack;                              // +4: last command whose payload rank r has copied
        uint8_t _pad[56];
    } ranks[SY_TP_MAX_RANKS];
} sy_tp_header;

/// Fixed part of the command area (followed by items and tokens).
typedef struct sy_tp_command {
    uint32_t op;        // SY_TP_OP_*
    uint32_t slot;      // CREATE / RELEASE / TRUNCATE
    uint32_t length;    // TRUNCATE
    uint32_t nitems;    // FORWARD
    uint32_t ntokens;   // FORWARD: Σ item ntok
    uint32_t _pad[11];
} sy_tp_command;

typedef struct sy_tp_item {
    uint32_t slot;
    uint32_t position;  // tokens already in the slot's sequence (checked by the follower)
    uint32_t ntok;
    uint32_t _pad;
} sy_tp_item;

// Swift does not import over-aligned structs, so Swift code addresses the header through these offsets.
#define SY_TP_OFF_MAGIC 0
#define SY_TP_OFF_VERSION 8
#define SY_TP_OFF_SIZE 12
#define SY_TP_OFF_DIM 16
#define SY_TP_OFF_MAX_TOKENS 20
#define SY_TP_OFF_MAX_ITEMS 24
#define SY_TP_OFF_CMD_TOKENS 28
#define SY_TP_OFF_CMD_OFFSET 32
#define SY_TP_OFF_PARTIAL_OFFSET 40
#define SY_TP_OFF_MAPPING_SIZE 48
#define SY_TP_OFF_ABORTED 56
#define SY_TP_OFF_ABORT_RANK 60
#define SY_TP_OFF_STEP 64
#define SY_TP_OFF_STEP_SLEEPERS 68
#define SY_TP_OFF_ARRIVALS 128
#define SY_TP_OFF_BARRIER_SLEEPERS 132
#define SY_TP_OFF_RANKS 256
#define SY_TP_RANK_STRIDE 64
#define SY_TP_RANK_OFF_PID 0
#define SY_TP_RANK_OFF_ACK 4

_Static_assert(sizeof(sy_tp_header) == SY_TP_HEADER_SIZE, "tp header size");
_Static_assert(SY_TP_HEADER_SIZE == SY_TP_CACHE_LINE * (4 + SY_TP_MAX_RANKS), "4 lines + one per rank");
_Static_assert(_Alignof(sy_tp_header) == SY_TP_CACHE_LINE, "tp header is cache-line aligned");
_Static_assert(offsetof(sy_tp_header, magic) == SY_TP_OFF_MAGIC, "magic");
_Static_assert(offsetof(sy_tp_header, version) == SY_TP_OFF_VERSION, "version");
_Static_assert(offsetof(sy_tp_header, size) == SY_TP_OFF_SIZE, "size");
_Static_assert(offsetof(sy_tp_header, dim) == SY_TP_OFF_DIM, "dim");
_Static_assert(offsetof(sy_tp_header, max_tokens) == SY_TP_OFF_MAX_TOKENS, "max_tokens");
_Static_assert(offsetof(sy_tp_header, max_items) == SY_TP_OFF_MAX_ITEMS, "max_items");
_Static_assert(offsetof(sy_tp_header, cmd_tokens) == SY_TP_OFF_CMD_TOKENS, "cmd_tokens");
_Static_assert(offsetof(sy_tp_header, cmd_offset) == SY_TP_OFF_CMD_OFFSET, "cmd_offset");
_Static_assert(offsetof(sy_tp_header, partial_offset) == SY_TP_OFF_PARTIAL_OFFSET, "partial_offset");
_Static_assert(offsetof(sy_tp_header, mapping_size) == SY_TP_OFF_MAPPING_SIZE, "mapping_size");
_Static_assert(offsetof(sy_tp_header, aborted) == SY_TP_OFF_ABORTED, "aborted");
_Static_assert(offsetof(sy_tp_header, abort_rank) == SY_TP_OFF_ABORT_RANK, "abort_rank");
_Static_assert(offsetof(sy_tp_header, step) == SY_TP_OFF_STEP, "step on its own line");
_Static_assert(offsetof(sy_tp_header, step_sleepers) == SY_TP_OFF_STEP_SLEEPERS, "step_sleepers");
_Static_assert(offsetof(sy_tp_header, arrivals) == SY_TP_OFF_ARRIVALS, "arrivals on its own line");
_Static_assert(offsetof(sy_tp_header, barrier_sleepers) == SY_TP_OFF_BARRIER_SLEEPERS, "barrier_sleepers");
_Static_assert(offsetof(sy_tp_header, ranks) == SY_TP_OFF_RANKS, "ranks");
_Static_assert(sizeof(((sy_tp_header *)0)->ranks[0]) == SY_TP_RANK_STRIDE, "one line per rank");
_Static_assert(offsetof(sy_tp_header, ranks[0].pid) - SY_TP_OFF_RANKS == SY_TP_RANK_OFF_PID, "rank pid");
_Static_assert(offsetof(sy_tp_header, ranks[0].ack) - SY_TP_OFF_RANKS == SY_TP_RANK_OFF_ACK, "rank ack");
_Static_assert(sizeof(sy_tp_command) == 64, "command header is one line");
_Static_assert(sizeof(sy_tp_item) == 16, "item is 16 bytes");

/// Sets `*p` from `expected` to `desired` if it still holds `expected` (seq_cst); returns 1 on success.
static inline int sy_tp_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired) {
    return atomic_compare_exchange_strong_explicit((_Atomic uint32_t *)p, &expected, desired,
                                                   memory_order_seq_cst, memory_order_seq_cst);
}

#endif
