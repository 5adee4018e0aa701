// Quantized matmul, activation quantization, attention and a small thread pool.
// Each hot kernel has a portable scalar version, an AVX2+FMA+F16C version (kernels_avx2.c) and an
// AVX-512 VNNI version, compiled with __attribute__((target(...))) and chosen at run time
// (syk_cpu_features / syk_set_isa / syk_set_thread_isa). They do the same arithmetic in the same order, so
// they agree to the last bit on the matmul (the AVX2 and AVX-512 levels on every kernel).
#define _GNU_SOURCE
#include "internal.h"
#include <math.h>
#include <string.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <pthread.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include <limits.h>
#include <sched.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define SYK_X86 1
#ifndef SYK_PF_DIST
#define SYK_PF_DIST 4096   // bytes ahead of the current weight chunk (one-token path; 2560 measured ~15 % slower decode)
#endif
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,f16c,fma")))
#endif

// ============================================================================ CPU dispatch

int syk_cpu_features(void) {
#if SYK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
        __builtin_cpu_supports("avx512dq"))
        return SYK_ISA_AVX512VNNI;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return SYK_ISA_AVX2;
#endif
    return SYK_ISA_SCALAR;
}

static _Atomic int g_isa = -1;

// Per-thread override (tests that call kernels directly force a level without touching other threads).
static _Thread_local int t_isa = -1;

int syk_set_thread_isa(int level) {
    if (level < 0) { t_isa = -1; return syk_get_isa(); }
    int best = syk_cpu_features();
    t_isa = level < best ? level : best;
    return t_isa;
}

int syk_get_isa(void) {
    if (t_isa >= 0) return t_isa;
    int v = atomic_load_explicit(&g_isa, memory_order_relaxed);
    if (v < 0) { v = syk_cpu_features(); atomic_store_explicit(&g_isa, v, memory_order_relaxed); }
    return v;
}

int syk_set_isa(int level) {
    int best = syk_cpu_features();
    int v = level < best ? level : best;
    atomic_store_explicit(&g_isa, v, memory_order_relaxed);
    return v;
}

// ============================================================================ fp16 / bf16

float syk_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) bits = sign;
        else {  // subnormal: normalize
            exp = 113;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000 | (mant << 13);
    else bits = sign | ((exp + 112) << 23) | (mant << 13);
    float f; memcpy(&f, &bits, 4); return f;
}

uint16_t syk_fp32_to_fp16(float f) {  // round to nearest even
    uint32_t x; memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    x &= 0x7fffffff;
    if (x >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (x > 0x7f800000 ? 0x200 : 0));
    if (x >= 0x477ff000) return (uint16_t)(sign | 0x7c00);           // >= 65520 rounds to inf
    if (x < 0x38800000) {                                             // below 2^-14: subnormal half
        if (x <= 0x33000000) return (uint16_t)sign;                   // <= 2^-25 rounds to 0
        uint32_t e = x >> 23, m = (x & 0x7fffff) | 0x800000, shift = 126 - e;
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = (x >> 13) - (112u << 10), rem = x & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

static inline float fp16_round(float f) { return syk_fp16_to_fp32(syk_fp32_to_fp16(f)); }

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

// ============================================================================ dequantization (GGUF layout)

void syk_dequant_f16(const void *src, float *dst, int n) {
    const uint8_t *p = src;
    for (int i = 0; i < n; i++) dst[i] = syk_fp16_to_fp32(rd16(p + 2 * i));
}

void syk_dequant_bf16(const void *src, float *dst, int n) {
    const uint8_t *p = src;
    for (int i = 0; i < n; i++) { uint32_t b = (uint32_t)rd16(p + 2 * i) << 16; memcpy(dst + i, &b, 4); }
}

// Q4_0 block (18 bytes): fp16 d | 16 bytes; element j = low nibble of byte j, element j+16 = high nibble.
void syk_dequant_q4_0(const void *src, float *dst, int n) {
    const uint8_t *p = src;
    for (int b = 0; b < n / 32; b++, p += 18) {
        float d = syk_fp16_to_fp32(rd16(p));
        for (int j = 0; j < 16; j++) {
            dst[32 * b + j] = d * (float)((p[2 + j] & 0xf) - 8);
            dst[32 * b + j + 16] = d * (float)((p[2 + j] >> 4) - 8);
        }
    }
}

// Q4_1 block (20 bytes): fp16 d | fp16 m | 16 bytes of nibbles (same order as Q4_0); w = d*q + m.
void syk_dequant_q4_1(const void *src, float *dst, int n) {
    const uint8_t *p = src;
    for (int b = 0; b < n / 32; b++, p += 20) {
        float d = syk_fp16_to_fp32(rd16(p)), m = syk_fp16_to_fp32(rd16(p + 2));
        for (int j = 0; j < 16; j++) {
            dst[32 * b + j] = d * (float)(p[4 + j] & 0xf) + m;
            dst[32 * b + j + 16] = d * (float)(p[4 + j] >> 4) + m;
        }
    }
}

// Q8_0 block (34 bytes): fp16 d | 32 x int8; w = d*q.
void syk_dequant_q8_0(const void *src, float *dst, int n) {
    const uint8_t *p = src;
    for (int b = 0; b < n / 32; b++, p += 34) {
        float d = syk_fp16_to_fp32(rd16(p));
        for (int j = 0; j < 32; j++) dst[32 * b + j] = d * (float)(int8_t)p[2 + j];
    }
}

void syk_quantize_row_q8_0_ref(const float *x, void *dst, int n) {
    uint8_t *p = dst;
    for (int b = 0; b < n / 32; b++, p += 34) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[32 * b + j]));
        float d = amax / 127.f, id = d != 0 ? 1.f / d : 0.f;
        uint16_t h = syk_fp32_to_fp16(d); memcpy(p, &h, 2);
        for (int j = 0; j < 32; j++) p[2 + j] = (uint8_t)(int8_t)lrintf(x[32 * b + j] * id);
    }
}

void syk_quantize_row_q4_1_ref(const float *x, void *dst, int n) {
    uint8_t *p = dst;
    for (int b = 0; b < n / 32; b++, p += 20) {
        float mn = x[32 * b], mx = x[32 * b];
        for (int j = 1; j < 32; j++) { mn = fminf(mn, x[32 * b + j]); mx = fmaxf(mx, x[32 * b + j]); }
        float d = (mx - mn) / 15.f, id = d != 0 ? 1.f / d : 0.f;
        uint16_t hd = syk_fp32_to_fp16(d), hm = syk_fp32_to_fp16(mn);
        memcpy(p, &hd, 2); memcpy(p + 2, &hm, 2);
        for (int j = 0; j < 16; j++) {
            int lo = (int)fminf(15.f, floorf((x[32 * b + j] - mn) * id + 0.5f));
            int hi = (int)fminf(15.f, floorf((x[32 * b + j + 16] - mn) * id + 0.5f));
            p[4 + j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

// ============================================================================ activation quantization

// Per block: amax, d = amax/127 (stored fp16-rounded), q = round-half-even(y * 127/amax),
// isum = Σq, s = fp16(d * isum) — the same numbers as llama.cpp's x86 quantize_row_q8_0/q8_1.
static void quantize_block_scalar(const float *y, const syk_act *a, int t, int b) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(y[j]));
    float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0.f;
    int8_t *q = a->qs + (size_t)t * a->K + 32 * b;
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        float v = nearbyintf(y[j] * id);
        v = fminf(127.f, fmaxf(-127.f, v));
        q[j] = (int8_t)v;
        sum += q[j];
    }
    size_t o = (size_t)t * (a->K / 32) + b;
    a->d[o] = fp16_round(d);
    a->isum[o] = sum;
    a->s[o] = fp16_round(d * (float)sum);
    for (int L = 0; L < 8; L++) a->bias4[o * 8 + L] = SYK_LANE_MAGIC - 128 * (q[4 * L] + q[4 * L + 1] + q[4 * L + 2] + q[4 * L + 3]);
}

static void quantize_act_scalar(const float *x, const float *norm, float eps, const syk_act *a, int t, float *xout) {
    int K = a->K;
    float scale = 1.f;
    if (norm) {
        double sum = 0;
        for (int i = 0; i < K; i++) sum += (double)(x[i] * x[i]);
        scale = 1.0f / sqrtf((float)(sum / K) + eps);
    }
    float y[32];
    for (int b = 0; b < K / 32; b++) {
        for (int j = 0; j < 32; j++) {
            float v = x[32 * b + j];
            y[j] = norm ? (v * scale) * norm[32 * b + j] : v;
            if (xout) xout[32 * b + j] = y[j];
        }
        quantize_block_scalar(y, a, t, b);
    }
}

#if SYK_X86
AVX512 static void quantize_act_avx512(const float *x, const float *norm, float eps, const syk_act *a, int t, float *xout) {
    int K = a->K, nb = K / 32;
    float scale = 1.f;
    if (norm) {
        double sum = 0;   // double accumulation like llama.cpp's rms_norm
        for (int i = 0; i < K; i++) sum += (double)(x[i] * x[i]);
        scale = 1.0f / sqrtf((float)(sum / K) + eps);
    }
    const __m512 vs = _mm512_set1_ps(scale);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    int8_t *qrow = a->qs + (size_t)t * K;
    for (int b = 0; b < nb; b++) {
        __m512 y0 = _mm512_loadu_ps(x + 32 * b), y1 = _mm512_loadu_ps(x + 32 * b + 16);
        if (norm) {
            y0 = _mm512_mul_ps(_mm512_mul_ps(y0, vs), _mm512_loadu_ps(norm + 32 * b));
            y1 = _mm512_mul_ps(_mm512_mul_ps(y1, vs), _mm512_loadu_ps(norm + 32 * b + 16));
        }
        if (xout) { _mm512_storeu_ps(xout + 32 * b, y0); _mm512_storeu_ps(xout + 32 * b + 16, y1); }
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(y0, absmask), _mm512_and_ps(y1, absmask)));
        float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0.f;
        __m512 vid = _mm512_set1_ps(id);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(y0, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m512i q1 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(y1, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm_storeu_si128((__m128i *)(qrow + 32 * b), _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(qrow + 32 * b + 16), _mm512_cvtsepi32_epi8(q1));
        int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        size_t o = (size_t)t * nb + b;
        // bias4: SYK_LANE_MAGIC - 128 * (sum of each 4 consecutive quants); the sums are dpbusd(ones, q).
        __m256i s4 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)(qrow + 32 * b)));
        _mm256_storeu_si256((__m256i *)(a->bias4 + o * 8),
                            _mm256_sub_epi32(_mm256_set1_epi32(SYK_LANE_MAGIC), _mm256_slli_epi32(s4, 7)));
        a->d[o] = _cvtsh_ss(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
        a->isum[o] = sum;
        a->s[o] = _cvtsh_ss(_cvtss_sh(d * (float)sum, _MM_FROUND_TO_NEAREST_INT));
    }
}
#endif

