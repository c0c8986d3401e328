// Generates the Q8_0 / Q6_K / Q8_K reference vectors in this folder with
// ggml's own reference quantizers and generic dot products (see PROVENANCE.md).
// Build (x86_64, no -m flags so ggml takes its portable C paths):
//   G=<llama.cpp>/ggml/src
//   gcc -O2 -mf16c -ffp-contract=off -DGGML_COMMON_DECL_C -I$G -I$G/../include \
//       gen.c stubs.c $G/ggml-quants.c -o gen -lm
//   ./gen vectors DIR        writes inputs.f32, q8_0.bin, q6_k.bin, q8_k.bin, dots.f32
//   ./gen q8_0|q6_k|q8_k IN.f32 OUT.bin   quantizes a whole file (development checks)
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml-common.h"
#include "ggml-quants.h"

#define ROWS 12
#define K 256

static uint64_t st = 0x9e3779b97f4a7c15ull;
static double urand(void) { // xorshift64*, in [0, 1)
    st ^= st >> 12; st ^= st << 25; st ^= st >> 27;
    return (double)((st * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
}
static float nrand(float sd) { // sum of four uniforms, roughly normal
    double s = urand() + urand() + urand() + urand() - 2.0;
    return (float)(s * sd * 1.732);
}

static void fill(float * x) {
    for (int r = 0; r < ROWS; r++) {
        float * y = x + r * K;
        for (int i = 0; i < K; i++) {
            switch (r) {
            case 0: y[i] = nrand(0.02f); break;                  // embedding-like
            case 1: y[i] = (float)(urand() * 2.0 - 1.0); break;  // uniform
            case 2: y[i] = nrand(0.05f); if (i == 17) y[i] = 3.0f; if (i == 200) y[i] = -2.5f; break; // outliers
            case 3: y[i] = (i / 16 == 5 || i / 16 == 11) ? nrand(1.0f) : 0.0f; break; // zero sub-blocks
            case 4: y[i] = nrand(1e-7f); break;                  // tiny
            case 5: y[i] = (float)((int)(urand() * 41) - 20) * 0.5f; break; // halves: rounding ties
            case 6: y[i] = 0.0f; break;                          // all zero
            case 7: y[i] = (i == 100) ? -4.0f : (float)(urand() * 1.0); break; // negative max, rest positive
            case 8: y[i] = 0.25f; break;                         // constant
            case 9: y[i] = (float)(i - 128) / 128.0f; break;     // ramp
            case 10: y[i] = nrand(100.0f); break;                // large
            default: y[i] = nrand(0.02f) * (i % 32 == 0 ? 20.0f : 1.0f); break; // spiky blocks
            }
        }
    }
}

static void wr(const char * dir, const char * name, const void * p, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) { perror(path); exit(1); }
    fclose(f);
}

static void * rd(const char * path, size_t * n) {
    FILE * f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END); *n = ftell(f); fseek(f, 0, SEEK_SET);
    void * p = malloc(*n);
    if (fread(p, 1, *n, f) != *n) { perror(path); exit(1); }
    fclose(f);
    return p;
}

int main(int argc, char ** argv) {
    if (argc == 3 && !strcmp(argv[1], "vectors")) {
        static float x[ROWS * K];
        static block_q8_0 q80[ROWS * K / 32];
        static block_q6_K q6[ROWS];
        static block_q8_K q8k[ROWS];
        float dots[2 * ROWS];
        fill(x);
        quantize_row_q8_0_ref(x, q80, ROWS * K);
        quantize_row_q6_K_ref(x, q6, ROWS * K);
        quantize_row_q8_K_ref(x, q8k, ROWS * K);
        for (int r = 0; r < ROWS; r++) {
            int a = (r + 3) % ROWS; // weights row r against activations row a
            ggml_vec_dot_q8_0_q8_0(K, &dots[r], 0, q80 + r * K / 32, 0, q80 + a * K / 32, 0, 1);
            ggml_vec_dot_q6_K_q8_K(K, &dots[ROWS + r], 0, q6 + r, 0, q8k + a, 0, 1);
        }
        wr(argv[2], "inputs.f32", x, sizeof x);
        wr(argv[2], "q8_0.bin", q80, sizeof q80);
        wr(argv[2], "q6_k.bin", q6, sizeof q6);
        wr(argv[2], "q8_k.bin", q8k, sizeof q8k);
        wr(argv[2], "dots.f32", dots, sizeof dots);
        return 0;
    }
    if (argc == 4) {
        size_t n;
        float * x = rd(argv[2], &n);
        int64_t k = n / 4;
        FILE * f = fopen(argv[3], "wb");
        if (!strcmp(argv[1], "q8_0")) {
            block_q8_0 * y = malloc(k / 32 * sizeof *y);
            quantize_row_q8_0_ref(x, y, k);
            fwrite(y, sizeof *y, k / 32, f);
        } else if (!strcmp(argv[1], "q6_k")) {
            block_q6_K * y = malloc(k / 256 * sizeof *y);
            quantize_row_q6_K_ref(x, y, k);
            fwrite(y, sizeof *y, k / 256, f);
        } else if (!strcmp(argv[1], "q8_k")) {
            block_q8_K * y = malloc(k / 256 * sizeof *y);
            quantize_row_q8_K_ref(x, y, k);
            fwrite(y, sizeof *y, k / 256, f);
        } else {
            return 2;
        }
        fclose(f);
        return 0;
    }
    fprintf(stderr, "usage: gen vectors DIR | gen q8_0|q6_k|q8_k IN.f32 OUT.bin\n");
    return 2;
}
