#include "calc.h"

long divisors(long n) { long c = 0; for (long d = 1; d <= n; d++) c += n % d == 0; return c; }
