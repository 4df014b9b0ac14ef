/*
 * Device helpers shared by the optimized and the naive MSDA kernels (see msdaKernel.h for the contract).
 */
#ifndef LLMFORMER_MSDA_KERNEL_CUH
#define LLMFORMER_MSDA_KERNEL_CUH

#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "msdaKernel.h"

namespace llmformer
{
namespace msda
{
namespace detail
{

// Launch arguments of both kernels. Only makeKernelArgs() fills them, so the optimized and the naive kernel
// accept exactly the same inputs; the int32 fields are safe because validate() bounded every product first.
struct KernelArgs
{
    void const* value;
    void const* shapes;
    void const* starts;
    void const* locations;
    void const* weights;
    void* output;
    int32_t spatialSize;
    int32_t heads;
    int32_t channels;
    int32_t levels;
    int32_t queries;
    int32_t points;
    int32_t groups; // N * Lq * M; 0 when there is nothing to launch (N or Lq is 0)
    bool int64Index;
    bool halfValue;
    bool halfLocations;
};

// validate(), then the narrowing to KernelArgs; `args` is written only on kSUCCESS. Defined in msdaKernel.cu.
Status makeKernelArgs(Params const& params, KernelArgs& args);

// Storage <-> FP32. Everything arithmetic happens in FP32.
__device__ __forceinline__ float toFloat(float v)
{
    return v;
}
__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}
template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

// One level of the pyramid as the kernels see it.
struct Level
{
    int32_t height;
    int32_t width;
    int32_t start;
};

// Reads level `l` from the shape tensors (INT32 or INT64). A level whose rows would run past S, or with a
// negative size or start, is returned empty (0 x 0): it then contributes zero instead of reading out of
// bounds. Inconsistent tables are rejected with a clear error on the host (models/msda.py, the PyTorch
// binding); on the device the only safe answer is "no contribution".
__device__ __forceinline__ Level loadLevel(
    void const* shapes, void const* starts, bool int64Index, int32_t l, int32_t spatialSize)
{
    int64_t h, w, s;
    if (int64Index)
    {
        h = static_cast<int64_t const*>(shapes)[2 * l];
        w = static_cast<int64_t const*>(shapes)[2 * l + 1];
        s = static_cast<int64_t const*>(starts)[l];
    }
    else
    {
        h = static_cast<int32_t const*>(shapes)[2 * l];
        w = static_cast<int32_t const*>(shapes)[2 * l + 1];
        s = static_cast<int32_t const*>(starts)[l];
    }
    Level level{0, 0, 0};
    // h * w cannot overflow int64 once both are below 2^31.
    bool const ok = h >= 0 && w >= 0 && s >= 0 && h <= kMaxElements && w <= kMaxElements
        && s + h * w <= static_cast<int64_t>(spatialSize);
    if (ok)
    {
        level.height = static_cast<int32_t>(h);
        level.width = static_cast<int32_t>(w);
        level.start = static_cast<int32_t>(s);
    }
    return level;
}

// Bilinear footprint of one sampling point: up to four (row offset, weight) pairs, with the attention weight
// folded in. Corners outside the map get offset -1; callers skip them or pair them with a zero value.
struct Footprint
{
    int32_t offset[4];
    float weight[4];
};

// Pixel x = loc_x * W - 0.5: pixel centres sit at half-integers, which is what grid_sample with
// align_corners=False means. The test "-1 < x < W" is written so that NaN fails it, so a NaN location
// contributes zero instead of reaching floorf() and an out-of-range int conversion.
__device__ __forceinline__ bool footprint(float locX, float locY, float attention, Level const& level, Footprint& fp)
{
    float const x = locX * static_cast<float>(level.width) - 0.5F;
    float const y = locY * static_cast<float>(level.height) - 0.5F;
    if (!(x > -1.F && y > -1.F && x < static_cast<float>(level.width) && y < static_cast<float>(level.height)))
    {
        return false;
    }
    float const xf = floorf(x);
    float const yf = floorf(y);
    int32_t const x0 = static_cast<int32_t>(xf);
    int32_t const y0 = static_cast<int32_t>(yf);
    float const fx = x - xf;
    float const fy = y - yf;
    float const gx = 1.F - fx;
    float const gy = 1.F - fy;
    // Unsigned compare folds "0 <= v && v < n" into one test; x0, y0 >= -1 here.
    bool const x0in = static_cast<uint32_t>(x0) < static_cast<uint32_t>(level.width);
    bool const x1in = static_cast<uint32_t>(x0 + 1) < static_cast<uint32_t>(level.width);
    bool const y0in = static_cast<uint32_t>(y0) < static_cast<uint32_t>(level.height);
    bool const y1in = static_cast<uint32_t>(y0 + 1) < static_cast<uint32_t>(level.height);
    // row0 lies in [start - W - 1, start + H * W), so it fits int32 (start + H * W <= S was checked). The
    // other corners are formed only when they are inside the map, so no int32 expression can overflow.
    int32_t const row0 = level.start + y0 * level.width + x0;
    fp.offset[0] = (y0in && x0in) ? row0 : -1;
    fp.offset[1] = (y0in && x1in) ? row0 + 1 : -1;
    fp.offset[2] = (y1in && x0in) ? row0 + level.width : -1;
    fp.offset[3] = (y1in && x1in) ? row0 + level.width + 1 : -1;
    fp.weight[0] = attention * gx * gy;
    fp.weight[1] = attention * fx * gy;
    fp.weight[2] = attention * gx * fy;
    fp.weight[3] = attention * fx * fy;
    return true;
}

// kVec consecutive channels of one value row, read and written as one 16-byte transaction where kVec * sizeof(T)
// is 16, element by element otherwise. load() and fma() are split so that a caller can issue the four corner
// loads of a sampling point back to back and keep them in flight together.
template <typename T, int32_t kVec>
struct VecIO;

template <>
struct VecIO<float, 4>
{
    using Raw = float4;
    __device__ __forceinline__ static Raw load(float const* p)
    {
        return __ldg(reinterpret_cast<float4 const*>(p));
    }
    __device__ __forceinline__ static Raw zero()
    {
        return make_float4(0.F, 0.F, 0.F, 0.F);
    }
    __device__ __forceinline__ static void fma(float (&acc)[4], Raw const& v, float w)
    {
        acc[0] += w * v.x;
        acc[1] += w * v.y;
        acc[2] += w * v.z;
        acc[3] += w * v.w;
    }
    __device__ __forceinline__ static void store(float* p, float const (&acc)[4])
    {
        *reinterpret_cast<float4*>(p) = make_float4(acc[0], acc[1], acc[2], acc[3]);
    }
};

template <>
struct VecIO<__half, 8>
{
    using Raw = uint4; // 8 halves
    __device__ __forceinline__ static Raw load(__half const* p)
    {
        return __ldg(reinterpret_cast<uint4 const*>(p));
    }
    __device__ __forceinline__ static Raw zero()
    {
        return make_uint4(0U, 0U, 0U, 0U);
    }
    __device__ __forceinline__ static void fma(float (&acc)[8], Raw const& v, float w)
    {
        __half2 const* h = reinterpret_cast<__half2 const*>(&v);
#pragma unroll
        for (int32_t i = 0; i < 4; ++i)
        {
            float2 const f = __half22float2(h[i]);
            acc[2 * i] += w * f.x;
            acc[2 * i + 1] += w * f.y;
        }
    }
    __device__ __forceinline__ static void store(__half* p, float const (&acc)[8])
    {
        uint4 raw;
        __half2* h = reinterpret_cast<__half2*>(&raw);
#pragma unroll
        for (int32_t i = 0; i < 4; ++i)
        {
            h[i] = __floats2half2_rn(acc[2 * i], acc[2 * i + 1]);
        }
        *reinterpret_cast<uint4*>(p) = raw;
    }
};

template <typename T>
struct VecIO<T, 1>
{
    using Raw = float;
    __device__ __forceinline__ static Raw load(T const* p)
    {
        return toFloat(__ldg(p));
    }
    __device__ __forceinline__ static Raw zero()
    {
        return 0.F;
    }
    __device__ __forceinline__ static void fma(float (&acc)[1], Raw const& v, float w)
    {
        acc[0] += w * v;
    }
    __device__ __forceinline__ static void store(T* p, float const (&acc)[1])
    {
        p[0] = fromFloat<T>(acc[0]);
    }
};

} // namespace detail
} // namespace msda
} // namespace llmformer

#endif // LLMFORMER_MSDA_KERNEL_CUH
