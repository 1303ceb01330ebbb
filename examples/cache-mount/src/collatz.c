#include "calc.h"

long collatz(long n) { long s = 0; for (; n > 1; s++) n = n % 2 ? 3 * n + 1 : n / 2; return s; }
