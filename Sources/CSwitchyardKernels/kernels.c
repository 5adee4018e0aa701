#include "CSwitchyardKernels.h"
int syk_cpu_features(void) { return 0; }
