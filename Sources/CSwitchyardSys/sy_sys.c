#include "sy_sys.h"
