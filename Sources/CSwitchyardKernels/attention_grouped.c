// Attention for a whole GQA group at once, and the RoPE + KV-store pass as a pool task.
//
// attend_group_*: the G query heads that share one KV head are done together, with exactly the numerics of
// attend_avx512 in kernels.c per head (q rounded to fp16, scores (q16 . k_j) * scale with the same
// summation order, online softmax in position order with glibc expf, V accumulator rounded to fp16 after
// every update). What changes is the schedule, not the arithmetic:
//   pass 1: one K row is converted once and dotted with all G queries;
//   pass 2: the (scalar) softmax recurrence per head, writing the per-position factors ms_j (rescale when
//           the running max grows, else 1) and vs_j — expf leaves the accumulator's dependency chain;
//   pass 3: one V row is converted once and feeds G x hd/16 independent fp16-rounded accumulator chains
//           (instead of hd/16), which hides the fma -> cvtps2ph -> cvtph2ps latency.
// Skipping acc = round16(acc * ms) when ms == 1 is exact: acc already holds fp16 values.
#define _GNU_SOURCE
#include "internal.h"
#include <math.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

// Pass 2 for one head: sc[j] (scores in, vs_j out), ms[j] out; returns S. Same recurrence as attend_avx512,
// S = fma(S, ms, vs) as GCC contracts llama.cpp's S = S*ms + vs.
#define SOFTMAX_PASS(sc, ms, npos, Sout)                                        \
    do {                                                                        \
        float M_ = -INFINITY, S_ = 0;                                           \
        for (int j = 0; j < (npos); j++) {                                      \
            float sj = (sc)[j], m_ = 1, v_ = 1;                                 \
            if (sj > M_) { float Mold = M_; M_ = sj; m_ = expf(Mold - M_); }    \
            else v_ = expf(sj - M_);                                            \
            S_ = fmaf(S_, m_, v_);                                              \
            (sc)[j] = v_; (ms)[j] = m_;                                         \
        }                                                                       \
        (Sout) = S_;                                                            \
    } while (0)

#if SYK_X86
#define A5 SYK_AVX512_ATTR

// ---- glibc's expf, 16 lanes at a time, bit for bit ----
// llama.cpp's softmax calls the C library's expf, so the recurrence above must see glibc's values. glibc
// (2.28 and later; this is sysdeps/ieee754/flt-32/e_expf.c as its FMA ifunc variant compiles it) computes in
// double: kd' = fma(N/ln2, x, 1.5*2^52), ki = bits(kd'), kd = kd' - 1.5*2^52, r = fma(N/ln2, x, -kd),
// s = asdouble(T[ki % 32] + (ki << 47)), y = fma(fma(C0, r, C1), r*r, fma(C2, r, 1)) * s, then (float)y.
// The same double operations in the same order give the same float. Lanes outside glibc's main path
// ((bits >> 20) & 0x7ff > 0x42a, i.e. |x| >= 88, infinities and NaN) are recomputed with the library call
// itself, so they are exact by construction. syk_expf_check tests this against libm.
static const uint64_t syk_exp2f_tab[32] __attribute__((aligned(64))) = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};

