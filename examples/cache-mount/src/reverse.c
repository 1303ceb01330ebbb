#include "calc.h"

long reverse(long n) { long r = 0; for (; n > 0; n /= 10) r = r * 10 + n % 10; return r; }