void syk_quantize_act(const float *x, const float *norm, float eps, const syk_act *a, int t, float *xout) {
#if SYK_X86
    int isa = syk_get_isa();
    if (isa >= SYK_ISA_AVX512VNNI) { quantize_act_avx512(x, norm, eps, a, t, xout); return; }
    if (isa >= SYK_ISA_AVX2) { syk_quantize_act_avx2(x, norm, eps, a, t, xout); return; }
#endif
    quantize_act_scalar(x, norm, eps, a, t, xout);
}

// ============================================================================ repacking

void syk_repack_q4_1(const void *src, void *dst, int rows, int K) {
    const uint8_t *s = src;
    uint8_t *o = dst;
    int nb = K / 32;
    for (int g = 0; g < rows / 16; g++)
        for (int b = 0; b < nb; b++, o += SYK_R16_Q4_1_CHUNK)
            for (int r = 0; r < 16; r++) {
                const uint8_t *blk = s + ((size_t)(16 * g + r) * nb + b) * 20;
                memcpy(o + 2 * r, blk, 2);        // d
                memcpy(o + 32 + 2 * r, blk + 2, 2); // m
                uint8_t q[32];
                for (int j = 0; j < 16; j++) { q[j] = blk[4 + j] & 0xf; q[j + 16] = blk[4 + j] >> 4; }
                for (int j = 0; j < 4; j++)
                    for (int i = 0; i < 4; i++)
                        o[64 + j * 64 + r * 4 + i] = (uint8_t)(q[8 * j + i] | (q[8 * j + 4 + i] << 4));
            }
}

void syk_repack_q4_0_as_q4_1(const void *src, void *dst, int rows, int K) {
    // Rewrite each Q4_0 block as Q4_1 (d, m = -8d) in a temporary row, then repack.
    int nb = K / 32;
    uint8_t *tmp = malloc((size_t)16 * nb * 20);
    if (!tmp) return;
    const uint8_t *s = src;
    uint8_t *o = dst;
    for (int g = 0; g < rows / 16; g++) {
        for (int r = 0; r < 16; r++)
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = s + ((size_t)(16 * g + r) * nb + b) * 18;
                uint8_t *t = tmp + ((size_t)r * nb + b) * 20;
                memcpy(t, blk, 2);
                uint16_t m = syk_fp32_to_fp16(-8.f * syk_fp16_to_fp32(rd16(blk)));  // exact: x8 is a power of 2
                memcpy(t + 2, &m, 2);
                memcpy(t + 4, blk + 2, 16);
            }
        syk_repack_q4_1(tmp, o + (size_t)g * nb * SYK_R16_Q4_1_CHUNK, 16, K);
    }
    free(tmp);
}

void syk_repack_q8_0(const void *src, void *dst, int rows, int K) {
    const uint8_t *s = src;
    uint8_t *o = dst;
    int nb = K / 32;
    for (int g = 0; g < rows / 16; g++)
        for (int b = 0; b < nb; b++, o += SYK_R16_Q8_0_CHUNK)
            for (int r = 0; r < 16; r++) {
                const uint8_t *blk = s + ((size_t)(16 * g + r) * nb + b) * 34;
                memcpy(o + 2 * r, blk, 2);
                for (int j = 0; j < 8; j++)
                    for (int i = 0; i < 4; i++)
                        o[32 + j * 64 + r * 4 + i] = (uint8_t)((int)(int8_t)blk[2 + 4 * j + i] + 128);
            }
}

// Column-range repacks: the same chunk layout for the sub-matrix of columns [k0, k1). Each source row is
// K/32 blocks long; the sub-matrix's blocks b0..b1 are contiguous inside it, so one gathers the rows'
// block ranges into a compact temporary (16 rows at a time) and reuses the whole-row repack.
static void repack_cols(void (*whole)(const void *, void *, int, int), size_t blockBytes, size_t chunkBytes,
                        const void *src, void *dst, int rows, int K, int k0, int k1) {
    int nb = K / 32, b0 = k0 / 32, nbl = (k1 - k0) / 32;
    uint8_t *tmp = malloc((size_t)16 * nbl * blockBytes);
    if (!tmp) return;
    const uint8_t *s = src;
    uint8_t *o = dst;
    for (int g = 0; g < rows / 16; g++) {
        for (int r = 0; r < 16; r++)
            memcpy(tmp + (size_t)r * nbl * blockBytes, s + ((size_t)(16 * g + r) * nb + b0) * blockBytes,
                   (size_t)nbl * blockBytes);
        whole(tmp, o + (size_t)g * nbl * chunkBytes, 16, k1 - k0);
    }
    free(tmp);
}

void syk_repack_q4_1_cols(const void *src, void *dst, int rows, int K, int k0, int k1) {
    repack_cols(syk_repack_q4_1, 20, SYK_R16_Q4_1_CHUNK, src, dst, rows, K, k0, k1);
}
void syk_repack_q4_0_as_q4_1_cols(const void *src, void *dst, int rows, int K, int k0, int k1) {
    repack_cols(syk_repack_q4_0_as_q4_1, 18, SYK_R16_Q4_1_CHUNK, src, dst, rows, K, k0, k1);
}
void syk_repack_q8_0_cols(const void *src, void *dst, int rows, int K, int k0, int k1) {
    repack_cols(syk_repack_q8_0, 34, SYK_R16_Q8_0_CHUNK, src, dst, rows, K, k0, k1);
}

// ============================================================================ matmul

static void gemm_scalar(const syk_wmat *w, const syk_act *a, int ntok, float *out, int ldo, int accumulate, int g0, int g1) {
    int K = w->K, nb = K / 32;
    int q41 = w->type == SYK_W_R16_Q4_1;
    size_t chunk = q41 ? SYK_R16_Q4_1_CHUNK : SYK_R16_Q8_0_CHUNK;
    for (int g = g0; g < g1; g++) {
        const uint8_t *wg = w->data + (size_t)g * nb * chunk;
        for (int t = 0; t < ntok; t++) {
            const int8_t *aq = a->qs + (size_t)t * K;
            float acc[16] = {0};
            for (int b = 0; b < nb; b++) {
                const uint8_t *c = wg + (size_t)b * chunk;
                float da = a->d[(size_t)t * nb + b], sa = a->s[(size_t)t * nb + b];
                int isum = a->isum[(size_t)t * nb + b];
                for (int r = 0; r < 16; r++) {
                    int sumi = 0;
                    float dw = syk_fp16_to_fp32(rd16(c + 2 * r));
                    if (q41) {
                        for (int j = 0; j < 4; j++)
                            for (int i = 0; i < 4; i++) {
                                uint8_t byte = c[64 + j * 64 + r * 4 + i];
                                sumi += (byte & 0xf) * aq[32 * b + 8 * j + i] + (byte >> 4) * aq[32 * b + 8 * j + 4 + i];
                            }
                        float mw = syk_fp16_to_fp32(rd16(c + 32 + 2 * r));
                        acc[r] = fmaf((float)sumi, dw * da, acc[r]);
                        acc[r] = fmaf(mw, sa, acc[r]);
                    } else {
                        for (int j = 0; j < 8; j++)
                            for (int i = 0; i < 4; i++)
                                sumi += c[32 + j * 64 + r * 4 + i] * aq[32 * b + 4 * j + i];
                        sumi -= 128 * isum;
                        acc[r] = fmaf((float)sumi, dw * da, acc[r]);
                    }
                }
            }
            float *o = out + (size_t)t * ldo + 16 * g;
            for (int r = 0; r < 16; r++) o[r] = accumulate ? o[r] + acc[r] : acc[r];
        }
    }
}

// llama.cpp's summation order (see "llama.cpp summation order" below), one output at a time.
static void gemm_scalar_lanes(const syk_wmat *w, const syk_act *a, int ntok, float *out, int ldo, int accumulate, int g0, int g1) {
    int K = w->K, nb = K / 32;
    int q41 = w->type == SYK_W_R16_Q4_1;
    size_t chunk = q41 ? SYK_R16_Q4_1_CHUNK : SYK_R16_Q8_0_CHUNK;
    for (int g = g0; g < g1; g++) {
        const uint8_t *wg = w->data + (size_t)g * nb * chunk;
        for (int t = 0; t < ntok; t++) {
            const int8_t *aq = a->qs + (size_t)t * K;
            float *o = out + (size_t)t * ldo + 16 * g;
            for (int r = 0; r < 16; r++) {
                float lane[8] = {0}, msum = 0;
                for (int b = 0; b < nb; b++) {
                    const uint8_t *c = wg + (size_t)b * chunk;
                    size_t ab = (size_t)t * nb + b;
                    float dd = syk_fp16_to_fp32(rd16(c + 2 * r)) * a->d[ab];
                    for (int L = 0; L < 8; L++) {   // lane L: elements 4L..4L+3 of the block
                        int sumi = 0;
                        for (int i = 0; i < 4; i++) {
                            int e = 4 * L + i, q;
                            if (q41) { uint8_t byte = c[64 + (e / 8) * 64 + r * 4 + e % 4]; q = (e % 8) < 4 ? byte & 0xf : byte >> 4; }
                            else q = (int)c[32 + L * 64 + r * 4 + i] - 128;
                            sumi += q * aq[32 * b + e];
                        }
                        lane[L] = fmaf(dd, (float)sumi, lane[L]);
                    }
                    if (q41) msum = fmaf(syk_fp16_to_fp32(rd16(c + 32 + 2 * r)), a->s[ab], msum);
                }
                float v = (((lane[4] + lane[0]) + (lane[6] + lane[2])) + ((lane[5] + lane[1]) + (lane[7] + lane[3]))) + msum;
                o[r] = accumulate ? o[r] + v : v;
            }
        }
    }
}

#if SYK_X86
AVX512 static inline __attribute__((always_inline)) __m512i bcast4(const int8_t *p) {
    int32_t v; memcpy(&v, p, 4); return _mm512_set1_epi32(v);
}

// One row group x NT tokens (NT a compile-time constant after inlining): the 16-row weight block is
// unpacked once and reused for every token of the tile.
AVX512 static inline __attribute__((always_inline)) void tile_q4_1(const uint8_t *wg, int nb, const syk_act *a, int t0, const int NT,
                                                                   float *out, int ldo, int accumulate) {
    const int K = a->K;
    __m512 facc[8];
#pragma clang loop unroll(full)
    for (int t = 0; t < NT; t++) facc[t] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = wg + (size_t)b * SYK_R16_Q4_1_CHUNK;
        // Software prefetch well ahead (the L2 streamer stops at 4 KiB boundaries).
        for (int pf = 0; pf < SYK_R16_Q4_1_CHUNK; pf += 64) _mm_prefetch((const char *)(c + SYK_PF_DIST + pf), _MM_HINT_T0);
        __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)c));
        __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(c + 32)));
        __m512i v0 = _mm512_loadu_si512(c + 64), v1 = _mm512_loadu_si512(c + 128);
        __m512i v2 = _mm512_loadu_si512(c + 192), v3 = _mm512_loadu_si512(c + 256);
        __m512i l0 = _mm512_and_si512(v0, m4), h0 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), m4);
        __m512i l1 = _mm512_and_si512(v1, m4), h1 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), m4);
        __m512i l2 = _mm512_and_si512(v2, m4), h2 = _mm512_and_si512(_mm512_srli_epi16(v2, 4), m4);
        __m512i l3 = _mm512_and_si512(v3, m4), h3 = _mm512_and_si512(_mm512_srli_epi16(v3, 4), m4);
        // Fully unrolled so facc[] stays in registers (a rolled loop keeps it on the stack, and every
        // block then waits on a store-to-load forward).
