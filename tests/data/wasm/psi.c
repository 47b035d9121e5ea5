/* Private set intersection, as the reference's PSI example behaves (it is Rust there).
 * Arguments (sorted): input1_fid, <in1>, input2_fid, <in2>, output1_fid, <out1>, output2_fid, <out2>.
 * Reads both inputs' lines (empty lines ignored, "\r\n" accepted), writes every line present in both,
 * each once and in ascending byte order, then "done\n", to both outputs; returns how many there are. */
#include "teaclave_wasm.h"

#define PAGE 65536

typedef struct { const char *text; int length; } Line;

static char *heap_end;

/* A bump allocator over memory.grow: everything lives until the module's instance is gone. */
static void *allocate(int size) {
    if (!heap_end) heap_end = (char *)(__builtin_wasm_memory_size(0) * PAGE);
    char *start = heap_end;
    char *end = start + ((size + 7) & ~7);
    unsigned long have = __builtin_wasm_memory_size(0) * PAGE;
    if ((unsigned long)end > have) {
        unsigned long pages = ((unsigned long)end - have + PAGE - 1) / PAGE;
        if (__builtin_wasm_memory_grow(0, pages) == (unsigned long)-1) return 0;
    }
    heap_end = end;
    return start;
}

/* The whole file, or 0; its size in *size. */
static char *read_all(const char *name, int *size) {
    int handle = teaclave_open_input(name);
    if (handle < 0) return 0;
    int capacity = 1 << 16, used = 0;
    char *data = allocate(capacity);
    while (data) {
        if (used == capacity) {
            char *bigger = allocate(capacity * 2);
            if (!bigger) return 0;
            for (int i = 0; i < used; i++) bigger[i] = data[i];
            data = bigger;
            capacity *= 2;
        }
        int n = teaclave_read_file(handle, data + used, capacity - used);
        if (n < 0) return 0;
        if (n == 0) break;
        used += n;
    }
    teaclave_close_file(handle);
    *size = used;
    return data;
}

static Line *split_lines(const char *data, int size, int *count) {
    int most = 1;
    for (int i = 0; i < size; i++) most += data[i] == '\n';
    Line *lines = allocate(most * (int)sizeof(Line));
    if (!lines) return 0;
    int n = 0, start = 0;
    for (int i = 0; i <= size; i++) {
        if (i == size || data[i] == '\n') {
            int end = i;
            if (end > start && data[end - 1] == '\r') end--;
            if (end > start) lines[n++] = (Line){data + start, end - start};
            start = i + 1;
        }
    }
    *count = n;
    return lines;
}

static int compare(Line a, Line b) {
    int n = a.length < b.length ? a.length : b.length;
    for (int i = 0; i < n; i++) {
        if (a.text[i] != b.text[i]) return (unsigned char)a.text[i] - (unsigned char)b.text[i];
    }
    return a.length - b.length;
}

/* Merge sort (stable, O(n log n)) with a scratch array. */
static void sort(Line *lines, Line *scratch, int count) {
    for (int width = 1; width < count; width *= 2) {
        for (int left = 0; left < count; left += 2 * width) {
            int middle = left + width < count ? left + width : count;
            int right = left + 2 * width < count ? left + 2 * width : count;
            int i = left, j = middle, k = left;
            while (i < middle && j < right) scratch[k++] = compare(lines[i], lines[j]) <= 0 ? lines[i++] : lines[j++];
            while (i < middle) scratch[k++] = lines[i++];
            while (j < right) scratch[k++] = lines[j++];
        }
        for (int i = 0; i < count; i++) lines[i] = scratch[i];
    }
}

static int load_sorted(const char *name, Line **lines, int *count) {
    int size;
    char *data = read_all(name, &size);
    if (!data) return -1;
    *lines = split_lines(data, size, count);
    Line *scratch = allocate((*count + 1) * (int)sizeof(Line));
    if (!*lines || !scratch) return -1;
    sort(*lines, scratch, *count);
    return 0;
}

static int write_line(int handle, Line line) {
    if (teaclave_write_file(handle, line.text, line.length) < 0) return -1;
    return teaclave_write_file(handle, "\n", 1);
}

EXPORT(entrypoint) int entrypoint(int argc, char **argv) {
    if (argc != 8) return -1;
    Line *first, *second;
    int first_count, second_count;
    if (load_sorted(argv[1], &first, &first_count) < 0 || load_sorted(argv[3], &second, &second_count) < 0) return -1;
    int out1 = teaclave_create_output(argv[5]);
    int out2 = teaclave_create_output(argv[7]);
    if (out1 < 0 || out2 < 0) return -1;
    int common = 0, i = 0, j = 0;
    while (i < first_count && j < second_count) {
        int order = compare(first[i], second[j]);
        if (order < 0) { i++; continue; }
        if (order > 0) { j++; continue; }
        if (write_line(out1, first[i]) < 0 || write_line(out2, first[i]) < 0) return -1;
        common++;
        Line seen = first[i];
        while (i < first_count && compare(first[i], seen) == 0) i++;
        while (j < second_count && compare(second[j], seen) == 0) j++;
    }
    Line done = {"done", 4};
    if (write_line(out1, done) < 0 || write_line(out2, done) < 0) return -1;
    if (teaclave_close_file(out1) < 0 || teaclave_close_file(out2) < 0) return -1;
    return common;
}
