#include "calc.h"

long bitlen(long n) { long c = 0; for (; n > 0; n >>= 1) c++; return c; }