#pragma clang loop unroll(full)
        for (int t = 0; t < NT; t++) {
            const int8_t *aq = a->qs + (size_t)(t0 + t) * K + 32 * b;
            // Two independent dpbusd chains (halves the latency chain; integer sums are exact either way).
            __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), l0, bcast4(aq));
            __m512i ac2 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), h0, bcast4(aq + 4));
            acc = _mm512_dpbusd_epi32(acc, l1, bcast4(aq + 8));
            ac2 = _mm512_dpbusd_epi32(ac2, h1, bcast4(aq + 12));
            acc = _mm512_dpbusd_epi32(acc, l2, bcast4(aq + 16));
            ac2 = _mm512_dpbusd_epi32(ac2, h2, bcast4(aq + 20));
            acc = _mm512_dpbusd_epi32(acc, l3, bcast4(aq + 24));
            ac2 = _mm512_dpbusd_epi32(ac2, h3, bcast4(aq + 28));
            acc = _mm512_add_epi32(acc, ac2);
            size_t o = (size_t)(t0 + t) * nb + b;
            facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(dw, _mm512_set1_ps(a->d[o])), facc[t]);
            facc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(a->s[o]), facc[t]);
        }
    }
#pragma clang loop unroll(full)
    for (int t = 0; t < NT; t++) {
        float *o = out + (size_t)(t0 + t) * ldo;
        __m512 r = facc[t];
        if (accumulate) r = _mm512_add_ps(r, _mm512_loadu_ps(o));
        _mm512_storeu_ps(o, r);
    }
}

AVX512 static inline __attribute__((always_inline)) void tile_q8_0(const uint8_t *wg, int nb, const syk_act *a, int t0, const int NT,
                                                                   float *out, int ldo, int accumulate) {
    const int K = a->K;
    __m512 facc[8];
#pragma clang loop unroll(full)
    for (int t = 0; t < NT; t++) facc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = wg + (size_t)b * SYK_R16_Q8_0_CHUNK;
        for (int pf = 0; pf < SYK_R16_Q8_0_CHUNK; pf += 64) _mm_prefetch((const char *)(c + SYK_PF_DIST + pf), _MM_HINT_T0);
        __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)c));
        __m512i w0 = _mm512_loadu_si512(c + 32), w1 = _mm512_loadu_si512(c + 96);
        __m512i w2 = _mm512_loadu_si512(c + 160), w3 = _mm512_loadu_si512(c + 224);
        __m512i w4 = _mm512_loadu_si512(c + 288), w5 = _mm512_loadu_si512(c + 352);
        __m512i w6 = _mm512_loadu_si512(c + 416), w7 = _mm512_loadu_si512(c + 480);
        // Fully unrolled so facc[] stays in registers (a rolled loop keeps it on the stack, and every
        // block then waits on a store-to-load forward).
#pragma clang loop unroll(full)
        for (int t = 0; t < NT; t++) {
            const int8_t *aq = a->qs + (size_t)(t0 + t) * K + 32 * b;
            size_t o = (size_t)(t0 + t) * nb + b;
            // Start from -128*Σq to remove the +128 weight bias.
            __m512i acc = _mm512_set1_epi32(-128 * a->isum[o]);
            __m512i ac2 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, bcast4(aq + 4));
            acc = _mm512_dpbusd_epi32(acc, w0, bcast4(aq));
            acc = _mm512_dpbusd_epi32(acc, w2, bcast4(aq + 8));
            ac2 = _mm512_dpbusd_epi32(ac2, w3, bcast4(aq + 12));
            acc = _mm512_dpbusd_epi32(acc, w4, bcast4(aq + 16));
            ac2 = _mm512_dpbusd_epi32(ac2, w5, bcast4(aq + 20));
            acc = _mm512_dpbusd_epi32(acc, w6, bcast4(aq + 24));
            ac2 = _mm512_dpbusd_epi32(ac2, w7, bcast4(aq + 28));
            acc = _mm512_add_epi32(acc, ac2);
            facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(dw, _mm512_set1_ps(a->d[o])), facc[t]);
        }
    }
#pragma clang loop unroll(full)
    for (int t = 0; t < NT; t++) {
        float *o = out + (size_t)(t0 + t) * ldo;
        __m512 r = facc[t];
        if (accumulate) r = _mm512_add_ps(r, _mm512_loadu_ps(o));
        _mm512_storeu_ps(o, r);
    }
}

#define SYK_TILE_CASES(fn)                                                           \
    switch (nt) {                                                                    \
    case 8: fn(wg, nb, a, t, 8, o, ldo, accumulate); break;                          \
    case 7: fn(wg, nb, a, t, 7, o, ldo, accumulate); break;                          \
    case 6: fn(wg, nb, a, t, 6, o, ldo, accumulate); break;                          \
    case 5: fn(wg, nb, a, t, 5, o, ldo, accumulate); break;                          \
    case 4: fn(wg, nb, a, t, 4, o, ldo, accumulate); break;                          \
    case 3: fn(wg, nb, a, t, 3, o, ldo, accumulate); break;                          \
    case 2: fn(wg, nb, a, t, 2, o, ldo, accumulate); break;                          \
    default: fn(wg, nb, a, t, 1, o, ldo, accumulate); break;                         \
    }

AVX512 static void gemm_avx512(const syk_wmat *w, const syk_act *a, int ntok, float *out, int ldo, int accumulate, int g0, int g1) {
    int nb = w->K / 32;
    int q41 = w->type == SYK_W_R16_Q4_1;
    size_t chunk = q41 ? SYK_R16_Q4_1_CHUNK : SYK_R16_Q8_0_CHUNK;
    for (int g = g0; g < g1; g++) {
        const uint8_t *wg = w->data + (size_t)g * nb * chunk;   // this group's K range stays in L1/L2
        float *o = out + 16 * g;
        for (int t = 0; t < ntok; t += 8) {
            int nt = ntok - t < 8 ? ntok - t : 8;
            if (q41) { SYK_TILE_CASES(tile_q4_1) } else { SYK_TILE_CASES(tile_q8_0) }
        }
    }
}

// ---- llama.cpp summation order ----
// llama.cpp's x86 dot products (ggml_vec_dot_q4_1_q8_1 / _q8_0_q8_0) keep 8 float lanes per output:
// lane L (0..7) holds the integer dot of elements 4L..4L+3 of each 32-block, and is accumulated over
// blocks as acc_L = fma(d_w*d_a, (float)isum_L, acc_L). At the end the lanes are summed pairwise
// ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), and for Q4_1 the block offsets Σ fma(m_w, s_a, ·) (a separate
// scalar chain) are added last. Our repacked chunks already yield one dpbusd result per lane L with the
// 16 rows in the vector lanes, so the same float order costs 8 conversions and 8 FMAs per block.
// The int->float conversion is done without vcvtdq2ps (which competes with vpdpbusd for port 0): each
// dpbusd starts from the bits of 1.5*2^23 (SYK_LANE_MAGIC), so its int32 result x + 0x4B400000 is the
// float 1.5*2^23 + x, and subtracting 1.5*2^23 gives x exactly (|x| < 2^22; lane sums are < 2^16).
AVX512 static inline __attribute__((always_inline)) __m512 lanes_hsum(const __m512 *l) {
    __m512 r0 = _mm512_add_ps(l[4], l[0]), r1 = _mm512_add_ps(l[5], l[1]);
    __m512 r2 = _mm512_add_ps(l[6], l[2]), r3 = _mm512_add_ps(l[7], l[3]);
    return _mm512_add_ps(_mm512_add_ps(r0, r2), _mm512_add_ps(r1, r3));
}

// One token (decode of one sequence): the 16-row block is unpacked in registers, 8 lane accumulators.
AVX512 static inline __attribute__((always_inline)) void tile_q4_1_lanes(const uint8_t *wg, int nb, const syk_act *a, int t,
                                                                         float *out, int ldo, int accumulate) {
    const int K = a->K;
    __m512 lacc[8], macc = _mm512_setzero_ps();
    for (int L = 0; L < 8; L++) lacc[L] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i magic = _mm512_set1_epi32(SYK_LANE_MAGIC);
    const __m512 fmagic = _mm512_set1_ps(12582912.0f);
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = wg + (size_t)b * SYK_R16_Q4_1_CHUNK;
        for (int pf = 0; pf < SYK_R16_Q4_1_CHUNK; pf += 64) _mm_prefetch((const char *)(c + SYK_PF_DIST + pf), _MM_HINT_T0);
        __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)c));
        __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(c + 32)));
        __m512i w[8];
        for (int j = 0; j < 4; j++) {
            __m512i v = _mm512_loadu_si512(c + 64 + 64 * j);
            w[2 * j] = _mm512_and_si512(v, m4);                              // elements 8j..8j+3   (lane 2j)
            w[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);   // elements 8j+4..8j+7 (lane 2j+1)
        }
        const int8_t *aq = a->qs + (size_t)t * K + 32 * b;
        size_t o = (size_t)t * nb + b;
        __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(a->d[o]));
        for (int L = 0; L < 8; L++) {
            __m512i isum = _mm512_dpbusd_epi32(magic, w[L], bcast4(aq + 4 * L));
            lacc[L] = _mm512_fmadd_ps(dd, _mm512_sub_ps(_mm512_castsi512_ps(isum), fmagic), lacc[L]);
        }
        macc = _mm512_fmadd_ps(mw, _mm512_set1_ps(a->s[o]), macc);
    }
    float *po = out + (size_t)t * ldo;
    __m512 r = _mm512_add_ps(lanes_hsum(lacc), macc);
    if (accumulate) r = _mm512_add_ps(r, _mm512_loadu_ps(po));
    _mm512_storeu_ps(po, r);
}

