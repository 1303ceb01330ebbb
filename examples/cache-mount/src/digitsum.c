#include "calc.h"

long digitsum(long n) { long s = 0; for (; n > 0; n /= 10) s += n % 10; return s; }
