// CSwitchyardKernels: hot numeric kernels for the engine (quantized dot products and matmul tiles),
// with run-time CPU feature dispatch and a portable fallback. Prefixed `syk_`.
//
// Data formats
// ------------
// Activations are quantized once per matmul into `syk_act` (llama.cpp Q8_0/Q8_1 numerics):
//   per token t and 32-element block b: qs[t*K + 32b + i] = round(x / d), d = amax / 127 (stored rounded
//   to fp16 precision, like llama.cpp), isum = Σ qs, s = fp16(d_unrounded * isum) (Q8_1's "s").
// Weights are repacked at load into row groups of 16 ("R16"), so one broadcast of 4 activation bytes
// feeds 16 rows in one 512-bit integer dot product (lane r = row r):
//   R16_Q4_1 chunk (group g, block b), 320 bytes: fp16 d[16] | fp16 m[16] | 4 x 64 bytes of nibbles,
//     sub-chunk j (0..3): byte [j*64 + r*4 + i] = q[r][8j+i] | q[r][8j+4+i] << 4   (w = d*q + m)
//   R16_Q8_0 chunk, 544 bytes: fp16 d[16] | 8 x 64 bytes, sub-chunk j (0..7):
//     byte [j*64 + r*4 + i] = (uint8)(q[r][4j+i] + 128)    (w = d*q; the +128 bias is removed with isum)
//   Chunks are ordered [g][b]: a row group's whole K range is contiguous.
#ifndef CSWITCHYARD_KERNELS_H
#define CSWITCHYARD_KERNELS_H
#include <stddef.h>
#include <stdint.h>

#define SYK_QK 32                 // elements per quant block
#define SYK_R16_Q4_1_CHUNK 320    // bytes per (16 rows x 32 elements) chunk
#define SYK_R16_Q8_0_CHUNK 544

/// ISA levels, ordered: AVX2 = AVX2 + FMA + F16C (maddubs int8 dots); AVX512VNNI = AVX-512 F/BW/VL/DQ + VNNI.
enum { SYK_ISA_SCALAR = 0, SYK_ISA_AVX2 = 1, SYK_ISA_AVX512VNNI = 2 };
enum { SYK_W_R16_Q4_1 = 1, SYK_W_R16_Q8_0 = 2 };

/// Best ISA this CPU supports (SYK_ISA_*).
int syk_cpu_features(void);
/// Restricts the ISA used by the kernels (for tests of the fallback); returns the level now in use.
int syk_set_isa(int level);
int syk_get_isa(void);
/// Overrides the level for the calling thread only (kernels it calls directly; not pool workers); a negative
/// level removes the override. Returns the level now in use on this thread.
int syk_set_thread_isa(int level);

// ---- fp16 / bf16 ----
float syk_fp16_to_fp32(uint16_t h);
uint16_t syk_fp32_to_fp16(float f);

// ---- dequantization (reference paths, embedding lookup) ----
// Convert `n` elements (multiple of the type's block size) of a row in GGUF layout to float.
void syk_dequant_f16(const void *src, float *dst, int n);
void syk_dequant_bf16(const void *src, float *dst, int n);
void syk_dequant_q4_0(const void *src, float *dst, int n);
void syk_dequant_q4_1(const void *src, float *dst, int n);
void syk_dequant_q8_0(const void *src, float *dst, int n);
/// Quantize a float row to GGUF Q8_0 / Q4_1 (make-model, tests). n multiple of 32.
void syk_quantize_row_q8_0_ref(const float *x, void *dst, int n);
void syk_quantize_row_q4_1_ref(const float *x, void *dst, int n);

// ---- activations ----
typedef struct {
    int8_t *qs;      // [n][K]
    float *d;        // [n][K/32]
    float *s;        // [n][K/32]
    int32_t *isum;   // [n][K/32]
    int32_t *bias4;  // [n][K/4]: SYK_LANE_MAGIC - 128 * (sum of each 4 consecutive quants): the start of
                     // each R16 Q8_0 lane sum (removes the +128 weight bias; magic: see kernels.c)
    int K;           // multiple of 32
} syk_act;

/// Quantize token t's K floats into act (rows t). If `norm` is non-null, first applies RMSNorm:
/// x * norm / sqrt(mean(x^2) + eps) and writes the normalized floats to `xout` when non-null.
void syk_quantize_act(const float *x, const float *norm, float eps, const syk_act *act, int t, float *xout);

