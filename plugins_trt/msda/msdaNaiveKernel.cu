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

struct NaiveArgs
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
    int32_t total; // N * Lq * M * D
};

template <typename T, typename TLoc, bool kInt64Index>
__global__ void msdaNaiveKernel(NaiveArgs const a)
{
    int64_t const index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index >= a.total)
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
void launchNaive(NaiveArgs const& a, bool int64Index, cudaStream_t stream)
{
    int32_t const blocks = (a.total + kNaiveBlockThreads - 1) / kNaiveBlockThreads;
    if (int64Index)
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
    Status const status = validate(p);
    if (status != Status::kSUCCESS)
    {
        return status;
    }
    if (p.batch * p.queries == 0)
    {
        return Status::kSUCCESS;
    }
    detail::NaiveArgs a{};
    a.value = p.value;
    a.shapes = p.spatialShapes;
    a.starts = p.levelStartIndex;
    a.locations = p.samplingLocations;
    a.weights = p.attentionWeights;
    a.output = p.output;
    a.spatialSize = static_cast<int32_t>(p.spatialSize);
    a.heads = static_cast<int32_t>(p.heads);
    a.channels = static_cast<int32_t>(p.channels);
    a.levels = static_cast<int32_t>(p.levels);
    a.queries = static_cast<int32_t>(p.queries);
    a.points = static_cast<int32_t>(p.points);
    a.total = static_cast<int32_t>(p.batch * p.queries * p.heads * p.channels);
    bool const int64Index = p.indexType == IndexType::kINT64;
    bool const halfValue = p.valueType == DataType::kFLOAT16;
    bool const halfLoc = p.locationType == DataType::kFLOAT16;
    if (halfValue && halfLoc)
    {
        detail::launchNaive<__half, __half>(a, int64Index, stream);
    }
    else if (halfValue)
    {
        detail::launchNaive<__half, float>(a, int64Index, stream);
    }
    else if (halfLoc)
    {
        detail::launchNaive<float, __half>(a, int64Index, stream);
    }
    else
    {
        detail::launchNaive<float, float>(a, int64Index, stream);
    }
    return cudaGetLastError() == cudaSuccess ? Status::kSUCCESS : Status::kCUDA_ERROR;
}

} // namespace msda
} // namespace llmformer