// Multi-token tiles. Eight lane accumulators per token leave room in 32 registers for only two tokens, and
// then every weight vector serves two dpbusd. Instead a tile of up to 4 tokens makes two passes over the
// group's blocks, lanes 0-3 and then lanes 4-7 (4 tokens x 4 lanes = 16 accumulators): each weight vector
// now serves 4 dpbusd, and per-token work (the d_w*d_a product, the pointer arithmetic) is shared by 4
// lanes. A lane's chain over the blocks is the same float sequence as before, so the result is unchanged.
// Q4_1 weights come from `wu`, the group's nibbles unpacked once (8 x 64 bytes per block, lane L of block b
// at wu + 512*b + 64*L); Q8_0 weights are bytes already and are read from the packed chunks.
#define SYK_LANES_MAX_NB 64   // blocks per row the unpacked buffer holds (K <= 2048)
#define SYK_TILE_T 4          // tokens per multi-token tile
AVX512 static inline __attribute__((always_inline)) void pass_lanes(const uint8_t *wg, const uint8_t *wu, int nb, const syk_act *a,
                                                                    int t0, const int NT, const int L0, const int q41,
                                                                    __m512 *lout /* [NT][4] */, __m512 *mout /* [NT] */,
                                                                    const uint8_t *pf, int pf_mod, int pf_rem) {
    const int K = a->K;
    const size_t chunk = q41 ? SYK_R16_Q4_1_CHUNK : SYK_R16_Q8_0_CHUNK;
    __m512 acc[SYK_TILE_T][4], macc[SYK_TILE_T];
#pragma clang loop unroll(full)
    for (int t = 0; t < NT; t++) {
        macc[t] = _mm512_setzero_ps();
#pragma clang loop unroll(full)
        for (int L = 0; L < 4; L++) acc[t][L] = _mm512_setzero_ps();
    }
    const __m512i magic = _mm512_set1_epi32(SYK_LANE_MAGIC);
    const __m512 fmagic = _mm512_set1_ps(12582912.0f);
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = wg + (size_t)b * chunk;
        if (pf && b % pf_mod == pf_rem)   // the next group's block b (spread over the tiles and passes)
            for (int l = 0; l < (int)chunk; l += 64) _mm_prefetch((const char *)(pf + (size_t)b * chunk + l), _MM_HINT_T0);
        __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)c));
        __m512i w[4];
#pragma clang loop unroll(full)
        for (int L = 0; L < 4; L++)
            w[L] = q41 ? _mm512_load_si512(wu + (size_t)b * 512 + 64 * (L0 + L)) : _mm512_loadu_si512(c + 32 + 64 * (L0 + L));
#pragma clang loop unroll(full)
        for (int t = 0; t < NT; t++) {
            const int8_t *aq = a->qs + (size_t)(t0 + t) * K + 32 * b;
            size_t o = (size_t)(t0 + t) * nb + b;
            __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(a->d[o]));
#pragma clang loop unroll(full)
            for (int L = 0; L < 4; L++) {
                // Q8_0 weights are stored +128: start from bias4 = magic - 128 * (sum of the 4 activations).
                __m512i start = q41 ? magic : _mm512_set1_epi32(a->bias4[o * 8 + L0 + L]);
                __m512i isum = _mm512_dpbusd_epi32(start, w[L], bcast4(aq + 4 * (L0 + L)));
                acc[t][L] = _mm512_fmadd_ps(dd, _mm512_sub_ps(_mm512_castsi512_ps(isum), fmagic), acc[t][L]);
            }
            if (q41 && L0 == 0) macc[t] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(c + 32))), _mm512_set1_ps(a->s[o]), macc[t]);
        }
    }
#pragma clang loop unroll(full)
    for (int t = 0; t < NT; t++) {
#pragma clang loop unroll(full)
        for (int L = 0; L < 4; L++) lout[4 * t + L] = acc[t][L];
        if (q41 && L0 == 0) mout[t] = macc[t];
    }
}

AVX512 static inline __attribute__((always_inline)) void tile_lanes_multi(const uint8_t *wg, const uint8_t *wu, int nb, const syk_act *a,
                                                                          int t0, const int NT, const int q41, float *out, int ldo,
                                                                          int accumulate, const uint8_t *pf, int pf_mod, int pf_rem) {
    __m512 lo[SYK_TILE_T * 4], hi[SYK_TILE_T * 4], m[SYK_TILE_T];
    pass_lanes(wg, wu, nb, a, t0, NT, 0, q41, lo, m, pf, pf_mod, 2 * pf_rem);
    pass_lanes(wg, wu, nb, a, t0, NT, 4, q41, hi, m, pf, pf_mod, 2 * pf_rem + 1);
    for (int t = 0; t < NT; t++) {
        float *o = out + (size_t)(t0 + t) * ldo;
        const __m512 *l = lo + 4 * t, *h = hi + 4 * t;   // lanes 0-3, lanes 4-7
        __m512 r = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(h[0], l[0]), _mm512_add_ps(h[2], l[2])),
                                 _mm512_add_ps(_mm512_add_ps(h[1], l[1]), _mm512_add_ps(h[3], l[3])));
        if (q41) r = _mm512_add_ps(r, m[t]);
        if (accumulate) r = _mm512_add_ps(r, _mm512_loadu_ps(o));
        _mm512_storeu_ps(o, r);
    }
}

#define SYK_MULTI_CASES(q)                                                                          \
    switch (nt) {                                                                                   \
    case 4: tile_lanes_multi(wg, wu, nb, a, t, 4, q, o, ldo, accumulate, next, passes, t / 4); break; \
    case 3: tile_lanes_multi(wg, wu, nb, a, t, 3, q, o, ldo, accumulate, next, passes, t / 4); break; \
    case 2: tile_lanes_multi(wg, wu, nb, a, t, 2, q, o, ldo, accumulate, next, passes, t / 4); break; \
    default: tile_lanes_multi(wg, wu, nb, a, t, 1, q, o, ldo, accumulate, next, passes, t / 4); break; \
    }

AVX512 static inline __attribute__((always_inline)) void tile_q8_0_lanes(const uint8_t *wg, int nb, const syk_act *a, int t,
                                                                         float *out, int ldo, int accumulate) {
    const int K = a->K;
    __m512 lacc[8];
    for (int L = 0; L < 8; L++) lacc[L] = _mm512_setzero_ps();
    const __m512 fmagic = _mm512_set1_ps(12582912.0f);
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = wg + (size_t)b * SYK_R16_Q8_0_CHUNK;
        for (int pf = 0; pf < SYK_R16_Q8_0_CHUNK; pf += 64) _mm_prefetch((const char *)(c + SYK_PF_DIST + pf), _MM_HINT_T0);
        __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)c));
        const int8_t *aq = a->qs + (size_t)t * K + 32 * b;
        size_t o = (size_t)t * nb + b;
        __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(a->d[o]));
        const int32_t *bias = a->bias4 + o * 8;
        for (int L = 0; L < 8; L++) {
            // weights are stored +128: start from -128 * (sum of the 4 activations) to remove the bias.
            __m512i isum = _mm512_dpbusd_epi32(_mm512_set1_epi32(bias[L]), _mm512_loadu_si512(c + 32 + 64 * L), bcast4(aq + 4 * L));
            lacc[L] = _mm512_fmadd_ps(dd, _mm512_sub_ps(_mm512_castsi512_ps(isum), fmagic), lacc[L]);
        }
    }
    float *po = out + (size_t)t * ldo;
    __m512 r = lanes_hsum(lacc);
    if (accumulate) r = _mm512_add_ps(r, _mm512_loadu_ps(po));
    _mm512_storeu_ps(po, r);
}


AVX512 static void gemm_avx512_lanes(const syk_wmat *w, const syk_act *a, int ntok, float *out, int ldo, int accumulate, int g0, int g1) {
    int nb = w->K / 32;
    int q41 = w->type == SYK_W_R16_Q4_1;
    size_t chunk = q41 ? SYK_R16_Q4_1_CHUNK : SYK_R16_Q8_0_CHUNK;
    _Alignas(64) uint8_t wu[SYK_LANES_MAX_NB * 512];   // unpacked Q4_1 nibbles of one group (multi-token case)
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int g = g0; g < g1; g++) {
        const uint8_t *wg = w->data + (size_t)g * nb * chunk;
        float *o = out + 16 * g;
        int t = 0;
        if (ntok >= 2 && (!q41 || nb <= SYK_LANES_MAX_NB)) {
            if (q41)
                for (int b = 0; b < nb; b++)
                    for (int j = 0; j < 4; j++) {
                        __m512i v = _mm512_loadu_si512(wg + (size_t)b * chunk + 64 + 64 * j);
                        _mm512_store_si512(wu + 512 * b + 128 * j, _mm512_and_si512(v, m4));
                        _mm512_store_si512(wu + 512 * b + 128 * j + 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
                    }
            // While the tiles compute, the next group is prefetched, its blocks spread over the passes (pass i
            // takes blocks b with b % passes == i), so the memory traffic overlaps compute.
            const uint8_t *next = g + 1 < g1 ? wg + (size_t)nb * chunk : NULL;
            int passes = 2 * ((ntok + SYK_TILE_T - 1) / SYK_TILE_T);   // two lane passes per tile of tokens
            for (; t < ntok; t += SYK_TILE_T) {
                int nt = ntok - t < SYK_TILE_T ? ntok - t : SYK_TILE_T;
                if (q41) { SYK_MULTI_CASES(1) } else { SYK_MULTI_CASES(0) }
            }
            continue;
        }
        // One token (decode of one sequence), or Q4_1 rows longer than the unpacked buffer: token by token.
        for (; t < ntok; t++) {
            if (q41) tile_q4_1_lanes(wg, nb, a, t, o, ldo, accumulate); else tile_q8_0_lanes(wg, nb, a, t, o, ldo, accumulate);
        }
    }
}
#endif

// Summation order: SYK_SUM_LLAMA (default) or SYK_SUM_FAST; SWITCHYARD_SUM_ORDER=fast in the environment
// selects the fast order at the first call unless syk_set_sum_order was called.
static _Atomic int g_sum_order = -1;

static _Thread_local int t_sum_order = -1;   // per-thread override, like t_isa (tests)

void syk_set_thread_sum_order(int order) {
    t_sum_order = order < 0 ? -1 : (order == SYK_SUM_FAST ? SYK_SUM_FAST : SYK_SUM_LLAMA);
}

int syk_get_sum_order(void) {
    if (t_sum_order >= 0) return t_sum_order;
    int v = atomic_load_explicit(&g_sum_order, memory_order_relaxed);
    if (v < 0) {
        const char *e = getenv("SWITCHYARD_SUM_ORDER");
        v = e && strcmp(e, "fast") == 0 ? SYK_SUM_FAST : SYK_SUM_LLAMA;
        atomic_store_explicit(&g_sum_order, v, memory_order_relaxed);
    }
    return v;
}

void syk_set_sum_order(int order) {
    atomic_store_explicit(&g_sum_order, order == SYK_SUM_FAST ? SYK_SUM_FAST : SYK_SUM_LLAMA, memory_order_relaxed);
}

void syk_gemm(const syk_wmat *w, const syk_act *a, int ntok, float *out, int ldo, int accumulate, int g0, int g1) {
    int llama = syk_get_sum_order() == SYK_SUM_LLAMA;
#if SYK_X86
    int isa = syk_get_isa();
    if (isa >= SYK_ISA_AVX512VNNI) {
        if (llama) gemm_avx512_lanes(w, a, ntok, out, ldo, accumulate, g0, g1);
        else gemm_avx512(w, a, ntok, out, ldo, accumulate, g0, g1);
        return;
    }
    if (isa >= SYK_ISA_AVX2) { syk_gemm_avx2(w, a, ntok, out, ldo, accumulate, g0, g1, llama); return; }
#endif
    if (llama) gemm_scalar_lanes(w, a, ntok, out, ldo, accumulate, g0, g1);
    else gemm_scalar(w, a, ntok, out, ldo, accumulate, g0, g1);
}

