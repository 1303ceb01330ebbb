#include "calc.h"

long sigma(long n) { long s = 0; for (long d = 1; d <= n; d++) if (n % d == 0) s += d; return s; }