A5 INLINE __m256 expf_glibc8(__m256 x) {
    const __m512d invln2n = _mm512_set1_pd(0x1.71547652b82fep+5), shift = _mm512_set1_pd(0x1.8p+52);
    __m512d xd = _mm512_cvtps_pd(x);
    __m512d kds = _mm512_fmadd_pd(invln2n, xd, shift);
    __m512i ki = _mm512_castpd_si512(kds);
    __m512d kd = _mm512_sub_pd(kds, shift);
    __m512d r = _mm512_fmsub_pd(invln2n, xd, kd);
    // T[ki % 32]: two 16-entry permutes (index bits 0-3) and a select on bit 4.
    const __m512i *T = (const __m512i *)syk_exp2f_tab;
    __m512i lo = _mm512_permutex2var_epi64(_mm512_load_si512(T), ki, _mm512_load_si512(T + 1));
    __m512i hi = _mm512_permutex2var_epi64(_mm512_load_si512(T + 2), ki, _mm512_load_si512(T + 3));
    __mmask8 up = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(16));
    __m512i t = _mm512_add_epi64(_mm512_mask_blend_epi64(up, lo, hi), _mm512_slli_epi64(ki, 47));
    __m512d z = _mm512_fmadd_pd(_mm512_set1_pd(0x1.c6af84b912394p-20), r, _mm512_set1_pd(0x1.ebfce50fac4f3p-13));
    __m512d r2 = _mm512_mul_pd(r, r);
    __m512d y = _mm512_fmadd_pd(r, _mm512_set1_pd(0x1.62e42ff0c52d6p-6), _mm512_set1_pd(1.0));
    y = _mm512_fmadd_pd(z, r2, y);
    y = _mm512_mul_pd(y, _mm512_castsi512_pd(t));
    return _mm512_cvtpd_ps(y);
}

A5 INLINE __m512 expf_glibc16(__m512 x) {
    __m256 lo = expf_glibc8(_mm512_castps512_ps256(x)), hi = expf_glibc8(_mm512_extractf32x8_ps(x, 1));
    __m512 e = _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
    // Lanes off glibc's main path: (bits >> 20) & 0x7ff > 0x42a.
    __m512i top = _mm512_and_si512(_mm512_srli_epi32(_mm512_castps_si512(x), 20), _mm512_set1_epi32(0x7ff));
    __mmask16 odd = _mm512_cmpgt_epi32_mask(top, _mm512_set1_epi32(0x42a));
    if (odd) {
        _Alignas(64) float xs[16], es[16];
        _mm512_store_ps(xs, x); _mm512_store_ps(es, e);
        for (int i = 0; i < 16; i++) if (odd >> i & 1) es[i] = expf(xs[i]);
        e = _mm512_load_ps(es);
    }
    return e;
}

// SOFTMAX_PASS with the expf calls taken out of the loop: a scalar pass finds, per position, whether the
// running max grows and the expf argument of that branch (Mold - M or s_j - M); one vector pass evaluates
// all the expf; a last scalar pass runs S = fma(S, ms, vs). Same values, same order as SOFTMAX_PASS.
A5 static float softmax_pass512(float *sc, float *ms, int npos) {
    float M = -INFINITY;
    for (int j = 0; j < npos; j++) {
        float sj = sc[j];
        int grow = sj > M;
        sc[j] = grow ? M - sj : sj - M;   // the argument
        ms[j] = grow ? 1.f : 0.f;         // which branch (for now)
        M = grow ? sj : M;
    }
    int j = 0;
    for (; j + 16 <= npos; j += 16) {
        __m512 e = expf_glibc16(_mm512_loadu_ps(sc + j));
        __mmask16 grow = _mm512_cmpneq_ps_mask(_mm512_loadu_ps(ms + j), _mm512_setzero_ps());
        _mm512_storeu_ps(sc + j, _mm512_mask_blend_ps(grow, e, _mm512_set1_ps(1.f)));   // vs
        _mm512_storeu_ps(ms + j, _mm512_mask_blend_ps(grow, _mm512_set1_ps(1.f), e));   // ms
    }
    for (; j < npos; j++) {
        float e = expf(sc[j]);
        if (ms[j] != 0.f) { sc[j] = 1.f; ms[j] = e; } else { sc[j] = e; ms[j] = 1.f; }
    }
    float S = 0;
    for (j = 0; j < npos; j++) S = fmaf(S, ms[j], sc[j]);
    return S;
}

A5 static int expf_check512(const float *x, float *y, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, expf_glibc16(_mm512_loadu_ps(x + i)));
    return i;
}

