// Internal declarations shared by the kernel translation units (not part of the public header).
#ifndef CSWITCHYARD_KERNELS_INTERNAL_H
#define CSWITCHYARD_KERNELS_INTERNAL_H
#include "CSwitchyardKernels.h"
#if defined(__x86_64__)
#include <immintrin.h>
#define SYK_X86 1
#define SYK_AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,f16c,fma")))
#define SYK_AVX2_ATTR __attribute__((target("avx2,fma,f16c")))
#endif

#if SYK_X86
// AVX2 + FMA + F16C level (kernels_avx2.c). Each one does, per output lane, the same arithmetic in the same
// order as its AVX-512 counterpart in kernels.c, so the two levels agree to the last bit.
void syk_gemm_avx2(const syk_wmat *w, const syk_act *a, int ntok, float *out, int ldo, int accumulate, int g0, int g1,
                   int llama);
void syk_quantize_act_avx2(const float *x, const float *norm, float eps, const syk_act *a, int t, float *xout);
void syk_swiglu_avx2(const float *g, const float *u, float *h, int n);
void syk_store_f16_avx2(const float *x, uint16_t *dst, int n);
void syk_attend_tiled_avx2(const float *q, const float *kt, int ldk, const uint16_t *v, int stride, int npos, int hd,
                           float scale, float *out);

// Lane reduction in the halving order of GCC's _mm512_reduce_add_ps (llama.cpp is built with GCC; clang's
// builtin reduces in another order): 256-bit halves, 128-bit halves, then (0+2)+(1+3).
SYK_AVX512_ATTR static inline float syk_reduce_tree512(__m512 x) {
    __m256 t3 = _mm256_add_ps(_mm512_extractf32x8_ps(x, 1), _mm512_castps512_ps256(x));
    __m128 t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
    __m128 t8 = _mm_add_ps(t6, _mm_permute_ps(t6, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtss_f32(_mm_add_ss(t8, _mm_movehdup_ps(t8)));
}
#endif
#endif
