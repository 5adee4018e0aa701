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
// K/V rows of one head are `stride` elements apart (the cache is [pos][kv head][hd]), a pattern the hardware
// prefetchers follow poorly; fetch the row SYK_ATT_PF positions ahead (its 128 bytes may span 3 lines).
// Prefetching past the last position is harmless (prefetches do not fault).
#define SYK_ATT_PF 6
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
    for (int g = 0; g < G; g++) SOFTMAX_PASS(sc + (size_t)g * npos, ms + (size_t)g * npos, npos, S[g]);
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
