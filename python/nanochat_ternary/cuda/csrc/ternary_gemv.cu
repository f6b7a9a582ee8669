// Ternary x int8 GEMV (decode): y[n] = (sum_k trit[n,k] * q[k]) * w_scale[n or 0] * x_scale[0].
//
// Weight layout ("nct-u32x16", see nanochat_ternary/cuda/layout.py): row-major [rows, words] uint32,
// words a multiple of 4 (64 weights); element k of a row is in word k / 16 at bits
// 8 * (k % 4) + 2 * ((k % 16) / 4) as code = trit + 1 (0, 1, 2); padding codes are 1 (trit 0).
// So (word >> 2j) & 0x03030303 holds the codes of elements 16g+4j .. 16g+4j+3 in its 4 bytes,
// which meet 4 consecutive int8 activations in one __dp4a: sum (c - 1) x = dp4a(c, x) - dp4a(1, x).
// Activations: int8 [words * 16], zero past cols (act_quant writes that padding).
//
// One warp per ROWS consecutive rows; each lane streams 16-byte weight loads (64 weights) so a warp
// reads 512 contiguous bytes of a row per step; the activation chunk is loaded once per ROWS rows.
// Launch: block (32 * WARPS), grid ceil(rows / (ROWS * WARPS)).
#ifndef GEMV_ROWS
#define GEMV_ROWS 2
#endif

extern "C" __global__ void ternary_gemv(const unsigned int* __restrict__ w, const signed char* __restrict__ x,
                                        const float* __restrict__ x_scale, const float* __restrict__ w_scale,
                                        int w_scale_per_row, float* __restrict__ y, int rows, int words) {
    const int lane = threadIdx.x & 31;
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int row0 = warp * GEMV_ROWS;
    if (row0 >= rows) return;
    const int chunks = words >> 2;  // 16-byte chunks per row
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    int acc[GEMV_ROWS];
    int xsum = 0;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; ++r) acc[r] = 0;
    for (int c = lane; c < chunks; c += 32) {
        // 64 activations for these 64 weights: 4 x 16 bytes.
        uint4 xa[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) xa[i] = __ldg(xv + 4 * c + i);
        const int* xi = reinterpret_cast<const int*>(xa);
#pragma unroll
        for (int i = 0; i < 16; ++i) xsum = __dp4a(0x01010101, xi[i], xsum);
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; ++r) {
            if (row0 + r < rows) {
                const uint4 wv = __ldg(reinterpret_cast<const uint4*>(w + (size_t)(row0 + r) * words) + c);
                const unsigned int wq[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
                for (int g = 0; g < 4; ++g) {
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        acc[r] = __dp4a((int)((wq[g] >> (2 * j)) & 0x03030303u), xi[4 * g + j], acc[r]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; ++r) {
        int v = acc[r] - xsum;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
        const int row = row0 + r;
        if (lane == 0 && row < rows) {
            y[row] = (float)v * w_scale[w_scale_per_row ? row : 0] * x_scale[0];
        }
    }
}
