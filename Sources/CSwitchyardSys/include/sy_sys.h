#ifndef SY_SYS_H
#define SY_SYS_H
#include <stdint.h>
#endif
