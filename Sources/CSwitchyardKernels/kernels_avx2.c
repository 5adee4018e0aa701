// AVX2 + FMA + F16C kernels for x86-64 CPUs without AVX-512 (Haswell .. Zen 3), on the same R16 weight
// layout as the AVX-512 VNNI kernels. Compiled with per-function target attributes; chosen at run time
// by syk_get_isa() in kernels.c. Every kernel does, per output lane, the same arithmetic in the same order
// as its AVX-512 counterpart (integer dot products are exact; the float epilogue is op-for-op the same),
// so the two levels give identical results (KernelTests checks this bit for bit).
#include "internal.h"
#include <math.h>
#include <string.h>

#if SYK_X86
#define A2 SYK_AVX2_ATTR
#define INLINE static inline __attribute__((always_inline))

// Bytes ahead of the current weight chunk that the first pass over a row group prefetches: 2560, the value
// SYK_PF_DIST in kernels.c had before it was re-measured (4096) for the AVX-512 one-token path; not
// re-measured at this level.
#define SYK_AVX2_PF_DIST 2560

A2 INLINE __m256i bc4(const int8_t *p) { int32_t v; memcpy(&v, p, 4); return _mm256_set1_epi32(v); }

// ---------------------------------------------------------------------------- gemm
//
// A 256-bit register holds 8 rows x 4 bytes of an R16 sub-chunk, so a row group is done as two halves
// (rows 0-7 read bytes 0-31 of each 64-byte sub-chunk, rows 8-15 bytes 32-63).
//
// Q4_1: maddubs(u8 nibble, s8 activation) gives int16 pairs of at most 2*15*127 = 3810 in magnitude, so
// the eight products of a 32-element block (8 x 3810 = 30480 < 32767) are summed in int16 without
// overflow, then widened once with madd(., 1).
A2 INLINE void tile_q4_1(const uint8_t *wg, int nb, const syk_act *a, int t0, const int NT, int h,
                         float *out, int ldo, int accumulate) {
    const int K = a->K;
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256 facc[4];
#pragma clang loop unroll(full)
    for (int t = 0; t < NT; t++) facc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = wg + (size_t)b * SYK_R16_Q4_1_CHUNK;
        if (h == 0)
            for (int pf = 0; pf < SYK_R16_Q4_1_CHUNK; pf += 64) _mm_prefetch((const char *)(c + SYK_AVX2_PF_DIST + pf), _MM_HINT_T0);
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(c + 16 * h)));
        __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(c + 32 + 16 * h)));
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(c + 64 + 32 * h));
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(c + 128 + 32 * h));
        __m256i v2 = _mm256_loadu_si256((const __m256i *)(c + 192 + 32 * h));
        __m256i v3 = _mm256_loadu_si256((const __m256i *)(c + 256 + 32 * h));
        __m256i l0 = _mm256_and_si256(v0, m4), h0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), m4);
        __m256i l1 = _mm256_and_si256(v1, m4), h1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), m4);
        __m256i l2 = _mm256_and_si256(v2, m4), h2 = _mm256_and_si256(_mm256_srli_epi16(v2, 4), m4);
        __m256i l3 = _mm256_and_si256(v3, m4), h3 = _mm256_and_si256(_mm256_srli_epi16(v3, 4), m4);
        // Fully unrolled so facc[] stays in registers (a rolled loop keeps it on the stack, and every
        // block then waits on a store-to-load forward).
#pragma clang loop unroll(full)
        for (int t = 0; t < NT; t++) {
            const int8_t *aq = a->qs + (size_t)(t0 + t) * K + 32 * b;
            __m256i s = _mm256_maddubs_epi16(l0, bc4(aq));
            __m256i s2 = _mm256_maddubs_epi16(h0, bc4(aq + 4));
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(l1, bc4(aq + 8)));
            s2 = _mm256_add_epi16(s2, _mm256_maddubs_epi16(h1, bc4(aq + 12)));
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(l2, bc4(aq + 16)));
            s2 = _mm256_add_epi16(s2, _mm256_maddubs_epi16(h2, bc4(aq + 20)));
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(l3, bc4(aq + 24)));
            s2 = _mm256_add_epi16(s2, _mm256_maddubs_epi16(h3, bc4(aq + 28)));
            __m256i acc = _mm256_madd_epi16(_mm256_add_epi16(s, s2), ones);
            size_t o = (size_t)(t0 + t) * nb + b;
            facc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_mul_ps(dw, _mm256_set1_ps(a->d[o])), facc[t]);
            facc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(a->s[o]), facc[t]);
        }
    }
