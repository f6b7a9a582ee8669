// Second pass of the fused absmean ternarization: scale, trits and packing in one kernel, so no
// float tensor of quantized weights is ever materialized.
//
// s = (float)(sum(partials) / n) (partials from absmean_partial.cu, summed in a fixed order);
// trit = clamp(rint(w / (s + 1e-5f)), -1, 1) (ABSMEAN_EPS of rust/ternary, round half to even);
// codes (trit + 1) are packed in the "nct-u32x16" layout of ternary_gemv.cu: out [rows, words]
// uint32, element k of a row in word k / 16 at bits 8 * (k % 4) + 2 * ((k % 16) / 4), padding
// code 1. Block 0 writes scale[0] = s. Non-finite weights give a NaN scale (and trits 0 where the
// quotient is NaN), so everything computed from them is NaN.
// Launch: block 256 (exactly), grid ceil(rows * words / 256).
#define PACK_THREADS 256

__device__ __forceinline__ float pack_load_f32(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float pack_load_bf16(const unsigned short* p, long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}

template <typename T, float (*LOAD)(const T*, long)>
__device__ void ternarize_pack(const T* __restrict__ w, const double* __restrict__ partials, int n_partials,
                               unsigned int* __restrict__ out, float* __restrict__ scale, int rows, int cols,
                               int words) {
    __shared__ double red[PACK_THREADS];
    __shared__ float s_shared;
    // The partials, reduced in a fixed order: thread t adds partials t, t + 256, ... in turn, then
    // a shared-memory tree (strides 128, 64, ..., 1). ref.ternarize_pack repeats this order.
    double acc = 0.0;
    for (int i = threadIdx.x; i < n_partials; i += PACK_THREADS) acc += partials[i];
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int st = PACK_THREADS / 2; st > 0; st >>= 1) {
        if (threadIdx.x < st) red[threadIdx.x] += red[threadIdx.x + st];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const float s = (float)(red[0] / ((double)rows * (double)cols));
        s_shared = s <= 3.402823466e38f ? s : __int_as_float(0x7fc00000);
        if (blockIdx.x == 0) scale[0] = s_shared;
    }
    __syncthreads();
    const float denom = s_shared + 1e-5f;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)rows * words) return;
    const int row = (int)(idx / words), g = (int)(idx % words);
    const T* src = w + (long)row * cols;
    unsigned int word = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const int k = 16 * g + 4 * j + b;
            unsigned int code = 1;
            if (k < cols) {
                const float r = rintf(LOAD(src, k) / denom);
                code = r >= 1.0f ? 2u : (r <= -1.0f ? 0u : 1u);
            }
            word |= code << (8 * b + 2 * j);
        }
    }
    out[idx] = word;
}

extern "C" __global__ void ternarize_pack_f32(const float* __restrict__ w, const double* __restrict__ partials,
                                              int n_partials, unsigned int* __restrict__ out,
                                              float* __restrict__ scale, int rows, int cols, int words) {
    ternarize_pack<float, pack_load_f32>(w, partials, n_partials, out, scale, rows, cols, words);
}

extern "C" __global__ void ternarize_pack_bf16(const unsigned short* __restrict__ w,
                                               const double* __restrict__ partials, int n_partials,
                                               unsigned int* __restrict__ out, float* __restrict__ scale,
                                               int rows, int cols, int words) {
    ternarize_pack<unsigned short, pack_load_bf16>(w, partials, n_partials, out, scale, rows, cols, words);
}
