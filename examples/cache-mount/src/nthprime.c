#include "calc.h"

long nthprime(long n) { long p = 1; while (n > 0) if (isprime(++p)) n--; return p; }