#pragma clang loop unroll(full)
    for (int t = 0; t < NT; t++) {
        float *o = out + (size_t)(t0 + t) * ldo + 8 * h;
        __m256 r = facc[t];
        if (accumulate) r = _mm256_add_ps(r, _mm256_loadu_ps(o));
        _mm256_storeu_ps(o, r);
    }
}

// Q8_0: weights are stored biased (u8 = q + 128), too large for maddubs' int16 pairs. Unbias to s8 and use
// the sign trick: maddubs(|w|, sign(a, w)) = w*a pairwise, at most 2*128*127 = 32512; each sub-chunk is
// widened to int32 with madd before summing. The integer total equals the AVX-512 path's exactly.
A2 INLINE void tile_q8_0(const uint8_t *wg, int nb, const syk_act *a, int t0, const int NT, int h,
                         float *out, int ldo, int accumulate) {
    const int K = a->K;
    const __m256i bias = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    __m256 facc[4];
#pragma clang loop unroll(full)
    for (int t = 0; t < NT; t++) facc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = wg + (size_t)b * SYK_R16_Q8_0_CHUNK;
        if (h == 0)
            for (int pf = 0; pf < SYK_R16_Q8_0_CHUNK; pf += 64) _mm_prefetch((const char *)(c + SYK_AVX2_PF_DIST + pf), _MM_HINT_T0);
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(c + 16 * h)));
        __m256i ws[8], wa[8];
        for (int j = 0; j < 8; j++) {
            ws[j] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(c + 32 + 64 * j + 32 * h)), bias);
            wa[j] = _mm256_abs_epi8(ws[j]);
        }
        // Fully unrolled so facc[] stays in registers (a rolled loop keeps it on the stack, and every
        // block then waits on a store-to-load forward).
#pragma clang loop unroll(full)
        for (int t = 0; t < NT; t++) {
            const int8_t *aq = a->qs + (size_t)(t0 + t) * K + 32 * b;
            __m256i acc = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[0], _mm256_sign_epi8(bc4(aq), ws[0])), ones);
            __m256i ac2 = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[1], _mm256_sign_epi8(bc4(aq + 4), ws[1])), ones);
            for (int j = 2; j < 8; j += 2) {
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(wa[j], _mm256_sign_epi8(bc4(aq + 4 * j), ws[j])), ones));
                ac2 = _mm256_add_epi32(ac2, _mm256_madd_epi16(_mm256_maddubs_epi16(wa[j + 1], _mm256_sign_epi8(bc4(aq + 4 * j + 4), ws[j + 1])), ones));
            }
            acc = _mm256_add_epi32(acc, ac2);
            size_t o = (size_t)(t0 + t) * nb + b;
            facc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_mul_ps(dw, _mm256_set1_ps(a->d[o])), facc[t]);
        }
    }
#pragma clang loop unroll(full)
    for (int t = 0; t < NT; t++) {
        float *o = out + (size_t)(t0 + t) * ldo + 8 * h;
        __m256 r = facc[t];
        if (accumulate) r = _mm256_add_ps(r, _mm256_loadu_ps(o));
        _mm256_storeu_ps(o, r);
    }
}

// ---- llama.cpp's summation order (the default; see gemm_scalar_lanes and gemm_avx512_lanes in kernels.c) ----
// A 256-bit vector holds lane L (elements 4L..4L+3 of a block) of 8 rows, as the AVX-512 kernel holds it
// for 16: per block, lane L's integer dot is maddubs + madd (exact: at most 2*15*127 per int16 pair for
// Q4_1, 2*128*127 with the sign trick for Q8_0), converted to float and accumulated as
// fma(d_w*d_a, x, acc_L); Q4_1's offsets run as the separate chain fma(m_w, s_a, macc); at the end the
// lanes are summed ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), plus macc. Every output is the same float
// sequence as at the other levels, so AVX2-only CPUs give llama.cpp's results too. Tokens are done one at
// a time over a row half (8 accumulators + the offset chain fill the 16 registers); the group's weights
// stay in L1/L2 across tokens.
A2 INLINE __m256 lanes_hsum256(const __m256 *l) {
    __m256 r0 = _mm256_add_ps(l[4], l[0]), r1 = _mm256_add_ps(l[5], l[1]);
    __m256 r2 = _mm256_add_ps(l[6], l[2]), r3 = _mm256_add_ps(l[7], l[3]);
    return _mm256_add_ps(_mm256_add_ps(r0, r2), _mm256_add_ps(r1, r3));
}

