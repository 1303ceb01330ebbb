#include "calc.h"

long pow2(long n) { return 1L << n; }