// ============================================================================ bandwidth probe

#if SYK_X86
AVX512 static uint64_t stream_read512(const uint8_t *p, size_t n) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 256) {
        a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(p + i));
        a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(p + i + 64));
        a2 = _mm512_xor_si512(a2, _mm512_loadu_si512(p + i + 128));
        a3 = _mm512_xor_si512(a3, _mm512_loadu_si512(p + i + 192));
    }
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)));
}
#endif

uint64_t syk_stream_read(const void *p, size_t n) {
    n &= ~(size_t)255;
#if SYK_X86
    if (syk_get_isa() >= SYK_ISA_AVX512VNNI) return stream_read512(p, n);
#endif
    uint64_t h = 0;
    const uint64_t *q = p;
    for (size_t i = 0; i < n / 8; i++) h ^= q[i];
    return h;
}

// ============================================================================ attention

void syk_store_f16(const float *x, uint16_t *dst, int n) {
#if SYK_X86
    if (syk_get_isa() >= SYK_ISA_AVX2) { syk_store_f16_avx2(x, dst, n); return; }
#endif
    for (int i = 0; i < n; i++) dst[i] = syk_fp32_to_fp16(x[i]);
}

// Attention with llama.cpp's CPU flash-attention numerics (its default; the per-row "one_chunk" kernel
// it runs for decode and for prompts shorter than 64 tokens):
// - q rounded to fp16; score s_j = (q16 · k_j) * scale, the dot summed in llama.cpp's order: the hd
//   products (exact in fp32) are taken as 16-wide vectors, chunk c accumulated into partial P[c % 4],
//   combined (P0+P2) + (P1+P3), then reduced across lanes as a 256/128/64/32-bit halving tree;
// - online softmax over positions in order (running max M, sum S; e^x from libm);
// - the V accumulator kept in fp16: acc = fp16(fma(v_j, p, acc)), rescaled as fp16(acc * e^(Mold-M)) when
//   the max grows; the output is acc * (1/S).
static float reduce_tree_scalar(const float *x /* [16] */) {
    float t3[8], t6[4];
    for (int i = 0; i < 8; i++) t3[i] = x[i + 8] + x[i];
    for (int i = 0; i < 4; i++) t6[i] = t3[i + 4] + t3[i];
    return (t6[0] + t6[2]) + (t6[1] + t6[3]);
}

static inline __attribute__((always_inline)) void attend_scalar_body(const float *q, const uint16_t *k, const uint16_t *v, int stride, int npos, int hd,
                          float scale, float *scores, float *out) {
    (void)scores;
    float q16[256], acc[256];
    for (int i = 0; i < hd; i++) { q16[i] = fp16_round(q[i]); acc[i] = 0; }
    int tree = hd % 64 == 0;   // llama.cpp's vector order applies to hd = 64·m; other sizes sum in order
    float M = -INFINITY, S = 0;
    for (int j = 0; j < npos; j++) {
        const uint16_t *kj = k + (size_t)j * stride, *vj = v + (size_t)j * stride;
        float dot = 0;
        if (tree) {
            float p[4][16] = {{0}}, x[16];
            for (int c = 0; c < hd / 16; c++)
                for (int i = 0; i < 16; i++) p[c % 4][i] = fmaf(q16[16 * c + i], syk_fp16_to_fp32(kj[16 * c + i]), p[c % 4][i]);
            for (int i = 0; i < 16; i++) x[i] = (p[0][i] + p[2][i]) + (p[1][i] + p[3][i]);
            dot = reduce_tree_scalar(x);
        } else {
            for (int i = 0; i < hd; i++) dot += q16[i] * syk_fp16_to_fp32(kj[i]);
        }
        float sj = dot * scale, ms = 1, vs = 1;
        if (sj > M) {
            float Mold = M;
            M = sj;
            ms = expf(Mold - M);
            for (int i = 0; i < hd; i++) acc[i] = fp16_round(acc[i] * ms);
        } else {
            vs = expf(sj - M);
        }
        for (int i = 0; i < hd; i++) acc[i] = fp16_round(fmaf(syk_fp16_to_fp32(vj[i]), vs, acc[i]));
        S = fmaf(S, ms, vs);   // fused, as GCC compiles llama.cpp's S = S*ms + vs
    }
    float inv = 1.f / S;
    for (int i = 0; i < hd; i++) out[i] = acc[i] * inv;
}

// The same operations compiled twice: portable (fmaf may be a libm call) and for FMA-capable CPUs (the AVX2
// level), where fmaf is one instruction — results are identical, fmaf being exact either way.
static void attend_scalar(const float *q, const uint16_t *k, const uint16_t *v, int stride, int npos, int hd,
                          float scale, float *scores, float *out) {
    attend_scalar_body(q, k, v, stride, npos, hd, scale, scores, out);
}
#if SYK_X86
SYK_AVX2_ATTR static void attend_scalar_fma(const float *q, const uint16_t *k, const uint16_t *v, int stride, int npos, int hd,
                                            float scale, float *scores, float *out) {
    attend_scalar_body(q, k, v, stride, npos, hd, scale, scores, out);
}
#endif

#if SYK_X86
AVX512 static inline __m512 round16(__m512 x) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

AVX512 static void attend_avx512(const float *q, const uint16_t *k, const uint16_t *v, int stride, int npos, int hd,
                                 float scale, float *scores, float *out) {
    int nc = hd / 16;   // hd % 64 == 0 checked by the caller; 4 <= nc <= 16
    __m512 qv[16], acc[16];
    for (int c = 0; c < nc; c++) { qv[c] = round16(_mm512_loadu_ps(q + 16 * c)); acc[c] = _mm512_setzero_ps(); }
    // Pass 1: scores.
    for (int j = 0; j < npos; j++) {
        const uint16_t *kj = k + (size_t)j * stride;
        __m512 p[4];
        for (int c = 0; c < 4; c++) p[c] = _mm512_mul_ps(qv[c], _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kj + 16 * c))));
        for (int c = 4; c < nc; c++)
            p[c % 4] = _mm512_fmadd_ps(qv[c], _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kj + 16 * c))), p[c % 4]);
        scores[j] = syk_reduce_tree512(_mm512_add_ps(_mm512_add_ps(p[0], p[2]), _mm512_add_ps(p[1], p[3]))) * scale;
    }
    // Pass 2: the online-softmax recurrence of attend_scalar, fp16 accumulator.
    float M = -INFINITY, S = 0;
    for (int j = 0; j < npos; j++) {
        const uint16_t *vj = v + (size_t)j * stride;
        float sj = scores[j], ms = 1, vs = 1;
        if (sj > M) {
            float Mold = M;
            M = sj;
            ms = expf(Mold - M);
            __m512 vms = _mm512_set1_ps(ms);
            for (int c = 0; c < nc; c++) acc[c] = round16(_mm512_mul_ps(acc[c], vms));
        } else {
            vs = expf(sj - M);
        }
        __m512 p = _mm512_set1_ps(vs);
        for (int c = 0; c < nc; c++)
            acc[c] = round16(_mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 16 * c))), p, acc[c]));
        S = fmaf(S, ms, vs);   // fused, as GCC compiles llama.cpp's S = S*ms + vs
    }
    __m512 inv = _mm512_set1_ps(1.f / S);
    for (int c = 0; c < nc; c++) _mm512_storeu_ps(out + 16 * c, _mm512_mul_ps(acc[c], inv));
}
#endif

void syk_attend(const float *q, const uint16_t *k, const uint16_t *v, int stride, int npos, int hd,
                float scale, float *scores, float *out) {
#if SYK_X86
    if (syk_get_isa() >= SYK_ISA_AVX512VNNI && hd % 64 == 0 && hd <= 256) {
        attend_avx512(q, k, v, stride, npos, hd, scale, scores, out);
        return;
    }
    if (syk_get_isa() >= SYK_ISA_AVX2) { attend_scalar_fma(q, k, v, stride, npos, hd, scale, scores, out); return; }
#endif
    attend_scalar(q, k, v, stride, npos, hd, scale, scores, out);
}

// SiLU as llama.cpp evaluates it on x86 (ggml_v_silu): x / (1 + e^-x), with e^x computed like the
// vectorized expf of ARM's optimized-routines that it uses (round-to-integer by the 1.5·2^23 trick, a
// two-constant range reduction, a degree-5 polynomial, scaling by 2^n; max error ~1.5 ulp). Being
// bit-identical matters: the product is re-quantized to 8 bits, and a 1-ulp change there flips roundings
// that the following layers amplify. This scalar version does the same operations, fused where the vector
// code fuses.
static inline float expf_ggml_scalar(float x) {
    const float r = 0x1.8p23f;
    float z = fmaf(x, 0x1.715476p+0f, r);
    float n = z - r;
    float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    float u = b * b;
    float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                   fmaf(0x1.ffffecp-1f, b, 1.0f));
    if (fabsf(n) > 192) return n <= 0 ? 0.0f : INFINITY;
    return scalbnf(j, (int)n);
}

void syk_swiglu(const float *g, const float *u, float *h, int n) {
    for (int i = 0; i < n; i++) h[i] = g[i] / (1.f + expf_ggml_scalar(0.f - g[i])) * u[i];
}

// RoPE in llama.cpp's NORM layout (adjacent pairs): rotates `nheads` heads of hd floats in place with
// tables of hd/2 cos/sin values, rounded like llama.cpp's x86 build (GCC contracts its
// x0*cos - x1*sin, x0*sin + x1*cos): out0 = fma(x0, cos, -(x1*sin)), out1 = fma(x0, sin, x1*cos), the
// unfused product rounded first (checked element by element against its ROPE output).
static inline __attribute__((always_inline)) void rope_norm_body(float *x, int nheads, int hd, const float *cs, const float *sn) {
    for (int h = 0; h < nheads; h++) {
        float *v = x + (size_t)h * hd;
        for (int i = 0; i < hd / 2; i++) {
            float a = v[2 * i], b = v[2 * i + 1];
            float bs = b * sn[i], bc = b * cs[i];
            v[2 * i] = fmaf(a, cs[i], -bs);
            v[2 * i + 1] = fmaf(a, sn[i], bc);
        }
    }
}

static void rope_norm_scalar(float *x, int nheads, int hd, const float *cs, const float *sn) {
    rope_norm_body(x, nheads, hd, cs, sn);
}

#if SYK_X86
// Same operations compiled with FMA enabled (the AVX2 and AVX-512 levels), so fmaf is one instruction
// instead of a libm call; fmaf being exact either way, the results are the same.
SYK_AVX2_ATTR static void rope_norm_fma(float *x, int nheads, int hd, const float *cs, const float *sn) {
    rope_norm_body(x, nheads, hd, cs, sn);
}
#endif