// One token over one row half; q41 is a constant after inlining (Q4_1 nibbles with the offset chain, or
// Q8_0 bytes stored +128).
A2 INLINE void lanes_tile(const uint8_t *wg, int nb, const syk_act *a, int t, int h, int pf, const int q41, float *out,
                          int ldo, int accumulate) {
    const int K = a->K;
    const size_t chunk = q41 ? SYK_R16_Q4_1_CHUNK : SYK_R16_Q8_0_CHUNK;
    const __m256i m4 = _mm256_set1_epi8(0x0f), bias = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    __m256 acc[8], macc = _mm256_setzero_ps();
#pragma clang loop unroll(full)
    for (int L = 0; L < 8; L++) acc[L] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = wg + (size_t)b * chunk;
        if (pf)
            for (size_t p = 0; p < chunk; p += 64) _mm_prefetch((const char *)(c + SYK_AVX2_PF_DIST + p), _MM_HINT_T0);
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(c + 16 * h)));
        const int8_t *aq = a->qs + (size_t)t * K + 32 * b;
        size_t o = (size_t)t * nb + b;
        __m256 dd = _mm256_mul_ps(dw, _mm256_set1_ps(a->d[o]));
        __m256i x[8];
        if (q41) {
#pragma clang loop unroll(full)
            for (int j = 0; j < 4; j++) {
                // sub-chunk j: low nibbles are elements 8j..8j+3 (lane 2j), high nibbles 8j+4..8j+7 (lane 2j+1)
                __m256i v = _mm256_loadu_si256((const __m256i *)(c + 64 + 64 * j + 32 * h));
                __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                x[2 * j] = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, bc4(aq + 8 * j)), ones);
                x[2 * j + 1] = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, bc4(aq + 8 * j + 4)), ones);
            }
        } else {
#pragma clang loop unroll(full)
            for (int L = 0; L < 8; L++) {
                // weights are stored +128: back to s8, then maddubs(|w|, sign(a, w)) = w*a pairwise
                __m256i ws = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(c + 32 + 64 * L + 32 * h)), bias);
                x[L] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(ws), _mm256_sign_epi8(bc4(aq + 4 * L), ws)), ones);
            }
        }
#pragma clang loop unroll(full)
        for (int L = 0; L < 8; L++) acc[L] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(x[L]), acc[L]);
        if (q41) {
            __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(c + 32 + 16 * h)));
            macc = _mm256_fmadd_ps(mw, _mm256_set1_ps(a->s[o]), macc);
        }
    }
    float *po = out + (size_t)t * ldo + 8 * h;
    __m256 r = lanes_hsum256(acc);
    if (q41) r = _mm256_add_ps(r, macc);
    if (accumulate) r = _mm256_add_ps(r, _mm256_loadu_ps(po));
    _mm256_storeu_ps(po, r);
}

#define TILE_CASES(fn)                                                     \
    switch (nt) {                                                          \
    case 4: fn(wg, nb, a, t, 4, h, o, ldo, accumulate); break;             \
    case 3: fn(wg, nb, a, t, 3, h, o, ldo, accumulate); break;             \
    case 2: fn(wg, nb, a, t, 2, h, o, ldo, accumulate); break;             \
    default: fn(wg, nb, a, t, 1, h, o, ldo, accumulate); break;            \
    }

// llama: llama.cpp's summation order (lanes_tile, one token at a time); else the fast order (tiles of up to
// 4 tokens).
A2 void syk_gemm_avx2(const syk_wmat *w, const syk_act *a, int ntok, float *out, int ldo, int accumulate, int g0, int g1,
                      int llama) {
    int nb = w->K / 32;
    int q41 = w->type == SYK_W_R16_Q4_1;
    size_t chunk = q41 ? SYK_R16_Q4_1_CHUNK : SYK_R16_Q8_0_CHUNK;
    for (int g = g0; g < g1; g++) {
        const uint8_t *wg = w->data + (size_t)g * nb * chunk;
        float *o = out + 16 * g;
        if (llama) {
            for (int t = 0; t < ntok; t++) {
                for (int h = 0; h < 2; h++) {
                    int pf = t == 0 && h == 0;   // the first pass over the group prefetches ahead
                    if (q41) lanes_tile(wg, nb, a, t, h, pf, 1, o, ldo, accumulate);
                    else lanes_tile(wg, nb, a, t, h, pf, 0, o, ldo, accumulate);
                }
            }
            continue;
        }
        for (int t = 0; t < ntok; t += 4) {
            int nt = ntok - t < 4 ? ntok - t : 4;
            for (int h = 0; h < 2; h++) {
                if (q41) { TILE_CASES(tile_q4_1) } else { TILE_CASES(tile_q8_0) }
            }
        }
    }
}

