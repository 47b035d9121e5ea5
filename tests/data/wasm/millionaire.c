/* The reference's millionaire problem: whose input holds the larger number?
 * Arguments (sorted): input_file_id1, <a>, input_file_id2, <b>, output_file_id, <out>.
 * Writes the richer party's input name to the output; returns the bytes written, or -1. */
#include "teaclave_wasm.h"

static int read_number(const char *name, int *value) {
    char buffer[11] = {0};
    int handle = teaclave_open_input(name);
    if (handle < 0) return -1;
    int n = teaclave_read_file(handle, buffer, 10);
    teaclave_close_file(handle);
    if (n < 0) return -1;
    *value = to_int(buffer);
    return 0;
}

EXPORT(entrypoint) int entrypoint(int argc, char **argv) {
    if (argc < 6) return -1;
    int a, b;
    if (read_number(argv[1], &a) < 0 || read_number(argv[3], &b) < 0) return -1;
    int out = teaclave_create_output(argv[5]);
    if (out < 0) return -1;
    const char *richer = a >= b ? argv[1] : argv[3];
    int written = teaclave_write_file(out, richer, str_length(richer));
    if (teaclave_close_file(out) < 0) return -1;
    return written;
}
