#include "calc.h"

long catalan(long n) { long c = 1; for (long k = 0; k < n; k++) c = c * 2 * (2 * k + 1) / (k + 2); return c; }
