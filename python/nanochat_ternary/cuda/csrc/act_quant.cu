// Per-token int8 activation quantization (absmax), one block per token, float32 or bfloat16 input.
//
// q: int8 [tokens, padded_cols] (zeros written past cols, the padding the GEMV/GEMM read);
// scale: float32 [tokens], the dequantization factor d with x ~= q * d.
// mode 0, the QAT forward (rust/train/src/quant.rs): m = max(max|x|, 1e-5), s = (1 / m) * 127,
//   q = clamp(rint(x * s), -128, 127), d = 1 / s.
// mode 1, the inference kernels (rust/kernels quantize.rs): m = max|x|; m == 0 -> q = 0, d = 0;
//   else q = clamp(rint(x * (127 / m)), -127, 127), d = m / 127.
// A token holding NaN or +-Inf gets q = 0 and d = NaN, so its outputs are NaN, never silent values.
// rint rounds half to even (as torch.round). Launch: block 256 (a power of two), grid tokens.
#define ACT_THREADS 256

__device__ __forceinline__ float load_f32(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float load_bf16(const unsigned short* p, long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}

template <typename T, float (*LOAD)(const T*, long)>
__device__ void act_quant(const T* __restrict__ x, signed char* __restrict__ q, float* __restrict__ scale,
                          int cols, int padded_cols, int mode) {
    __shared__ float red[ACT_THREADS];
    const long t = blockIdx.x;
    const T* row = x + t * (long)cols;
    signed char* out = q + t * (long)padded_cols;
    float m = 0.0f;
    for (int k = threadIdx.x; k < cols; k += blockDim.x) {
        const float a = fabsf(LOAD(row, k));
        m = (a > m || a != a) ? a : m;  // NaN propagates
    }
    red[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const float a = red[threadIdx.x + s], b = red[threadIdx.x];
            red[threadIdx.x] = (a > b || a != a) ? a : b;
        }
        __syncthreads();
    }
    m = red[0];
    const bool finite = m <= 3.402823466e38f;  // false for NaN and Inf
    float mul, d, lo;
    if (mode == 0) {
        const float s = (1.0f / fmaxf(m, 1e-5f)) * 127.0f;
        mul = s;
        d = 1.0f / s;
        lo = -128.0f;
    } else {
        mul = m > 0.0f ? 127.0f / m : 0.0f;
        d = m / 127.0f;
        lo = -127.0f;
    }
    if (!finite) d = __int_as_float(0x7fc00000);
    for (int k = threadIdx.x; k < padded_cols; k += blockDim.x) {
        float v = (k < cols && finite) ? rintf(LOAD(row, k) * mul) : 0.0f;
        v = fminf(fmaxf(v, lo), 127.0f);
        out[k] = (signed char)(int)v;
    }
    if (threadIdx.x == 0) scale[t] = d;
}

extern "C" __global__ void act_quant_f32(const float* __restrict__ x, signed char* __restrict__ q,
                                         float* __restrict__ scale, int cols, int padded_cols, int mode) {
    act_quant<float, load_f32>(x, q, scale, cols, padded_cols, mode);
}

extern "C" __global__ void act_quant_bf16(const unsigned short* __restrict__ x, signed char* __restrict__ q,
                                          float* __restrict__ scale, int cols, int padded_cols, int mode) {
    act_quant<unsigned short, load_bf16>(x, q, scale, cols, padded_cols, mode);
}
