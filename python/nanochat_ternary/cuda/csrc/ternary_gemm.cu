// Ternary x int8 GEMM (prefill, batches): y[m, n] = (sum_k trit[n,k] * q[m,k]) * w_scale[n or 0] * x_scale[m].
//
// Weights in the "nct-u32x16" layout (see ternary_gemv.cu and nanochat_ternary/cuda/layout.py):
// [rows, words] uint32, words a multiple of 4. Activations int8 [tokens, words * 16], zero past cols.
// Output float32 [tokens, rows].
//
// A block of 256 threads computes a 64-token x 64-row tile, 4 x 4 outputs per thread, stepping
// through K 64 weights (4 words per row, 64 activation bytes per token) at a time through shared
// memory; every product of 4 codes with 4 activations is one __dp4a, and the sum of the codes
// offset (c = trit + 1) is removed at the end with the per-token activation sums.
// Launch: block 256, grid (ceil(rows / 64), ceil(tokens / 64)).
#define TILE 64
#define WPAD 5  // words per row in shared memory (4 + 1 against bank conflicts)

extern "C" __global__ void ternary_gemm(const unsigned int* __restrict__ w, const signed char* __restrict__ x,
                                        const float* __restrict__ x_scale, const float* __restrict__ w_scale,
                                        int w_scale_per_row, float* __restrict__ y, int tokens, int rows,
                                        int words) {
    __shared__ int xs[TILE][17];            // 64 tokens x 16 ints (64 bytes), padded
    __shared__ unsigned int ws[TILE][WPAD];  // 64 rows x 4 words, padded
    const int tid = threadIdx.x;
    const int tx = tid & 15, ty = tid >> 4;
    const int row0 = blockIdx.x * TILE, tok0 = blockIdx.y * TILE;
    int acc[4][4];
    int xsum[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        xsum[i] = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0;
    }
    const size_t xstride = (size_t)words * 16;
    for (int k0 = 0; k0 < words; k0 += 4) {
        {   // activations: thread -> (token tid / 4, 16 bytes tid % 4)
            const int t = tid >> 2, part = tid & 3;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (tok0 + t < tokens) {
                v = __ldg(reinterpret_cast<const uint4*>(x + (size_t)(tok0 + t) * xstride + (size_t)k0 * 16) + part);
            }
            xs[t][4 * part + 0] = (int)v.x;
            xs[t][4 * part + 1] = (int)v.y;
            xs[t][4 * part + 2] = (int)v.z;
            xs[t][4 * part + 3] = (int)v.w;
        }
        {   // weights: thread -> (row tid / 4, word tid % 4)
            const int r = tid >> 2, g = tid & 3;
            ws[r][g] = (row0 + r < rows) ? __ldg(w + (size_t)(row0 + r) * words + k0 + g) : 0x55555555u;
        }
        __syncthreads();
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            unsigned int wr[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) wr[j] = ws[tx + 16 * j][g];
#pragma unroll
            for (int s = 0; s < 4; ++s) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int xv = xs[ty + 16 * i][4 * g + s];
                    xsum[i] = __dp4a(0x01010101, xv, xsum[i]);
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        acc[i][j] = __dp4a((int)((wr[j] >> (2 * s)) & 0x03030303u), xv, acc[i][j]);
                    }
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int t = tok0 + ty + 16 * i;
        if (t >= tokens) continue;
        const float xsc = x_scale[t];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int r = row0 + tx + 16 * j;
            if (r < rows) {
                y[(size_t)t * rows + r] = (float)(acc[i][j] - xsum[i]) * w_scale[w_scale_per_row ? r : 0] * xsc;
            }
        }
    }
}
