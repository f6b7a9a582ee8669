// Host entry points of the emulated kernels (ctypes calls them with numpy buffers).
#include "emu.h"
#include "ternary_gemv.cu"
#include "ternary_gemm.cu"
#include "act_quant.cu"
#include "absmean_partial.cu"
#include "ternarize_pack.cu"

extern "C" {
void emu_ternary_gemv(unsigned gx, unsigned bx, const unsigned* w, const signed char* x, const float* xs, const float* ws,
                      int per_row, float* y, int rows, int words) {
    emu_launch(ternary_gemv, {gx, 1, 1}, {bx, 1, 1}, w, x, xs, ws, per_row, y, rows, words);
}
void emu_ternary_gemm(unsigned gx, unsigned gy, unsigned bx, const unsigned* w, const signed char* x, const float* xs,
                      const float* ws, int per_row, float* y, int tokens, int rows, int words) {
    emu_launch(ternary_gemm, {gx, gy, 1}, {bx, 1, 1}, w, x, xs, ws, per_row, y, tokens, rows, words);
}
void emu_act_quant_f32(unsigned gx, unsigned bx, const float* x, signed char* q, float* s, int cols, int padded, int mode) {
    emu_launch(act_quant_f32, {gx, 1, 1}, {bx, 1, 1}, x, q, s, cols, padded, mode);
}
void emu_act_quant_bf16(unsigned gx, unsigned bx, const unsigned short* x, signed char* q, float* s, int cols, int padded,
                        int mode) {
    emu_launch(act_quant_bf16, {gx, 1, 1}, {bx, 1, 1}, x, q, s, cols, padded, mode);
}
void emu_absmean_partial_f32(unsigned gx, unsigned bx, const float* w, long n, double* partials) {
    emu_launch(absmean_partial_f32, {gx, 1, 1}, {bx, 1, 1}, w, n, partials);
}
void emu_absmean_partial_bf16(unsigned gx, unsigned bx, const unsigned short* w, long n, double* partials) {
    emu_launch(absmean_partial_bf16, {gx, 1, 1}, {bx, 1, 1}, w, n, partials);
}
void emu_ternarize_pack_f32(unsigned gx, unsigned bx, const float* w, const double* partials, int n_partials, unsigned* out,
                            float* scale, int rows, int cols, int words) {
    emu_launch(ternarize_pack_f32, {gx, 1, 1}, {bx, 1, 1}, w, partials, n_partials, out, scale, rows, cols, words);
}
void emu_ternarize_pack_bf16(unsigned gx, unsigned bx, const unsigned short* w, const double* partials, int n_partials,
                             unsigned* out, float* scale, int rows, int cols, int words) {
    emu_launch(ternarize_pack_bf16, {gx, 1, 1}, {bx, 1, 1}, w, partials, n_partials, out, scale, rows, cols, words);
}
}
