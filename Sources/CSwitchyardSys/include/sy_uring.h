#ifndef SY_URING_H
#define SY_URING_H
#include <stdint.h>
#endif
