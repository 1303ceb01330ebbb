#include "calc.h"

long popcount(long n) { long c = 0; for (; n > 0; n >>= 1) c += n & 1; return c; }
