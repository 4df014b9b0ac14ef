/*
 * Multi-scale deformable attention (MSDA): host API of the CUDA kernels.
 *
 * TensorRT-free and torch-free on purpose: the TensorRT plugin (msdaPlugin.cpp), the PyTorch binding
 * (torch_binding.cpp) and the standalone test (tests/msdaKernelTest.cu) all call these two functions.
 *
 * Op contract (the same as models/msda.py and TensorRT's MultiscaleDeformableAttnPlugin_TRT):
 *   value               (N, S, M, D)        FP32 or FP16
 *   spatial_shapes      (L, 2)              INT32 or INT64, [H_l, W_l]
 *   level_start_index   (L)                 same type as spatial_shapes
 *   sampling_locations  (N, Lq, M, L, P, 2) normalized (x, y); FP32, or FP16 when value is FP16
 *   attention_weights   (N, Lq, M, L, P)    same type as sampling_locations
 *   -> output           (N, Lq, M, D)       same type as value
 * Bilinear sampling at pixel (x * W - 0.5, y * H - 0.5); each corner outside the map contributes zero.
 * Coordinates, bilinear weights and accumulation are FP32 whatever the storage type.
 */
#ifndef LLMFORMER_MSDA_KERNEL_H
#define LLMFORMER_MSDA_KERNEL_H

#include <cstdint>

#include <cuda_runtime_api.h>

namespace llmformer
{
namespace msda
{

enum class DataType : int32_t
{
    kFLOAT32 = 0,
    kFLOAT16 = 1,
};

enum class IndexType : int32_t
{
    kINT32 = 0,
    kINT64 = 1,
};

enum class Status : int32_t
{
    kSUCCESS = 0,
    kINVALID_ARGUMENT = 1, // null pointer, non-positive M/D/L/P, unsupported dtype combination
    kTOO_LARGE = 2,        // an element count does not fit the kernels' int32 indexing
    kCUDA_ERROR = 3,       // the launch failed (cudaGetLastError)
};

// Everything the kernels need. Pointers are device pointers to dense, row-major tensors.
struct Params
{
    void const* value{nullptr};
    void const* spatialShapes{nullptr};
    void const* levelStartIndex{nullptr};
    void const* samplingLocations{nullptr};
    void const* attentionWeights{nullptr};
    void* output{nullptr};

    int64_t batch{0};       // N
    int64_t spatialSize{0}; // S
    int64_t heads{0};       // M
    int64_t channels{0};    // D
    int64_t levels{0};      // L
    int64_t queries{0};     // Lq
    int64_t points{0};      // P

    DataType valueType{DataType::kFLOAT32};    // value and output
    DataType locationType{DataType::kFLOAT32}; // sampling_locations and attention_weights
    IndexType indexType{IndexType::kINT32};    // spatial_shapes and level_start_index
};

// Largest element count of any tensor the kernels index with int32.
constexpr int64_t kMaxElements = 2147483647LL;

// Optimized kernel: several channels per thread with 16-byte loads, locations and weights staged once per
// (query, head) group, templated for the common (L, P, D). Falls back to forwardNaive only for shapes it
// cannot stage (more than kMaxLevels levels or L * P too large for shared memory).
Status forward(Params const& params, cudaStream_t stream);

// Baseline: one thread per (batch, query, head, channel), the classic Deformable DETR structure.
Status forwardNaive(Params const& params, cudaStream_t stream);

// Human-readable status for error messages.
char const* statusString(Status status);

// Checks sizes, pointers and the int32 guard. forward() and forwardNaive() run it through the one helper that
// also fills their kernel arguments (detail::makeKernelArgs, msdaKernel.cuh), so both accept the same inputs.
Status validate(Params const& params);

constexpr int32_t kMaxLevels = 16;

} // namespace msda
} // namespace llmformer

#endif // LLMFORMER_MSDA_KERNEL_H