// ---- repacking (GGUF rows -> R16) ----
/// rows must be a multiple of 16, K a multiple of 32. src: rows in GGUF layout; dst: rows/16 * K/32 chunks.
void syk_repack_q4_1(const void *src, void *dst, int rows, int K);
/// Q4_0 source (w = d*(q-8)) repacked as Q4_1 with m = -8d (exact).
void syk_repack_q4_0_as_q4_1(const void *src, void *dst, int rows, int K);
void syk_repack_q8_0(const void *src, void *dst, int rows, int K);
/// Column-range variants (tensor-parallel shards): repack only elements [k0, k1) of each row (k0, k1
/// multiples of 32, 0 <= k0 < k1 <= K). src rows have K elements; dst gets rows/16 * (k1-k0)/32 chunks,
/// exactly what the whole-row function produces for a matrix made of those columns.
void syk_repack_q4_1_cols(const void *src, void *dst, int rows, int K, int k0, int k1);
void syk_repack_q4_0_as_q4_1_cols(const void *src, void *dst, int rows, int K, int k0, int k1);
void syk_repack_q8_0_cols(const void *src, void *dst, int rows, int K, int k0, int k1);

// ---- matmul ----
typedef struct {
    const uint8_t *data;  // repacked chunks
    int type;             // SYK_W_R16_*
    int rows;             // multiple of 16
    int K;                // multiple of 32
} syk_wmat;

/// Float summation order of syk_gemm. LLAMA (default): llama.cpp's x86 order (8 lane sums per output,
/// see kernels.c), so results are bit-identical to llama.cpp's CPU backend; FAST: one sum per block
/// (~1.6x faster prefill, results differ from llama.cpp's in the last bits). The AVX2 level has only FAST.
enum { SYK_SUM_LLAMA = 0, SYK_SUM_FAST = 1 };
#define SYK_LANE_MAGIC 0x4B400000   // bits of 1.5 * 2^23
int syk_get_sum_order(void);
void syk_set_sum_order(int order);
/// Per-thread override of the summation order for kernels called on this thread; -1 clears it.
void syk_set_thread_sum_order(int order);

/// out[t*ldo + r] (+)= Σ_k W[r][k] * act[t][k] for tokens [0, ntok) and row groups [g0, g1).
void syk_gemm(const syk_wmat *w, const syk_act *act, int ntok, float *out, int ldo, int accumulate, int g0, int g1);

// ---- attention ----
/// One query head over positions [0, npos) of a KV cache stored as fp16, one position every `stride`
/// elements (k and v point at this head's first position). scores: scratch of npos floats.
/// out[hd] = Σ_j softmax(q·k_j * scale)_j v_j.
void syk_attend(const float *q, const uint16_t *k, const uint16_t *v, int stride, int npos, int hd,
                float scale, float *scores, float *out);
/// Reads n bytes (a multiple of 256) with 64-byte vector loads, the way the matmul streams weights, and
/// returns a value depending on all of them (so the loads cannot be dropped). For bandwidth probes.
uint64_t syk_stream_read(const void *p, size_t n);
/// expf of n floats as the attention softmax computes it: glibc's expf, 16 lanes at a time at the AVX-512
/// level (bit-identical by construction; exposed so tests can check that against libm).
void syk_expf_check(const float *x, float *y, int n);
/// The G query heads q[G][hd] that share one KV head (GQA group), out[G][hd]: the same results as G calls of
/// syk_attend, done in one pass over K and V. scratch: 2*G*npos floats. Vector paths for hd = 64, G <= 4.
void syk_attend_group(const float *q, const uint16_t *k, const uint16_t *v, int stride, int npos, int hd, int G,
                      float scale, float *scratch, float *out);
/// Store n floats as fp16.
void syk_store_f16(const float *x, uint16_t *dst, int n);

// ---- misc elementwise ----
/// h[i] = silu(g[i]) * u[i], rounded exactly like llama.cpp's x86 SwiGLU.
void syk_swiglu(const float *g, const float *u, float *h, int n);
/// RoPE (llama.cpp NORM layout: adjacent pairs) on `nheads` heads of hd floats in place; cs/sn: hd/2 values.
void syk_rope_norm(float *x, int nheads, int hd, const float *cs, const float *sn);

