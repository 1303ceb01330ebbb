#include <stdio.h>

int main(int argc, char **argv) {
    printf("hello from a static C binary built by imgbuild\n");
    for (int i = 1; i < argc; i++) printf("arg: %s\n", argv[i]);
    return 0;
}