void syk_expf_check(const float *x, float *y, int n) {
    int i = syk_get_isa() >= SYK_ISA_AVX512VNNI ? expf_check512(x, y, n) : 0;
    for (; i < n; i++) y[i] = expf(x[i]);
}
// K/V rows of one head are `stride` elements apart (the cache is [pos][kv head][hd]), a pattern the hardware
// prefetchers follow poorly; fetch the row SYK_ATT_PF positions ahead (its 128 bytes may span 3 lines).
// Prefetching past the last position is harmless (prefetches do not fault).
#ifndef SYK_ATT_PF
#define SYK_ATT_PF 6
#endif
INLINE void prefetch_row(const uint16_t *p) {
    _mm_prefetch((const char *)p, _MM_HINT_T0);
    _mm_prefetch((const char *)p + 64, _MM_HINT_T0);
    _mm_prefetch((const char *)p + 127, _MM_HINT_T0);
}
#define A2 SYK_AVX2_ATTR

A5 INLINE __m512 r16_512(__m512 x) { return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }

// hd = 64 (NC = 4 vectors of 16). q: G heads of 64 floats; out: G x 64; scr: 2*G*npos floats.
A5 INLINE void group512(const float *q, const uint16_t *k, const uint16_t *v, int stride, int npos, const int G,
                        float scale, float *scr, float *out) {
    enum { NC = 4 };
    __m512 qv[4][NC], acc[4][NC];
    float S[4];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < NC; c++) { qv[g][c] = r16_512(_mm512_loadu_ps(q + 64 * g + 16 * c)); acc[g][c] = _mm512_setzero_ps(); }
    float *sc = scr, *ms = scr + (size_t)G * npos;
    for (int j = 0; j < npos; j++) {
        const uint16_t *kj = k + (size_t)j * stride;
        prefetch_row(kj + (size_t)SYK_ATT_PF * stride);
        __m512 kk[NC];
        for (int c = 0; c < NC; c++) kk[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kj + 16 * c)));
        for (int g = 0; g < G; g++) {
            // llama.cpp's order for hd = 64: four products (one per 16-lane chunk, exact), (p0+p2)+(p1+p3),
            // then the halving tree.
            __m512 p0 = _mm512_mul_ps(qv[g][0], kk[0]), p1 = _mm512_mul_ps(qv[g][1], kk[1]);
            __m512 p2 = _mm512_mul_ps(qv[g][2], kk[2]), p3 = _mm512_mul_ps(qv[g][3], kk[3]);
            sc[(size_t)g * npos + j] = syk_reduce_tree512(_mm512_add_ps(_mm512_add_ps(p0, p2), _mm512_add_ps(p1, p3))) * scale;
        }
    }
    for (int g = 0; g < G; g++) S[g] = softmax_pass512(sc + (size_t)g * npos, ms + (size_t)g * npos, npos);
    for (int j = 0; j < npos; j++) {
        const uint16_t *vj = v + (size_t)j * stride;
        prefetch_row(vj + (size_t)SYK_ATT_PF * stride);
        __m512 vv[NC];
        for (int c = 0; c < NC; c++) vv[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 16 * c)));
        for (int g = 0; g < G; g++) {
            float m = ms[(size_t)g * npos + j];
            if (m != 1.f) {
                __m512 vm = _mm512_set1_ps(m);
                for (int c = 0; c < NC; c++) acc[g][c] = r16_512(_mm512_mul_ps(acc[g][c], vm));
            }
            __m512 p = _mm512_set1_ps(sc[(size_t)g * npos + j]);
            for (int c = 0; c < NC; c++) acc[g][c] = r16_512(_mm512_fmadd_ps(vv[c], p, acc[g][c]));
        }
    }
    for (int g = 0; g < G; g++) {
        __m512 inv = _mm512_set1_ps(1.f / S[g]);
        for (int c = 0; c < NC; c++) _mm512_storeu_ps(out + 64 * g + 16 * c, _mm512_mul_ps(acc[g][c], inv));
    }
}