void syk_rope_norm(float *x, int nheads, int hd, const float *cs, const float *sn) {
#if SYK_X86
    if (syk_get_isa() >= SYK_ISA_AVX2) { rope_norm_fma(x, nheads, hd, cs, sn); return; }
#endif
    rope_norm_scalar(x, nheads, hd, cs, sn);
}


// ============================================================================ thread pool
//
// Workers wait for `gen` to change: spin `spin` iterations (cheap hand-off while the model runs), then
// sleep on a futex. The caller publishes (fn, ctx), sets `pending`, then bumps `gen` (release); workers
// acquire `gen`, run, and decrement `pending` (release); the caller spins until `pending` is 0 (acquire).
// Sleep/wake handshake: a worker increments `sleepers` before FUTEX_WAIT(gen, seen); the caller bumps
// gen before reading `sleepers` (both seq_cst), so either the caller sees the sleeper and wakes it, or
// the worker's FUTEX_WAIT sees the new gen and returns at once.

struct syk_pool {
    int n;
    int spin;
    pthread_t *threads;
    _Atomic int *tids;
    _Atomic uint32_t gen;
    _Atomic int pending;
    _Atomic int sleepers;
    _Atomic int stop;
    syk_fn fn;
    void *ctx;
    int isa, order;   // per-pool kernel overrides (-1: the process setting), applied on every thread of a run
};

typedef struct { syk_pool *p; int i; } worker_arg;

static long futex(_Atomic uint32_t *addr, int op, uint32_t val) {
    return syscall(SYS_futex, (uint32_t *)addr, op, val, NULL, NULL, 0);
}

static inline void cpu_relax(void) {
#if SYK_X86
    _mm_pause();
#endif
}

static void *worker_main(void *argp) {
    worker_arg arg = *(worker_arg *)argp;
    free(argp);
    syk_pool *p = arg.p;
    atomic_store(&p->tids[arg.i], (int)syscall(SYS_gettid));
    uint32_t seen = 0;   // gen starts at 0; a run published before this thread started is still seen as new
    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
            if (++spins < p->spin) { cpu_relax(); continue; }
            atomic_fetch_add(&p->sleepers, 1);
            futex(&p->gen, FUTEX_WAIT_PRIVATE, seen);
            atomic_fetch_sub(&p->sleepers, 1);
            spins = 0;
        }
        seen = g;
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) return NULL;
        t_isa = p->isa;          // published with fn/ctx by the gen increment
        t_sum_order = p->order;
        p->fn(p->ctx, arg.i, p->n);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
}

syk_pool *syk_pool_create(int nthreads, int spin) {
    if (nthreads < 1) nthreads = 1;
    syk_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = nthreads;
    p->spin = spin < 0 ? 0 : spin;
    p->isa = -1;
    p->order = -1;
    p->threads = calloc((size_t)nthreads, sizeof(pthread_t));
    p->tids = calloc((size_t)nthreads, sizeof(_Atomic int));
    if (!p->threads || !p->tids) { free(p->threads); free((void *)p->tids); free(p); return NULL; }
    for (int i = 1; i < nthreads; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (!a) { p->n = i; break; }
        a->p = p; a->i = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, a) != 0) { free(a); p->n = i; break; }
    }
    return p;
}

int syk_pool_threads(const syk_pool *p) { return p->n; }

int syk_pool_worker_tid(const syk_pool *p, int i) {
    if (i <= 0 || i >= p->n) return 0;
    // Wait for the worker to publish its tid (it does so first thing).
    int t;
    while ((t = atomic_load((_Atomic int *)&p->tids[i])) == 0) cpu_relax();
    return t;
}

void syk_pool_set_overrides(syk_pool *p, int isa, int order) {
    if (isa >= 0) { int best = syk_cpu_features(); isa = isa < best ? isa : best; }
    p->isa = isa < 0 ? -1 : isa;
    p->order = order < 0 ? -1 : (order == SYK_SUM_FAST ? SYK_SUM_FAST : SYK_SUM_LLAMA);
}

static void pool_run(syk_pool *p, syk_fn fn, void *ctx);

void syk_pool_run(syk_pool *p, syk_fn fn, void *ctx) {
    // The caller runs part i = 0 under the pool's overrides too; its own settings come back afterwards.
    int saved_isa = t_isa, saved_order = t_sum_order;
    if (p->isa >= 0) t_isa = p->isa;
    if (p->order >= 0) t_sum_order = p->order;
    pool_run(p, fn, ctx);
    t_isa = saved_isa;
    t_sum_order = saved_order;
}

static void pool_run(syk_pool *p, syk_fn fn, void *ctx) {
    if (p->n == 1) { fn(ctx, 0, 1); return; }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    atomic_fetch_add(&p->gen, 1);   // seq_cst: publishes fn/ctx/pending (release) and orders before the sleepers read
    if (atomic_load(&p->sleepers) > 0) futex(&p->gen, FUTEX_WAKE_PRIVATE, INT_MAX);
    fn(ctx, 0, p->n);
    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0) {
        if (++spins < 1 << 16) cpu_relax(); else { sched_yield(); spins = 0; }
    }
}

void syk_pool_destroy(syk_pool *p) {
    if (!p) return;
    atomic_store_explicit(&p->stop, 1, memory_order_release);
    atomic_fetch_add(&p->gen, 1);
    futex(&p->gen, FUTEX_WAKE_PRIVATE, INT_MAX);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    free(p->threads);
    free((void *)p->tids);
    free(p);
}

// ============================================================================ pool tasks

static inline void split(int n, int ith, int nth, int *b, int *e) {
    *b = (int)((long)n * ith / nth);
    *e = (int)((long)n * (ith + 1) / nth);
}

// Row groups [b, e) of the concatenated parts.
static void gemm_groups(const syk_gemm_task *t, int b, int e) {
    int base = 0;   // first group of part p in the concatenation
    for (int p = 0; p < t->nparts && b < e; p++) {
        int ng = t->parts[p].rows / 16;
        int lo = b > base ? b - base : 0, hi = e - base < ng ? e - base : ng;
        if (lo < hi) syk_gemm(&t->parts[p], t->act, t->ntok, t->out + 16 * base, t->ldo, t->accumulate, lo, hi);
        base += ng;
    }
}

// The threads claim chunks of row groups from a shared counter instead of fixed halves: on a shared VM one
// vCPU is often slower than the other for a while, and with a fixed split the faster thread then waits at
// the barrier (a 2-thread batched decode measured 11 % of its time in the worker's wait, the caller doing
// 35 % more of the groups' time). Each group is computed whole by one thread exactly as before, so the
// outputs do not depend on who takes it. About 8 chunks per thread keep the counter's traffic small.
void syk_gemm_run(void *task, int ith, int nth) {
    syk_gemm_task *t = task;
    int total = 0;
    for (int p = 0; p < t->nparts; p++) total += t->parts[p].rows / 16;
    (void)ith;
    if (nth == 1) { gemm_groups(t, 0, total); return; }
    int chunk = total / (8 * nth);
    if (chunk < 1) chunk = 1;
    for (;;) {
        int b = __atomic_fetch_add(&t->next, chunk, __ATOMIC_RELAXED);
        if (b >= total) break;
        gemm_groups(t, b, b + chunk < total ? b + chunk : total);
    }
}

void syk_quant_run(void *task, int ith, int nth) {
    const syk_quant_task *t = task;
    int b, e;
    split(t->ntok, ith, nth, &b, &e);
    for (int i = b; i < e; i++) syk_quantize_act(t->x + (size_t)i * t->ldx, t->norm, t->eps, t->act, i, NULL);
}

#if SYK_X86
// Vector form of expf_ggml_scalar / syk_swiglu (same operations lane by lane).
AVX512 static inline __m512 expf_ggml512(__m512 x) {
    const __m512 r = _mm512_set1_ps(0x1.8p23f);
    __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), r);
    __m512 n = _mm512_sub_ps(z, r);
    __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f), _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
    __mmask16 big = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192), _CMP_GT_OQ);
    __m512 u = _mm512_mul_ps(b, b);
    __m512 j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b, _mm512_set1_ps(0x1.573e2ep-5f)), u,
                        _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b, _mm512_set1_ps(0x1.fffdb6p-2f))),
        u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0f)));
    __m512 res = _mm512_scalef_ps(j, n);
    if (!big) return res;
    __m512 alt = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(n, _mm512_setzero_ps(), _CMP_LE_OQ), _mm512_set1_ps(INFINITY),
                                      _mm512_setzero_ps());
    return _mm512_mask_blend_ps(big, res, alt);
}

AVX512 static void swiglu_avx512(const float *g, const float *u, float *h, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 gv = _mm512_loadu_ps(g + i);
        __m512 e = expf_ggml512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        __m512 s = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.f), e));
        _mm512_storeu_ps(h + i, _mm512_mul_ps(s, _mm512_loadu_ps(u + i)));
    }
    syk_swiglu(g + i, u + i, h + i, n - i);
}
#endif

void syk_swiglu_run(void *task, int ith, int nth) {
    const syk_swiglu_task *t = task;
    int b, e;
    split(t->ntok, ith, nth, &b, &e);
    for (int i = b; i < e; i++) {
        const float *g = t->gu + (size_t)i * 2 * t->ff;
        float *h = t->h + (size_t)i * t->ff;
#if SYK_X86
        int isa = syk_get_isa();
        if (isa >= SYK_ISA_AVX512VNNI) swiglu_avx512(g, g + t->ff, h, t->ff);
        else if (isa >= SYK_ISA_AVX2) syk_swiglu_avx2(g, g + t->ff, h, t->ff);
        else
#endif
        syk_swiglu(g, g + t->ff, h, t->ff);
        syk_quantize_act(h, NULL, 0, t->act, i, NULL);
    }
}

