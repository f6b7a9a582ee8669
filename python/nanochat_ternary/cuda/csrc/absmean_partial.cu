// First pass of the fused absmean ternarization: partial sums of |w| in float64.
//
// Block b writes partials[b] = sum of |w[i]| over the elements it strides over (grid-stride loop,
// a fixed order per launch shape), reduced in shared memory in a fixed tree order, so the result is
// deterministic for a given grid. ternarize_pack.cu adds the partials in index order and rounds
// sum / n to float32 once, as the codec does (rust/ternary quant.rs: f64 accumulation, one rounding).
// A NaN/Inf weight makes the sum NaN/Inf; ternarize_pack then writes a NaN scale.
// Launch: block 256 (a power of two), grid = number of partials (e.g. 4 x SMs, at most 1024).
#define ABS_THREADS 256

__device__ __forceinline__ float absmean_load_f32(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float absmean_load_bf16(const unsigned short* p, long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}

template <typename T, float (*LOAD)(const T*, long)>
__device__ void absmean_partial(const T* __restrict__ w, long n, double* __restrict__ partials) {
    __shared__ double red[ABS_THREADS];
    double acc = 0.0;
    const long stride = (long)gridDim.x * blockDim.x;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        acc += (double)fabsf(LOAD(w, i));
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[blockIdx.x] = red[0];
}

extern "C" __global__ void absmean_partial_f32(const float* __restrict__ w, long n, double* __restrict__ partials) {
    absmean_partial<float, absmean_load_f32>(w, n, partials);
}

extern "C" __global__ void absmean_partial_bf16(const unsigned short* __restrict__ w, long n,
                                                double* __restrict__ partials) {
    absmean_partial<unsigned short, absmean_load_bf16>(w, n, partials);
}
