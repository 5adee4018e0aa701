#include "sy_uring.h"