// ---- llama.cpp's tiled flash attention (batches of >= 64 tokens) ----
// llama.cpp switches to ggml_compute_forward_flash_attn_ext_tiled when a batch holds >= 64 query rows.
// Per query row: q stays f32; positions go in tiles of 64 (aligned at 0); in a tile, s_j is a sequential
// fma chain over the hd dims (k converted f16->f32), times scale, plus the mask (+0); the tile max m
// updates M = max(M, m) and, when M grows, acc and S are scaled by expf(Mold - M); p_j = e^(s_j - M) with
// ggml's vectorized expf, summed per 16 positions by the halving tree and over the tile in double, added to
// the float S; acc (f32) += p_j v_j as a sequential fma chain over j; out = acc * (1/S).
// kt holds this row's kv head transposed to f32, kt[d*ldk + j] = k_j[d] (built once per run of tokens).
static inline __attribute__((always_inline)) void attend_tiled_scalar_body(const float *q, const float *kt, int ldk, const uint16_t *v, int stride, int npos, int hd,
                                float scale, float *out) {
    float acc[256], M = -INFINITY, S = 0;
    for (int i = 0; i < hd; i++) acc[i] = 0;
    for (int ic = 0; ic < npos; ic += 64) {
        int nt = npos - ic < 64 ? npos - ic : 64;
        float kq[64], tmax = -INFINITY;
        for (int j = 0; j < 64; j++) {
            if (j >= nt) { kq[j] = -INFINITY; continue; }
            float s = 0;
            for (int d = 0; d < hd; d++) s = fmaf(kt[(size_t)d * ldk + ic + j], q[d], s);
            kq[j] = s * scale + 0.0f;
            tmax = tmax > kq[j] ? tmax : kq[j];
        }
        float Mnew = fmaxf(M, tmax);
        if (Mnew > M) {
            float ms = expf(M - Mnew);
            for (int i = 0; i < hd; i++) acc[i] *= ms;
            S *= ms;
        }
        M = Mnew;
        double sum = 0;
        for (int c = 0; c < 4; c++) {
            float e[16];
            for (int i = 0; i < 16; i++) { e[i] = kq[16 * c + i] == -INFINITY ? 0.0f : expf_ggml_scalar(kq[16 * c + i] - Mnew); kq[16 * c + i] = e[i]; }
            sum += (double)reduce_tree_scalar(e);
        }
        S = (float)((double)S + sum);
        for (int j = 0; j < nt; j++) {
            const uint16_t *vj = v + (size_t)(ic + j) * stride;
            for (int i = 0; i < hd; i++) acc[i] = fmaf(syk_fp16_to_fp32(vj[i]), kq[j], acc[i]);
        }
    }
    float inv = S == 0.0f ? 0.0f : 1.0f / S;
    for (int i = 0; i < hd; i++) out[i] = acc[i] * inv;
}

static void attend_tiled_scalar(const float *q, const float *kt, int ldk, const uint16_t *v, int stride, int npos, int hd,
                                float scale, float *out) {
    attend_tiled_scalar_body(q, kt, ldk, v, stride, npos, hd, scale, out);
}
#if SYK_X86
SYK_AVX2_ATTR static void attend_tiled_fma(const float *q, const float *kt, int ldk, const uint16_t *v, int stride, int npos, int hd,
                                           float scale, float *out) {
    attend_tiled_scalar_body(q, kt, ldk, v, stride, npos, hd, scale, out);
}
#endif

#if SYK_X86
AVX512 static void attend_tiled_avx512(const float *q, const float *kt, int ldk, const uint16_t *v, int stride, int npos, int hd,
                                       float scale, float *out) {
    int nc = hd / 16;   // hd % 16 == 0, hd <= 256
    __m512 acc[16];
    for (int c = 0; c < nc; c++) acc[c] = _mm512_setzero_ps();
    float M = -INFINITY, S = 0;
    const __m512 vscale = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY);
    _Alignas(64) float kq[64];
    for (int ic = 0; ic < npos; ic += 64) {
        int nt = npos - ic < 64 ? npos - ic : 64;
        __m512 tmaxv = ninf;
        for (int c = 0; c < 4; c++) {
            int valid = nt - 16 * c;
            if (valid <= 0) { _mm512_store_ps(kq + 16 * c, ninf); continue; }
            __mmask16 m = valid >= 16 ? 0xffff : (__mmask16)((1u << valid) - 1);
            __m512 s = _mm512_setzero_ps();
            for (int d = 0; d < hd; d++)
                s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, kt + (size_t)d * ldk + ic + 16 * c), _mm512_set1_ps(q[d]), s);
            s = _mm512_add_ps(_mm512_mul_ps(s, vscale), _mm512_setzero_ps());
            s = _mm512_mask_blend_ps(m, ninf, s);
            _mm512_store_ps(kq + 16 * c, s);
            tmaxv = _mm512_max_ps(tmaxv, s);
        }
        float tmax = _mm512_reduce_max_ps(tmaxv);
        float Mnew = fmaxf(M, tmax);
        if (Mnew > M) {
            float ms = expf(M - Mnew);
            __m512 vms = _mm512_set1_ps(ms);
            for (int c = 0; c < nc; c++) acc[c] = _mm512_mul_ps(acc[c], vms);
            S *= ms;
        }
        M = Mnew;
        double sum = 0;
        __m512 vM = _mm512_set1_ps(Mnew);
        for (int c = 0; c < 4; c++) {
            __m512 e = expf_ggml512(_mm512_sub_ps(_mm512_load_ps(kq + 16 * c), vM));
            _mm512_store_ps(kq + 16 * c, e);
            sum += (double)syk_reduce_tree512(e);
        }
        S = (float)((double)S + sum);
        for (int j = 0; j < nt; j++) {
            const uint16_t *vj = v + (size_t)(ic + j) * stride;
            __m512 p = _mm512_set1_ps(kq[j]);
            for (int c = 0; c < nc; c++)
                acc[c] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 16 * c))), p, acc[c]);
        }
    }
    __m512 inv = _mm512_set1_ps(S == 0.0f ? 0.0f : 1.0f / S);
    for (int c = 0; c < nc; c++) _mm512_storeu_ps(out + 16 * c, _mm512_mul_ps(acc[c], inv));
}

// The G query heads of one GQA group at once (G * hd/16 <= 16), for T = 1 or 2 query tokens of the run: the
// same arithmetic per head and token as attend_tiled_avx512, op for op, so the results are bit-identical;
// only the instruction order differs. One head alone is latency-bound: each of its 4 score chains (16
// positions) is a sequential FMA chain over the hd dims, and each accumulator chain over the tile's positions
// is too. With the group's heads (and a second token) interleaved, 4GT independent chains share every
// transposed-K load and every V conversion. Tokens: npos[0] <= npos[T-1]; a position past a token's own
// npos is loaded for the longer one but masked to -inf for it (as the one-token kernel's masked load does)
// and never enters its accumulator.
AVX512 static inline __attribute__((always_inline)) void attend_tiled_group_body(const float *const *qs, const float *kt, int ldk,
                                                                                 const uint16_t *v, int stride, const int *npos,
                                                                                 const int T, const int NC, const int G,
                                                                                 float scale, float *const *outs) {
    const int hd = 16 * NC;
    __m512 acc[2][4][8];
    float M[2][4], S[2][4];
#pragma clang loop unroll(full)
    for (int t = 0; t < T; t++)
#pragma clang loop unroll(full)
        for (int g = 0; g < G; g++) {
            M[t][g] = -INFINITY; S[t][g] = 0;
#pragma clang loop unroll(full)
            for (int c = 0; c < NC; c++) acc[t][g][c] = _mm512_setzero_ps();
        }
    const __m512 vscale = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY);
    _Alignas(64) float kq[2][4][64];
    for (int ic = 0; ic < npos[T - 1]; ic += 64) {
        int nt[2];
        __mmask16 m[2][4];
#pragma clang loop unroll(full)
        for (int t = 0; t < T; t++) {
            int r = npos[t] - ic;
            nt[t] = r > 64 ? 64 : (r < 0 ? 0 : r);
#pragma clang loop unroll(full)
            for (int c = 0; c < 4; c++) {
                int valid = nt[t] - 16 * c;
                m[t][c] = valid >= 16 ? 0xffff : (valid <= 0 ? 0 : (__mmask16)((1u << valid) - 1));
            }
        }
        // Scores: s[t][g][c] = Σ_d kt[d][chunk c] * q_tg[d], each a sequential chain over d.
        __m512 sc[2][4][4];
#pragma clang loop unroll(full)
        for (int t = 0; t < T; t++)
#pragma clang loop unroll(full)
            for (int g = 0; g < G; g++)
#pragma clang loop unroll(full)
                for (int c = 0; c < 4; c++) sc[t][g][c] = _mm512_setzero_ps();
        for (int d = 0; d < hd; d++) {
            const float *row = kt + (size_t)d * ldk + ic;
            __m512 kv[4];
#pragma clang loop unroll(full)
            for (int c = 0; c < 4; c++) kv[c] = _mm512_maskz_loadu_ps(m[T - 1][c], row + 16 * c);
#pragma clang loop unroll(full)
            for (int t = 0; t < T; t++)
#pragma clang loop unroll(full)
                for (int g = 0; g < G; g++) {
                    __m512 qd = _mm512_set1_ps(qs[t][g * hd + d]);
#pragma clang loop unroll(full)
                    for (int c = 0; c < 4; c++) sc[t][g][c] = _mm512_fmadd_ps(kv[c], qd, sc[t][g][c]);
                }
        }
        // Per token and head, as attend_tiled_avx512: scale (+0 mask), tile max, rescale, exponentials, sum.
#pragma clang loop unroll(full)
        for (int t = 0; t < T; t++) {
            if (nt[t] == 0) continue;   // the shorter token has no position in this tile
#pragma clang loop unroll(full)
            for (int g = 0; g < G; g++) {
                __m512 tmaxv = ninf;
#pragma clang loop unroll(full)
                for (int c = 0; c < 4; c++) {
                    __m512 s = _mm512_add_ps(_mm512_mul_ps(sc[t][g][c], vscale), _mm512_setzero_ps());
                    s = _mm512_mask_blend_ps(m[t][c], ninf, s);
                    _mm512_store_ps(kq[t][g] + 16 * c, s);
                    tmaxv = _mm512_max_ps(tmaxv, s);
                }
                float tmax = _mm512_reduce_max_ps(tmaxv);
                float Mnew = fmaxf(M[t][g], tmax);
                if (Mnew > M[t][g]) {
                    float ms = expf(M[t][g] - Mnew);
                    __m512 vms = _mm512_set1_ps(ms);
#pragma clang loop unroll(full)
                    for (int c = 0; c < NC; c++) acc[t][g][c] = _mm512_mul_ps(acc[t][g][c], vms);
                    S[t][g] *= ms;
                }
                M[t][g] = Mnew;
                double sum = 0;
                __m512 vM = _mm512_set1_ps(Mnew);
                for (int c = 0; c < 4; c++) {
                    __m512 e = expf_ggml512(_mm512_sub_ps(_mm512_load_ps(kq[t][g] + 16 * c), vM));
                    _mm512_store_ps(kq[t][g] + 16 * c, e);
                    sum += (double)syk_reduce_tree512(e);
                }
                S[t][g] = (float)((double)S[t][g] + sum);
            }
        }
        // acc_tg += p_tg[j] * v_j, a sequential chain over j per token, head and dim chunk; v_j converted once.
        // Positions both tokens have, then those only the longer one has.
        int j = 0;
        for (; j < nt[0]; j++) {
            const uint16_t *vj = v + (size_t)(ic + j) * stride;
            __m512 vc[8];
#pragma clang loop unroll(full)
            for (int c = 0; c < NC; c++) vc[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 16 * c)));
#pragma clang loop unroll(full)
            for (int t = 0; t < T; t++)
#pragma clang loop unroll(full)
                for (int g = 0; g < G; g++) {
                    __m512 p = _mm512_set1_ps(kq[t][g][j]);
#pragma clang loop unroll(full)
                    for (int c = 0; c < NC; c++) acc[t][g][c] = _mm512_fmadd_ps(vc[c], p, acc[t][g][c]);
                }
        }
        for (; j < nt[T - 1]; j++) {
            const uint16_t *vj = v + (size_t)(ic + j) * stride;
#pragma clang loop unroll(full)
            for (int g = 0; g < G; g++) {
                __m512 p = _mm512_set1_ps(kq[T - 1][g][j]);
#pragma clang loop unroll(full)
                for (int c = 0; c < NC; c++)
                    acc[T - 1][g][c] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 16 * c))), p, acc[T - 1][g][c]);
            }
        }
    }