A5 static void attend_group_avx512(const float *q, const uint16_t *k, const uint16_t *v, int stride, int npos, int G,
                                   float scale, float *scr, float *out) {
    switch (G) {
    case 1: group512(q, k, v, stride, npos, 1, scale, scr, out); break;
    case 2: group512(q, k, v, stride, npos, 2, scale, scr, out); break;
    case 3: group512(q, k, v, stride, npos, 3, scale, scr, out); break;
    default: group512(q, k, v, stride, npos, 4, scale, scr, out); break;
    }
}

A2 INLINE __m256 r16_256(__m256 x) { return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }

// The same in 8-lane registers. A 16-lane score vector of the AVX-512 version is kept as two halves
// (lo = lanes 0-7, hi = lanes 8-15) and reduced in the order of syk_reduce_tree512: halves added, then
// 128-bit halves, then (0+2)+(1+3) — the same float sums in the same order.
A2 static void attend_group_avx2(const float *q, const uint16_t *k, const uint16_t *v, int stride, int npos, int G,
                                 float scale, float *scr, float *out) {
    enum { NC = 4 };
    __m256 qlo[4][NC], qhi[4][NC];
    float S[4];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < NC; c++) {
            qlo[g][c] = r16_256(_mm256_loadu_ps(q + 64 * g + 16 * c));
            qhi[g][c] = r16_256(_mm256_loadu_ps(q + 64 * g + 16 * c + 8));
        }
    float *sc = scr, *ms = scr + (size_t)G * npos;
    for (int j = 0; j < npos; j++) {
        const uint16_t *kj = k + (size_t)j * stride;
        prefetch_row(kj + (size_t)SYK_ATT_PF * stride);
        __m256 klo[NC], khi[NC];
        for (int c = 0; c < NC; c++) {
            klo[c] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kj + 16 * c)));
            khi[c] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kj + 16 * c + 8)));
        }
        for (int g = 0; g < G; g++) {
            __m256 pl[NC], ph[NC];
            for (int c = 0; c < NC; c++) { pl[c] = _mm256_mul_ps(qlo[g][c], klo[c]); ph[c] = _mm256_mul_ps(qhi[g][c], khi[c]); }
            __m256 lo = _mm256_add_ps(_mm256_add_ps(pl[0], pl[2]), _mm256_add_ps(pl[1], pl[3]));
            __m256 hi = _mm256_add_ps(_mm256_add_ps(ph[0], ph[2]), _mm256_add_ps(ph[1], ph[3]));
            __m256 s8 = _mm256_add_ps(lo, hi);
            __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
            __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            __m128 s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
            sc[(size_t)g * npos + j] = _mm_cvtss_f32(s1) * scale;
        }
    }
    for (int g = 0; g < G; g++) SOFTMAX_PASS(sc + (size_t)g * npos, ms + (size_t)g * npos, npos, S[g]);
    // Pass 3 one head at a time (8 accumulators of 8 lanes; 16 ymm registers do not hold more).
    for (int g = 0; g < G; g++) {
        __m256 acc[8];
        for (int c = 0; c < 8; c++) acc[c] = _mm256_setzero_ps();
        const float *vs = sc + (size_t)g * npos, *mg = ms + (size_t)g * npos;
        for (int j = 0; j < npos; j++) {
            const uint16_t *vj = v + (size_t)j * stride;
            prefetch_row(vj + (size_t)SYK_ATT_PF * stride);
            if (mg[j] != 1.f) {
                __m256 vm = _mm256_set1_ps(mg[j]);
                for (int c = 0; c < 8; c++) acc[c] = r16_256(_mm256_mul_ps(acc[c], vm));
            }
            __m256 p = _mm256_set1_ps(vs[j]);
            for (int c = 0; c < 8; c++)
                acc[c] = r16_256(_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vj + 8 * c))), p, acc[c]));
        }
        __m256 inv = _mm256_set1_ps(1.f / S[g]);
        for (int c = 0; c < 8; c++) _mm256_storeu_ps(out + 64 * g + 8 * c, _mm256_mul_ps(acc[c], inv));
    }
}
#else
void syk_expf_check(const float *x, float *y, int n) { for (int i = 0; i < n; i++) y[i] = expf(x[i]); }
#endif