// ---------------------------------------------------------------------------- activation quantization

A2 static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

A2 static inline int hsum8i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

// Same numbers as quantize_act_avx512 (max and integer sums are order-independent; every float op per
// element is the same).
A2 void syk_quantize_act_avx2(const float *x, const float *norm, float eps, const syk_act *a, int t, float *xout) {
    int K = a->K, nb = K / 32;
    float scale = 1.f;
    if (norm) {
        double sum = 0;
        for (int i = 0; i < K; i++) sum += (double)(x[i] * x[i]);
        scale = 1.0f / sqrtf((float)(sum / K) + eps);
    }
    const __m256 vs = _mm256_set1_ps(scale);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    int8_t *qrow = a->qs + (size_t)t * K;
    for (int b = 0; b < nb; b++) {
        __m256 y[4];
        for (int k = 0; k < 4; k++) {
            y[k] = _mm256_loadu_ps(x + 32 * b + 8 * k);
            if (norm) y[k] = _mm256_mul_ps(_mm256_mul_ps(y[k], vs), _mm256_loadu_ps(norm + 32 * b + 8 * k));
            if (xout) _mm256_storeu_ps(xout + 32 * b + 8 * k, y[k]);
        }
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(y[0], absmask), _mm256_and_ps(y[1], absmask)),
                                 _mm256_max_ps(_mm256_and_ps(y[2], absmask), _mm256_and_ps(y[3], absmask)));
        float amax = hmax8(m);
        float d = amax / 127.f, id = amax != 0 ? 127.f / amax : 0.f;
        __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++)
            q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(y[k], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        // packs work per 128-bit lane: the bytes come out as dwords of elements 0,8,16,24,4,12,20,28 (x4).
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)(qrow + 32 * b), _mm256_permutevar8x32_epi32(p, perm));
        int sum = hsum8i(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        size_t o = (size_t)t * nb + b;
        // bias4 (read by the AVX-512 lane-order kernel): SYK_LANE_MAGIC - 128 * (sum of each 4 consecutive quants).
        const int8_t *qb = qrow + 32 * b;
        for (int L = 0; L < 8; L++) a->bias4[o * 8 + L] = SYK_LANE_MAGIC - 128 * (qb[4 * L] + qb[4 * L + 1] + qb[4 * L + 2] + qb[4 * L + 3]);
        a->d[o] = _cvtsh_ss(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
        a->isum[o] = sum;
        a->s[o] = _cvtsh_ss(_cvtss_sh(d * (float)sum, _MM_FROUND_TO_NEAREST_INT));
    }
}

// ---------------------------------------------------------------------------- swiglu, fp16 store

// expf_ggml512 of kernels.c (ggml's vectorized expf) in 8 lanes: the same fused operations; the final
// scaling j * 2^n is done in two exact power-of-two steps (n = n1 + n2, |n1|, |n2| <= 96, j * 2^n1 exact),
// so it rounds once, like vscalefps. |n| > 192 gives 0 or infinity as there.
A2 static inline __m256 pow2i256(__m256i n) {   // 2^n for -126 <= n <= 127
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
}

A2 static inline __m256 expf_ggml256(__m256 x) {
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    __m256 n = _mm256_sub_ps(z, r);
    __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f), _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    __m256 absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    __m256 big = _mm256_cmp_ps(absn, _mm256_set1_ps(192), _CMP_GT_OQ);
    __m256 u = _mm256_mul_ps(b, b);
    __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f)));
    __m256 nc = _mm256_min_ps(_mm256_max_ps(n, _mm256_set1_ps(-192)), _mm256_set1_ps(192));
    __m256i ni = _mm256_cvtps_epi32(nc);
    __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    __m256 res = _mm256_mul_ps(_mm256_mul_ps(j, pow2i256(n1)), pow2i256(n2));
    if (_mm256_movemask_ps(big) == 0) return res;
    __m256 alt = _mm256_blendv_ps(_mm256_set1_ps(INFINITY), _mm256_setzero_ps(), _mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ));
    return _mm256_blendv_ps(res, alt, big);
}

