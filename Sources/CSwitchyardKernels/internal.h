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
void syk_gemm_avx2(const syk_wmat *w, const syk_act *a, int ntok, float *out, int ldo, int accumulate, int g0, int g1);
void syk_quantize_act_avx2(const float *x, const float *norm, float eps, const syk_act *a, int t, float *xout);
void syk_swiglu_avx2(const float *g, const float *u, float *h, int n);
void syk_store_f16_avx2(const float *x, uint16_t *dst, int n);
#endif
#endif
