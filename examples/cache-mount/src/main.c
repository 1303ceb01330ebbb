/* calc N: prints each function of N (default 12). */
#include <stdio.h>
#include <stdlib.h>
#include "calc.h"

#define F(f) { #f, f }
static const struct { const char *name; long (*f)(long); } table[] = {
    F(square), F(cube), F(triangle), F(factorial), F(fib), F(pow2), F(digitsum),
    F(reverse), F(popcount), F(bitlen), F(isprime), F(nthprime), F(divisors),
    F(sigma), F(totient), F(isqrt), F(collatz), F(catalan),
};

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 12;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        printf("%s(%ld) = %ld\n", table[i].name, n, table[i].f(n));
    printf("gcd(%ld, 18) = %ld\n", n, gcd(n, 18));
    return 0;
}