A2 void syk_swiglu_avx2(const float *g, const float *u, float *h, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i);
        __m256 e = expf_ggml256(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        __m256 s = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.f), e));
        _mm256_storeu_ps(h + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
    syk_swiglu(g + i, u + i, h + i, n - i);
}

// F16C conversion rounds to nearest even like syk_fp32_to_fp16 (they differ only in NaN payloads).
A2 void syk_store_f16_avx2(const float *x, uint16_t *dst, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = syk_fp32_to_fp16(x[i]);
}

// ---------------------------------------------------------------------------- tiled attention

static float reduce_tree16(const float *x) {   // syk_reduce_tree512's order on 16 stored lanes
    float t3[8], t6[4];
    for (int i = 0; i < 8; i++) t3[i] = x[i + 8] + x[i];
    for (int i = 0; i < 4; i++) t6[i] = t3[i + 4] + t3[i];
    return (t6[0] + t6[2]) + (t6[1] + t6[3]);
}

// attend_tiled_avx512 of kernels.c in 8-lane vectors: per position the same sequential fma chain over hd
// (vectorized across positions), the same expf, halving-tree block sums in double and accumulator chain.
A2 void syk_attend_tiled_avx2(const float *q, const float *kt, int ldk, const uint16_t *v, int stride, int npos, int hd,
                              float scale, float *out) {
    int nc = hd / 8;   // hd % 16 == 0, hd <= 256
    __m256 acc[32];
    for (int c = 0; c < nc; c++) acc[c] = _mm256_setzero_ps();
    float M = -INFINITY, S = 0;
    const __m256 vscale = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
    _Alignas(32) float kq[64];
    for (int ic = 0; ic < npos; ic += 64) {
        int nt = npos - ic < 64 ? npos - ic : 64;
        __m256 tmaxv = ninf;
        for (int c = 0; c < 8; c++) {
            int valid = nt - 8 * c;
            if (valid <= 0) { _mm256_store_ps(kq + 8 * c, ninf); continue; }
            __m256 s = _mm256_setzero_ps();
            if (valid >= 8) {
                for (int d = 0; d < hd; d++)
                    s = _mm256_fmadd_ps(_mm256_loadu_ps(kt + (size_t)d * ldk + ic + 8 * c), _mm256_set1_ps(q[d]), s);
            } else {
                __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), idx);
                for (int d = 0; d < hd; d++)
                    s = _mm256_fmadd_ps(_mm256_maskload_ps(kt + (size_t)d * ldk + ic + 8 * c, m), _mm256_set1_ps(q[d]), s);
                s = _mm256_blendv_ps(ninf, _mm256_add_ps(_mm256_mul_ps(s, vscale), _mm256_setzero_ps()), _mm256_castsi256_ps(m));
                _mm256_store_ps(kq + 8 * c, s);
                tmaxv = _mm256_max_ps(tmaxv, s);
                continue;
            }
            s = _mm256_add_ps(_mm256_mul_ps(s, vscale), _mm256_setzero_ps());
            _mm256_store_ps(kq + 8 * c, s);
            tmaxv = _mm256_max_ps(tmaxv, s);
        }
        _Alignas(32) float tm[8];
        _mm256_store_ps(tm, tmaxv);
        float tmax = tm[0];
        for (int i = 1; i < 8; i++) tmax = tmax > tm[i] ? tmax : tm[i];
        float Mnew = fmaxf(M, tmax);
        if (Mnew > M) {
            float ms = expf(M - Mnew);
            __m256 vms = _mm256_set1_ps(ms);
            for (int c = 0; c < nc; c++) acc[c] = _mm256_mul_ps(acc[c], vms);
            S *= ms;
        }
        M = Mnew;
        double sum = 0;
        __m256 vM = _mm256_set1_ps(Mnew);
        for (int c = 0; c < 8; c++) _mm256_store_ps(kq + 8 * c, expf_ggml256(_mm256_sub_ps(_mm256_load_ps(kq + 8 * c), vM)));
        for (int c = 0; c < 4; c++) sum += (double)reduce_tree16(kq + 16 * c);
        S = (float)((double)S + sum);
        for (int j = 0; j < nt; j++) {
            const uint16_t *vj = v + (size_t)(ic + j) * stride;
            __m256 p = _mm256_set1_ps(kq[j]);
            for (int c = 0; c < nc; c++)
                acc[c] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vj + 8 * c))), p, acc[c]);
        }
    }
    __m256 inv = _mm256_set1_ps(S == 0.0f ? 0.0f : 1.0f / S);
    for (int c = 0; c < nc; c++) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(acc[c], inv));
}
#endif
