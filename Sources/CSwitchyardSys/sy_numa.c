#include "sy_numa.h"