// ---- thread pool ----
typedef struct syk_pool syk_pool;
typedef void (*syk_fn)(void *ctx, int ith, int nth);
/// nthreads >= 1 (the caller counts as thread 0). spin: iterations a worker spins before sleeping.
syk_pool *syk_pool_create(int nthreads, int spin);
void syk_pool_destroy(syk_pool *p);
int syk_pool_threads(const syk_pool *p);
/// Kernel level and summation order for every thread of this pool's runs (the caller's part included);
/// -1 follows the process setting. Lets one engine use another level than the rest of the process.
void syk_pool_set_overrides(syk_pool *p, int isa, int order);
/// Runs fn(ctx, i, n) for i in 0..<n on the pool (caller runs i = 0) and returns when all finished.
void syk_pool_run(syk_pool *p, syk_fn fn, void *ctx);
/// Linux thread id of worker i (0 = caller; returns 0 for it), for pinning.
int syk_pool_worker_tid(const syk_pool *p, int i);

#endif

// ---- pool tasks (ctx for syk_pool_run) ----
#ifndef CSWITCHYARD_KERNELS_TASKS_H
#define CSWITCHYARD_KERNELS_TASKS_H
/// Up to 3 weight matrices with the same K, outputs concatenated along rows (fused QKV, gate|up).
typedef struct {
    syk_wmat parts[3];
    int nparts;
    const syk_act *act;
    int ntok;
    float *out;        // [ntok][ldo]; part p writes columns starting at Σ rows of earlier parts
    int ldo;
    int accumulate;
    int next;          // row groups claimed so far by the pool's threads (0 before the run; atomic in C)
} syk_gemm_task;
void syk_gemm_run(void *task, int ith, int nth);

/// act rows [0, ntok) = quantize(rmsnorm(x[t*ldx ...]) if norm else x[t*ldx ...]).
typedef struct {
    const float *x;
    int ldx;
    const float *norm;   // nullable
    float eps;
    const syk_act *act;
    int ntok;
} syk_quant_task;
void syk_quant_run(void *task, int ith, int nth);

/// h[t] = silu(gu[t][0..<ff]) * gu[t][ff..<2ff]; act rows = quantize(h[t]).
typedef struct {
    const float *gu;     // [ntok][2*ff]
    float *h;            // [ntok][ff] scratch
    int ff;
    const syk_act *act;  // K = ff
    int ntok;
} syk_swiglu_task;
void syk_swiglu_run(void *task, int ith, int nth);

/// Per token: q (all heads, [nhead][hd]), k/v base of this layer+sequence at position 0 ([pos][nkv][hd] fp16),
/// npos positions to attend to, out [nhead][hd].
typedef struct {
    const float *q;
    const uint16_t *k;
    const uint16_t *v;
    float *out;
    int npos;
} syk_attn_tok;

typedef struct {
    const syk_attn_tok *toks;
    int ntok;
    int nhead;
    int nkv;
    int hd;
    float scale;
    float *scratch;           // [nth][scratch_per_thread]
    int scratch_per_thread;   // >= max npos (one-chunk mode), >= hd * max npos (tiled mode)
    int tiled;                // 1: llama.cpp's tiled flash-attention numerics for runs of >= 64 consecutive tokens of
                              //    one sequence (shorter runs: the one-row kernel); 0: the one-row kernel everywhere
} syk_attn_task;
void syk_attn_run(void *task, int ith, int nth);
/// Same task and results as syk_attn_run, one GQA group per work item (syk_attend_group); needs
/// scratch_per_thread >= 8 * max npos for the grouped path (else it goes head by head).
void syk_attn_group_run(void *task, int ith, int nth);

/// RoPE (adjacent pairs) on the q and k heads of each token's qkv row, then k and v stored as fp16 into the
/// cache slot of position toks[t].npos - 1 (toks[t].k / .v are the cache bases of the token's sequence).
typedef struct {
    float *qkv;            // [ntok][ldq]: q (nq heads) | k (nkv heads) | v (nkv heads)
    int ldq;
    int nq, nkv, hd;
    const float *cosb;     // [ntok][hd/2]
    const float *sinb;     // [ntok][hd/2]
    const syk_attn_tok *toks;
    int ntok;
} syk_rope_task;
void syk_rope_kv_run(void *task, int ith, int nth);
#endif
