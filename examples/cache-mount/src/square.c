#include "calc.h"

long square(long n) { return n * n; }