void syk_attend_group(const float *q, const uint16_t *k, const uint16_t *v, int stride, int npos, int hd, int G,
                      float scale, float *scratch, float *out) {
#if SYK_X86
    if (hd == 64 && G >= 1 && G <= 4) {
        int isa = syk_get_isa();
        if (isa >= SYK_ISA_AVX512VNNI) { attend_group_avx512(q, k, v, stride, npos, G, scale, scratch, out); return; }
        if (isa >= SYK_ISA_AVX2) { attend_group_avx2(q, k, v, stride, npos, G, scale, scratch, out); return; }
    }
#endif
    for (int g = 0; g < G; g++)
        syk_attend(q + (size_t)g * hd, k, v, stride, npos, hd, scale, scratch, out + (size_t)g * hd);
}

void syk_attn_group_run(void *task, int ith, int nth) {
    const syk_attn_task *t = task;
    float *scr = t->scratch + (size_t)ith * t->scratch_per_thread;
    int group = t->nhead / t->nkv, kvdim = t->nkv * t->hd;
    // Work items: (token, KV head, sub-group of <= 4 query heads). With too few of them to keep every
    // thread busy (one decode token on several threads) items are single query heads instead.
    int sub = (group + 3) / 4, per = (group + sub - 1) / sub;
    int items = t->ntok * t->nkv * sub;
    if (items < 2 * nth) { per = 1; sub = group; items = t->ntok * t->nhead; }
    // Interleaved assignment balances long and short (causal) rows across threads.
    for (int it = ith; it < items; it += nth) {
        const syk_attn_tok *tk = &t->toks[it / (t->nkv * sub)];
        int r = it % (t->nkv * sub), kvh = r / sub, h0 = kvh * group + (r % sub) * per;
        int G = group - (r % sub) * per < per ? group - (r % sub) * per : per;
        if ((size_t)2 * G * tk->npos > (size_t)t->scratch_per_thread) G = 0;   // not enough scratch: head by head
        const uint16_t *k = tk->k + (size_t)kvh * t->hd, *v = tk->v + (size_t)kvh * t->hd;
        if (G > 0)
            syk_attend_group(tk->q + (size_t)h0 * t->hd, k, v, kvdim, tk->npos, t->hd, G, t->scale, scr,
                             tk->out + (size_t)h0 * t->hd);
        else
            for (int h = h0; h < h0 + per && h < (kvh + 1) * group; h++)
                syk_attend(tk->q + (size_t)h * t->hd, k, v, kvdim, tk->npos, t->hd, t->scale, scr, tk->out + (size_t)h * t->hd);
    }
}

// ---------------------------------------------------------------------------- RoPE + KV store

void syk_rope_kv_run(void *task, int ith, int nth) {
    const syk_rope_task *t = task;
    int half = t->hd / 2, kvdim = t->nkv * t->hd, qdim = t->nq * t->hd;
    int b = (int)((long)t->ntok * ith / nth), e = (int)((long)t->ntok * (ith + 1) / nth);
    for (int i = b; i < e; i++) {
        float *row = t->qkv + (size_t)i * t->ldq;
        const float *cs = t->cosb + (size_t)i * half, *sn = t->sinb + (size_t)i * half;
        syk_rope_norm(row, t->nq + t->nkv, t->hd, cs, sn);   // q heads, then k heads (llama.cpp's rounding)
        const syk_attn_tok *tk = &t->toks[i];
        // toks[i].k/v are this sequence's cache bases (const for the attention readers); the slot of
        // position npos-1 is written only here, by the one thread that owns token i.
        uint16_t *kd = (uint16_t *)tk->k + (size_t)(tk->npos - 1) * kvdim, *vd = (uint16_t *)tk->v + (size_t)(tk->npos - 1) * kvdim;
        syk_store_f16(row + qdim, kd, kvdim);
        syk_store_f16(row + qdim + kvdim, vd, kvdim);
    }
}