#pragma clang loop unroll(full)
    for (int t = 0; t < T; t++)
#pragma clang loop unroll(full)
        for (int g = 0; g < G; g++) {
            __m512 inv = _mm512_set1_ps(S[t][g] == 0.0f ? 0.0f : 1.0f / S[t][g]);
#pragma clang loop unroll(full)
            for (int c = 0; c < NC; c++) _mm512_storeu_ps(outs[t] + g * hd + 16 * c, _mm512_mul_ps(acc[t][g][c], inv));
        }
}

/// True if the grouped tiled kernel took the G heads (hd 64 with G <= 4, hd 128 with G <= 2).
AVX512 static int attend_tiled_group_avx512(const float *q, const float *kt, int ldk, const uint16_t *v, int stride, int npos, int hd,
                                            int G, float scale, float *out) {
    const float *qs[1] = {q};
    float *outs[1] = {out};
    const int np[1] = {npos};
#define SYK_TG(NC, GG) attend_tiled_group_body(qs, kt, ldk, v, stride, np, 1, NC, GG, scale, outs)
    if (hd == 64) {
        switch (G) {
        case 1: SYK_TG(4, 1); return 1;
        case 2: SYK_TG(4, 2); return 1;
        case 3: SYK_TG(4, 3); return 1;
        case 4: SYK_TG(4, 4); return 1;
        default: return 0;
        }
    }
    if (hd == 128) {
        switch (G) {
        case 1: SYK_TG(8, 1); return 1;
        case 2: SYK_TG(8, 2); return 1;
        default: return 0;
        }
    }
#undef SYK_TG
    return 0;
}

/// Two tokens of one run at once (qa/outa: the one with fewer positions, npos_a <= npos_b), hd 64 with
/// G <= 3 (4GT score chains fit the 32 registers). True if taken.
AVX512 static int attend_tiled_pair_avx512(const float *qa, const float *qb, const float *kt, int ldk, const uint16_t *v, int stride,
                                           int npos_a, int npos_b, int hd, int G, float scale, float *outa, float *outb) {
    if (hd != 64 || npos_a > npos_b) return 0;
    const float *qs[2] = {qa, qb};
    float *outs[2] = {outa, outb};
    const int np[2] = {npos_a, npos_b};
    switch (G) {
    case 1: attend_tiled_group_body(qs, kt, ldk, v, stride, np, 2, 4, 1, scale, outs); return 1;
    case 2: attend_tiled_group_body(qs, kt, ldk, v, stride, np, 2, 4, 2, scale, outs); return 1;
    case 3: attend_tiled_group_body(qs, kt, ldk, v, stride, np, 2, 4, 3, scale, outs); return 1;
    default: return 0;
    }
}

AVX512 static void transpose_k_avx512(const uint16_t *k, int stride, int npos, int hd, float *kt, int ldk) {
    for (int j = 0; j < npos; j++) {
        const uint16_t *kj = k + (size_t)j * stride;
        for (int c = 0; c < hd / 16; c++) {
            _Alignas(64) float f[16];
            _mm512_store_ps(f, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kj + 16 * c))));
            for (int i = 0; i < 16; i++) kt[(size_t)(16 * c + i) * ldk + j] = f[i];
        }
    }
}
#endif

static void transpose_k(const uint16_t *k, int stride, int npos, int hd, float *kt, int ldk) {
#if SYK_X86
    if (syk_get_isa() >= SYK_ISA_AVX512VNNI && hd % 16 == 0) { transpose_k_avx512(k, stride, npos, hd, kt, ldk); return; }
#endif
    for (int j = 0; j < npos; j++)
        for (int d = 0; d < hd; d++) kt[(size_t)d * ldk + j] = syk_fp16_to_fp32(k[(size_t)j * stride + d]);
}

static void attend_tiled(const float *q, const float *kt, int ldk, const uint16_t *v, int stride, int npos, int hd,
                         float scale, float *out) {
#if SYK_X86
    if (syk_get_isa() >= SYK_ISA_AVX512VNNI && hd % 16 == 0 && hd <= 256) {
        attend_tiled_avx512(q, kt, ldk, v, stride, npos, hd, scale, out);
        return;
    }
    if (syk_get_isa() >= SYK_ISA_AVX2 && hd % 16 == 0 && hd <= 256) { syk_attend_tiled_avx2(q, kt, ldk, v, stride, npos, hd, scale, out); return; }
    if (syk_get_isa() >= SYK_ISA_AVX2) { attend_tiled_fma(q, kt, ldk, v, stride, npos, hd, scale, out); return; }
#endif
    attend_tiled_scalar(q, kt, ldk, v, stride, npos, hd, scale, out);
}

/// Two tokens of a run (b has at least a's positions), each with the group's G heads, in one pass where a
/// vector kernel exists; 0 if the caller must take them one by one (same results either way).
static int attend_tiled_pair(const syk_attn_tok *a, const syk_attn_tok *b, int kvh, const float *kt, int ldk, int kvdim,
                             int hd, int G, float scale) {
#if SYK_X86
    if (syk_get_isa() >= SYK_ISA_AVX512VNNI)
        return attend_tiled_pair_avx512(a->q + (size_t)kvh * G * hd, b->q + (size_t)kvh * G * hd, kt, ldk, a->v + (size_t)kvh * hd,
                                        kvdim, a->npos, b->npos, hd, G, scale, a->out + (size_t)kvh * G * hd,
                                        b->out + (size_t)kvh * G * hd);
#endif
    (void)a; (void)b; (void)kvh; (void)kt; (void)ldk; (void)kvdim; (void)hd; (void)G; (void)scale;
    return 0;
}

/// The group's G heads (q, out: [G][hd]) in one pass where a vector kernel exists; 0 if the caller must go head
/// by head (same results either way).
static int attend_tiled_group(const float *q, const float *kt, int ldk, const uint16_t *v, int stride, int npos, int hd, int G,
                              float scale, float *out) {
#if SYK_X86
    if (syk_get_isa() >= SYK_ISA_AVX512VNNI)
        return attend_tiled_group_avx512(q, kt, ldk, v, stride, npos, hd, G, scale, out);
#endif
    (void)q; (void)kt; (void)ldk; (void)v; (void)stride; (void)npos; (void)hd; (void)G; (void)scale; (void)out;
    return 0;
}

// Tiled mode: a run is consecutive tokens of one sequence (same cache, positions +1 each). A run of >= 64
// tokens takes the tiled kernel, per kv head: every thread transposes the kv head once into its own scratch,
// then attends every nth token of the run (all query heads of the group) from it. Shorter runs take the
// one-row kernel as work items (run, kv head), so a sequence's numerics depend on its own chunk, never on
// what other sequences share the batch (llama.cpp decides by ubatch rows; for one sequence that is the same).
static void attn_run_tiled(const syk_attn_task *t, int ith, int nth) {
    float *kt = t->scratch + (size_t)ith * t->scratch_per_thread;
    int group = t->nhead / t->nkv, kvdim = t->nkv * t->hd;
    int run = 0;
    for (int i0 = 0; i0 < t->ntok; run++) {
        int i1 = i0 + 1;
        while (i1 < t->ntok && t->toks[i1].k == t->toks[i0].k && t->toks[i1].npos == t->toks[i1 - 1].npos + 1) i1++;
        int ldk = t->toks[i1 - 1].npos;   // positions the run's last token attends to
        for (int kvh = 0; kvh < t->nkv; kvh++) {
            if (i1 - i0 < 64) {
                if ((run * t->nkv + kvh) % nth != ith) continue;
                for (int i = i0; i < i1; i++) {
                    const syk_attn_tok *tk = &t->toks[i];
                    const uint16_t *k = tk->k + (size_t)kvh * t->hd, *v = tk->v + (size_t)kvh * t->hd;
                    if ((size_t)2 * group * tk->npos <= (size_t)t->scratch_per_thread)
                        syk_attend_group(tk->q + (size_t)kvh * group * t->hd, k, v, kvdim, tk->npos, t->hd, group, t->scale, kt,
                                         tk->out + (size_t)kvh * group * t->hd);
                    else
                        for (int h = kvh * group; h < (kvh + 1) * group; h++)
                            syk_attend(tk->q + (size_t)h * t->hd, k, v, kvdim, tk->npos, t->hd, t->scale, kt, tk->out + (size_t)h * t->hd);
                }
                continue;
            }
            // A long run is shared by every thread, token by token in turn (each thread transposes the kv head
            // into its own scratch): causal rows grow by one position each, so interleaving balances the work,
            // whereas whole (run, kv head) items would leave threads idle (3 kv heads on 2 threads: 2:1).
            // Every row is still computed by one thread with the same arithmetic.
            if (ith >= i1 - i0) continue;
            transpose_k(t->toks[i0].k + (size_t)kvh * t->hd, kvdim, ldk, t->hd, kt, ldk);
            for (int i = i0 + ith; i < i1; i += nth) {
                const syk_attn_tok *tk = &t->toks[i];
                // This thread's next token of the run too, when there is one: one pass over K and V for both.
                if (i + nth < i1 && attend_tiled_pair(tk, &t->toks[i + nth], kvh, kt, ldk, kvdim, t->hd, group, t->scale)) {
                    i += nth;
                    continue;
                }
                if (attend_tiled_group(tk->q + (size_t)kvh * group * t->hd, kt, ldk, tk->v + (size_t)kvh * t->hd, kvdim, tk->npos,
                                       t->hd, group, t->scale, tk->out + (size_t)kvh * group * t->hd))
                    continue;
                for (int h = kvh * group; h < (kvh + 1) * group; h++)
                    attend_tiled(tk->q + (size_t)h * t->hd, kt, ldk, tk->v + (size_t)kvh * t->hd, kvdim, tk->npos, t->hd,
                                 t->scale, tk->out + (size_t)h * t->hd);
            }
        }
        i0 = i1;
    }
}

void syk_attn_run(void *task, int ith, int nth) {
    const syk_attn_task *t = task;
    if (t->tiled) { attn_run_tiled(t, ith, nth); return; }
    float *scores = t->scratch + (size_t)ith * t->scratch_per_thread;
    int group = t->nhead / t->nkv, kvdim = t->nkv * t->hd;
    int items = t->ntok * t->nhead;
    // Interleaved assignment balances long and short (causal) rows across threads.
    for (int it = ith; it < items; it += nth) {
        const syk_attn_tok *tk = &t->toks[it / t->nhead];
        int h = it % t->nhead, kvh = h / group;
        syk_attend(tk->q + (size_t)h * t->hd, tk->k + (size_t)kvh * t->hd, tk->v + (size_t)kvh * t->hd, kvdim,
                   tk->npos, t->hd, t->scale, scores, tk->out + (size_t)h * t->hd);
    }
}
