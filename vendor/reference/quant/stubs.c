// The few ggml symbols ggml-quants.c needs, for gen.c (F16C does f16 -> f32).
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
float ggml_table_f32_f16[1 << 16];
void ggml_abort(const char * file, int line, const char * fmt, ...) { (void)fmt; fprintf(stderr, "ggml_abort %s:%d\n", file, line); abort(); }
size_t ggml_row_size(int type, int64_t ne) { (void)type; (void)ne; abort(); }
size_t ggml_type_size(int type) { (void)type; abort(); }
const char * ggml_type_name(int type) { (void)type; return "?"; }
__attribute__((constructor)) static void init_table(void) {
    for (int i = 0; i < 65536; i++) ggml_table_f32_f16[i] = _cvtsh_ss((unsigned short)i);
}
