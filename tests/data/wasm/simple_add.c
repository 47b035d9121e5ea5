/* The reference's simple-add example: arguments adder1, adder2 -> their sum. */
#include "teaclave_wasm.h"

EXPORT(entrypoint) int entrypoint(int argc, char **argv) {
    if (argc < 4 || argv[0] == 0 || argv[2] == 0) return -1;
    return to_int(argv[1]) + to_int(argv[3]);
}
