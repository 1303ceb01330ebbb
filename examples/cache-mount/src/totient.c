#include "calc.h"

long totient(long n) { long c = 0; for (long k = 1; k <= n; k++) if (gcd(n, k) == 1) c++; return c; }
