/* The host functions of the platform's WebAssembly executor (Teaclave's WAMR ABI).
 * No libc and no WASI: a module imports these five from "env" and nothing else. */
#ifndef TEACLAVE_WASM_H
#define TEACLAVE_WASM_H

#define IMPORT(name) __attribute__((import_module("env"), import_name(#name)))
#define EXPORT(name) __attribute__((export_name(#name)))

/* A handle (>= 1; writers have bit 30 set), or -1. */
IMPORT(teaclave_open_input) int teaclave_open_input(const char *name);
IMPORT(teaclave_create_output) int teaclave_create_output(const char *name);
/* Bytes read (0 at the end), bytes written, or -1. */
IMPORT(teaclave_read_file) int teaclave_read_file(int handle, void *buffer, int length);
IMPORT(teaclave_write_file) int teaclave_write_file(int handle, const void *buffer, int length);
/* 0, or -1. */
IMPORT(teaclave_close_file) int teaclave_close_file(int handle);

static inline int str_length(const char *s) {
    int n = 0;
    while (s[n]) n++;
    return n;
}

/* The reference examples' atoi: leading blanks, an optional sign, digits. */
static inline int to_int(const char *s) {
    int sign = 1, value = 0;
    while (*s == ' ' || *s == '\t' || *s == '\n') s++;
    if (*s == '-' || *s == '+') sign = (*s++ == '-') ? -1 : 1;
    while (*s >= '0' && *s <= '9') value = value * 10 + (*s++ - '0');
    return sign * value;
}

#endif
