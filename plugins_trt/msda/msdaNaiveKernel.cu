/*
 * Naive MSDA forward kernel: one thread per output element (batch, query, head, channel), reading its
 * locations, weights and level table straight from global memory, as the original Deformable DETR im2col
 * kernel does. Kept as the benchmark baseline and as a second implementation of the same contract; it
 * computes in FP32 like the optimized kernel, so the two agree to rounding.
 */
#include <cstdint>

#include "msdaKernel.cuh"

namespace llmformer
{
namespace msda
{
namespace detail
{

constexpr int32_t kNaiveBlockThreads = 256;

template <typename T, typename TLoc, bool kInt64Index>
__global__ void msdaNaiveKernel(KernelArgs const a)
{
    int64_t const index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index >= static_cast<int64_t>(a.groups) * a.channels)
    {
        return;
    }
    int32_t const idx = static_cast<int32_t>(index);
    int32_t const D = a.channels;
    int32_t const M = a.heads;
    int32_t const c = idx % D;
    int32_t const group = idx / D; // (n * Lq + q) * M + m
    int32_t const m = group % M;
    int32_t const n = group / (a.queries * M);
    int32_t const LP = a.levels * a.points;
    TLoc const* loc = static_cast<TLoc const*>(a.locations) + group * LP * 2;
    TLoc const* wgt = static_cast<TLoc const*>(a.weights) + group * LP;
    T const* value = static_cast<T const*>(a.value) + (n * a.spatialSize * M + m) * D + c;
    int32_t const rowStride = M * D;

    float acc = 0.F;
    for (int32_t l = 0; l < a.levels; ++l)
    {
        Level const level = loadLevel(a.shapes, a.starts, kInt64Index, l, a.spatialSize);
        for (int32_t p = 0; p < a.points; ++p)
        {
            int32_t const k = l * a.points + p;
            Footprint fp;
            if (!footprint(toFloat(loc[2 * k]), toFloat(loc[2 * k + 1]), toFloat(wgt[k]), level, fp))
            {
                continue;
            }
            for (int32_t corner = 0; corner < 4; ++corner)
            {
                if (fp.offset[corner] >= 0)
                {
                    acc += fp.weight[corner] * toFloat(value[fp.offset[corner] * rowStride]);
                }
            }
        }
    }
    static_cast<T*>(a.output)[idx] = fromFloat<T>(acc);
}

template <typename T, typename TLoc>
void launchNaive(KernelArgs const& a, cudaStream_t stream)
{
    // int64: N * Lq * M * D may be as large as 2^31 - 1, where adding the rounding term would overflow int32.
    int64_t const total = static_cast<int64_t>(a.groups) * a.channels;
    int32_t const blocks = static_cast<int32_t>((total + kNaiveBlockThreads - 1) / kNaiveBlockThreads);
    if (a.int64Index)
    {
        msdaNaiveKernel<T, TLoc, true><<<blocks, kNaiveBlockThreads, 0, stream>>>(a);
    }
    else
    {
        msdaNaiveKernel<T, TLoc, false><<<blocks, kNaiveBlockThreads, 0, stream>>>(a);
    }
}

} // namespace detail

Status forwardNaive(Params const& p, cudaStream_t stream)
{
    detail::KernelArgs a{};
    Status const status = detail::makeKernelArgs(p, a);
    if (status != Status::kSUCCESS || a.groups == 0)
    {
        return status;
    }
    if (a.halfValue && a.halfLocations)
    {
        detail::launchNaive<__half, __half>(a, stream);
    }
    else if (a.halfValue)
    {
        detail::launchNaive<__half, float>(a, stream);
    }
    else if (a.halfLocations)
    {
        detail::launchNaive<float, __half>(a, stream);
    }
    else
    {
        detail::launchNaive<float, float>(a, stream);
    }
    return cudaGetLastError() == cudaSuccess ? Status::kSUCCESS : Status::kCUDA_ERROR;
}

} // namespace msda
} // namespace llmformer
