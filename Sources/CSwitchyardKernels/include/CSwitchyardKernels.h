// CSwitchyardKernels: hot numeric kernels for the engine (quantized dot products and matmul tiles),
// with run-time CPU feature dispatch and a portable fallback. Prefixed `syk_`.
#ifndef CSWITCHYARD_KERNELS_H
#define CSWITCHYARD_KERNELS_H
#include <stddef.h>
#include <stdint.h>
int syk_cpu_features(void);
#endif
