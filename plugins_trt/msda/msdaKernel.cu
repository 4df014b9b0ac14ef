/*
 * Optimized MSDA forward kernel, and the host-side validation and argument filling (makeKernelArgs) that the
 * naive kernel shares.
 *
 * Work split: one (batch, query, head) "group" is served by D / kVec consecutive threads, each owning kVec
 * channels (8 halves or 4 floats = one 16-byte load per bilinear corner). A block first copies the sampling
 * locations and attention weights of all its groups into shared memory with coalesced loads, so each is read
 * from DRAM once and converted to FP32 once, then every thread walks the L x P points of its group.
 */
#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "msdaKernel.cuh"

namespace llmformer
{
namespace msda
{
namespace detail
{

constexpr int32_t kBlockThreads = 256;
constexpr int32_t kMaxBlockThreads = 1024;
constexpr size_t kMaxStageBytes = 48 * 1024; // the default dynamic shared-memory limit, no opt-in needed
constexpr size_t kStageFloatsPerPoint = 3;    // x, y, attention weight

// Template arguments of 0 mean "read from args at run time" (the generic fallback).
template <typename T, int32_t kVec, int32_t kLevels, int32_t kPoints, int32_t kChannels>
__global__ void __launch_bounds__(kChannels > 0 ? kBlockThreads : kMaxBlockThreads)
    msdaForwardKernel(KernelArgs const a)
{
    extern __shared__ float stage[]; // [group in block][l * P + p][x, y, w]
    __shared__ Level levels[kMaxLevels];

    int32_t const L = kLevels > 0 ? kLevels : a.levels;
    int32_t const P = kPoints > 0 ? kPoints : a.points;
    int32_t const D = kChannels > 0 ? kChannels : a.channels;
    int32_t const threadsPerGroup = D / kVec;
    int32_t const groupsPerBlock = static_cast<int32_t>(blockDim.x) / threadsPerGroup;
    int32_t const LP = L * P;
    int32_t const tid = static_cast<int32_t>(threadIdx.x);

    // Strided: a block of a wide generic shape can have fewer threads than levels.
    for (int32_t l = tid; l < L; l += static_cast<int32_t>(blockDim.x))
    {
        levels[l] = loadLevel(a.shapes, a.starts, a.int64Index, l, a.spatialSize);
    }

    int32_t const firstGroup = static_cast<int32_t>(blockIdx.x) * groupsPerBlock;
    int32_t const nGroups = min(groupsPerBlock, a.groups - firstGroup);
    int32_t const nPoints = nGroups * LP;
    int32_t const firstPoint = firstGroup * LP;
    if (a.halfLocations)
    {
        __half const* loc = static_cast<__half const*>(a.locations) + 2 * firstPoint;
        __half const* wgt = static_cast<__half const*>(a.weights) + firstPoint;
        for (int32_t i = tid; i < nPoints; i += static_cast<int32_t>(blockDim.x))
        {
            stage[3 * i] = __half2float(loc[2 * i]);
            stage[3 * i + 1] = __half2float(loc[2 * i + 1]);
            stage[3 * i + 2] = __half2float(wgt[i]);
        }
    }
    else
    {
        float const* loc = static_cast<float const*>(a.locations) + 2 * firstPoint;
        float const* wgt = static_cast<float const*>(a.weights) + firstPoint;
        for (int32_t i = tid; i < nPoints; i += static_cast<int32_t>(blockDim.x))
        {
            stage[3 * i] = loc[2 * i];
            stage[3 * i + 1] = loc[2 * i + 1];
            stage[3 * i + 2] = wgt[i];
        }
    }
    __syncthreads();

    int32_t const localGroup = tid / threadsPerGroup;
    if (localGroup >= nGroups)
    {
        return; // no barrier follows
    }
    int32_t const lane = tid - localGroup * threadsPerGroup;
    int32_t const group = firstGroup + localGroup; // (n * Lq + q) * M + m
    int32_t const M = a.heads;
    int32_t const m = group % M;
    int32_t const n = group / (a.queries * M);
    int32_t const rowStride = M * D; // elements between value[n, s, m, :] and value[n, s + 1, m, :]
    T const* valueBase = static_cast<T const*>(a.value) + (n * a.spatialSize * M + m) * D + lane * kVec;
    float const* points = stage + kStageFloatsPerPoint * localGroup * LP;

    float acc[kVec];
#pragma unroll
    for (int32_t i = 0; i < kVec; ++i)
    {
        acc[i] = 0.F;
    }

#pragma unroll
    for (int32_t l = 0; l < L; ++l)
    {
        Level const level = levels[l];
#pragma unroll
        for (int32_t p = 0; p < P; ++p)
        {
            float const* s = points + kStageFloatsPerPoint * (l * P + p);
            Footprint fp;
            if (!footprint(s[0], s[1], s[2], level, fp))
            {
                continue;
            }
            // All four corner loads first, then the FMAs: four independent 16-byte loads in flight per thread.
            typename VecIO<T, kVec>::Raw corner[4];
#pragma unroll
            for (int32_t c = 0; c < 4; ++c)
            {
                corner[c] = fp.offset[c] >= 0 ? VecIO<T, kVec>::load(valueBase + fp.offset[c] * rowStride)
                                              : VecIO<T, kVec>::zero();
            }
#pragma unroll
            for (int32_t c = 0; c < 4; ++c)
            {
                VecIO<T, kVec>::fma(acc, corner[c], fp.weight[c]);
            }
        }
    }
    VecIO<T, kVec>::store(static_cast<T*>(a.output) + group * D + lane * kVec, acc);
}

// Launches one instantiation; returns false when the shape cannot be staged (caller falls back to naive).
template <typename T, int32_t kVec, int32_t kLevels, int32_t kPoints, int32_t kChannels>
bool launch(KernelArgs const& a, cudaStream_t stream)
{
    int32_t const threadsPerGroup = a.channels / kVec;
    if (threadsPerGroup > kMaxBlockThreads)
    {
        return false;
    }
    size_t const bytesPerGroup = kStageFloatsPerPoint * sizeof(float) * static_cast<size_t>(a.levels) * a.points;
    size_t const fitGroups = kMaxStageBytes / bytesPerGroup;
    int32_t const groupsPerBlock
        = static_cast<int32_t>(std::min<size_t>(std::max(1, kBlockThreads / threadsPerGroup), fitGroups));
    if (groupsPerBlock == 0)
    {
        return false;
    }
    int32_t const threads = groupsPerBlock * threadsPerGroup;
    int32_t const blocks = (a.groups + groupsPerBlock - 1) / groupsPerBlock;
    msdaForwardKernel<T, kVec, kLevels, kPoints, kChannels>
        <<<blocks, threads, bytesPerGroup * groupsPerBlock, stream>>>(a);
    return true;
}

// The specialized set: levels {1, 3, 4} x points {4, 8} x head dim {32, 64}; anything else runs generic.
template <typename T, int32_t kVec, int32_t kLevels, int32_t kPoints>
bool byChannels(KernelArgs const& a, cudaStream_t stream)
{
    switch (a.channels)
    {
    case 32: return launch<T, kVec, kLevels, kPoints, 32>(a, stream);
    case 64: return launch<T, kVec, kLevels, kPoints, 64>(a, stream);
    default: return launch<T, kVec, 0, 0, 0>(a, stream);
    }
}

template <typename T, int32_t kVec, int32_t kLevels>
bool byPoints(KernelArgs const& a, cudaStream_t stream)
{
    switch (a.points)
    {
    case 4: return byChannels<T, kVec, kLevels, 4>(a, stream);
    case 8: return byChannels<T, kVec, kLevels, 8>(a, stream);
    default: return launch<T, kVec, 0, 0, 0>(a, stream);
    }
}

template <typename T>
bool dispatch(KernelArgs const& a, bool vectorized, cudaStream_t stream)
{
    constexpr int32_t kVec = 16 / static_cast<int32_t>(sizeof(T));
    if (!vectorized)
    {
        return launch<T, 1, 0, 0, 0>(a, stream);
    }
    switch (a.levels)
    {
    case 1: return byPoints<T, kVec, 1>(a, stream);
    case 3: return byPoints<T, kVec, 3>(a, stream);
    case 4: return byPoints<T, kVec, 4>(a, stream);
    default: return launch<T, kVec, 0, 0, 0>(a, stream);
    }
}

bool isAligned16(void const* p)
{
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// a * b into out, false if the product leaves [0, kMaxElements].
bool mulWithin(int64_t a, int64_t b, int64_t& out)
{
    if (a < 0 || b < 0 || (a != 0 && b > kMaxElements / a))
    {
        return false;
    }
    out = a * b;
    return true;
}

bool productWithin(std::initializer_list<int64_t> factors)
{
    int64_t acc = 1;
    for (int64_t f : factors)
    {
        if (!mulWithin(acc, f, acc))
        {
            return false;
        }
    }
    return true;
}

} // namespace detail

char const* statusString(Status status)
{
    switch (status)
    {
    case Status::kSUCCESS: return "success";
    case Status::kINVALID_ARGUMENT:
        return "invalid argument (null pointer, or a non-positive heads/channels/levels/points, or a negative size)";
    case Status::kTOO_LARGE:
        return "a tensor has more than 2^31 - 1 elements, beyond the kernels' int32 indexing; split the batch";
    case Status::kCUDA_ERROR: return "CUDA launch error";
    }
    return "unknown status";
}

Status validate(Params const& p)
{
    if (p.heads < 1 || p.channels < 1 || p.levels < 1 || p.points < 1 || p.batch < 0 || p.queries < 0
        || p.spatialSize < 0)
    {
        return Status::kINVALID_ARGUMENT;
    }
    // Every tensor the kernels index, and the thread count of the naive kernel (= output elements).
    if (!detail::productWithin({p.batch, p.spatialSize, p.heads, p.channels})
        || !detail::productWithin({p.batch, p.queries, p.heads, p.levels, p.points, 2})
        || !detail::productWithin({p.batch, p.queries, p.heads, p.channels})
        || !detail::productWithin({p.levels, 2}))
    {
        return Status::kTOO_LARGE;
    }
    bool const hasWork = p.batch * p.queries > 0;
    if (hasWork
        && (p.spatialShapes == nullptr || p.levelStartIndex == nullptr || p.samplingLocations == nullptr
            || p.attentionWeights == nullptr || p.output == nullptr
            || (p.spatialSize > 0 && p.value == nullptr)))
    {
        return Status::kINVALID_ARGUMENT;
    }
    return Status::kSUCCESS;
}

namespace detail
{

Status makeKernelArgs(Params const& p, KernelArgs& a)
{
    Status const status = validate(p);
    if (status != Status::kSUCCESS)
    {
        return status;
    }
    a = KernelArgs{};
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
    a.groups = static_cast<int32_t>(p.batch * p.queries * p.heads);
    a.int64Index = p.indexType == IndexType::kINT64;
    a.halfValue = p.valueType == DataType::kFLOAT16;
    a.halfLocations = p.locationType == DataType::kFLOAT16;
    return Status::kSUCCESS;
}

} // namespace detail

Status forward(Params const& p, cudaStream_t stream)
{
    detail::KernelArgs a{};
    Status const status = detail::makeKernelArgs(p, a);
    if (status != Status::kSUCCESS || a.groups == 0)
    {
        return status;
    }
    if (a.levels > kMaxLevels) // the level table is staged in a fixed-size shared array
    {
        return forwardNaive(p, stream);
    }
    bool launched = false;
    if (a.halfValue)
    {
        bool const vectorized = a.channels % 8 == 0 && detail::isAligned16(a.value) && detail::isAligned16(a.output);
        launched = detail::dispatch<__half>(a, vectorized, stream);
    }
    else
    {
        bool const vectorized = a.channels % 4 == 0 && detail::isAligned16(a.value) && detail::isAligned16(a.output);
        launched = detail::dispatch<float>(a, vectorized, stream);
    }
    if (!launched)
    {
        return forwardNaive(p, stream);
    }
    return cudaGetLastError() == cudaSuccess ? Status::kSUCCESS : Status::kCUDA_ERROR;
}

} // namespace msda
} // namespace llmformer
