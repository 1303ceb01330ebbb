#include "calc.h"

long cube(long n) { return n * n * n; }
