/*
 * PyTorch binding of the MSDA CUDA kernels (the same msdaKernel.cu the TensorRT plugin runs).
 * Registered as torch.ops.llmformer_cuda.ms_deform_attn; built and loaded by plugins_trt/msda_op.py.
 *
 *   ms_deform_attn(value (N, S, M, D), spatial_shapes (L, 2), level_start_index (L),
 *                  sampling_locations (N, Lq, M, L, P, 2), attention_weights (N, Lq, M, L, P),
 *                  bool naive=False) -> (N, Lq, M, D)
 */
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "msdaKernel.h"

namespace
{

using llmformer::msda::DataType;
using llmformer::msda::IndexType;

DataType floatType(at::Tensor const& t, char const* name)
{
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf, "ms_deform_attn: ", name,
        " must be float32 or float16, got ", t.scalar_type(), " (cast it, e.g. .float())");
    return t.scalar_type() == at::kHalf ? DataType::kFLOAT16 : DataType::kFLOAT32;
}

at::Tensor msdaForward(at::Tensor const& value, at::Tensor const& spatialShapes, at::Tensor const& levelStartIndex,
    at::Tensor const& samplingLocations, at::Tensor const& attentionWeights, bool naive)
{
    TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (N, S, M, D), got ", value.sizes());
    TORCH_CHECK(samplingLocations.dim() == 6 && samplingLocations.size(5) == 2,
        "ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2), got ", samplingLocations.sizes());
    int64_t const N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
    int64_t const Lq = samplingLocations.size(1), L = samplingLocations.size(3), P = samplingLocations.size(4);
    TORCH_CHECK(samplingLocations.size(0) == N && samplingLocations.size(2) == M,
        "ms_deform_attn: sampling_locations ", samplingLocations.sizes(), " does not match value ", value.sizes());
    TORCH_CHECK(attentionWeights.sizes() == at::IntArrayRef({N, Lq, M, L, P}),
        "ms_deform_attn: attention_weights must be (N, Lq, M, L, P) = ", at::IntArrayRef({N, Lq, M, L, P}), ", got ",
        attentionWeights.sizes());
    TORCH_CHECK(spatialShapes.dim() == 2 && spatialShapes.size(0) == L && spatialShapes.size(1) == 2,
        "ms_deform_attn: spatial_shapes must be (L, 2) with L = ", L, ", got ", spatialShapes.sizes());
    TORCH_CHECK(levelStartIndex.dim() == 1 && levelStartIndex.size(0) == L,
        "ms_deform_attn: level_start_index must be (L,) with L = ", L, ", got ", levelStartIndex.sizes());
    TORCH_CHECK(spatialShapes.scalar_type() == levelStartIndex.scalar_type()
            && (spatialShapes.scalar_type() == at::kInt || spatialShapes.scalar_type() == at::kLong),
        "ms_deform_attn: spatial_shapes and level_start_index must both be int32 or both int64, got ",
        spatialShapes.scalar_type(), " and ", levelStartIndex.scalar_type());
    TORCH_CHECK(samplingLocations.scalar_type() == attentionWeights.scalar_type(),
        "ms_deform_attn: sampling_locations and attention_weights must share a dtype, got ",
        samplingLocations.scalar_type(), " and ", attentionWeights.scalar_type());
    for (at::Tensor const* t : {&spatialShapes, &levelStartIndex, &samplingLocations, &attentionWeights})
    {
        TORCH_CHECK(t->device() == value.device(), "ms_deform_attn: all inputs must be on ", value.device(),
            ", one is on ", t->device());
    }
    TORCH_CHECK(value.is_cuda(), "ms_deform_attn: the CUDA kernel needs CUDA tensors; use models.msda.ms_deform_attn "
                                 "on the CPU");

    c10::cuda::CUDAGuard const guard(value.device());
    at::Tensor const v = value.contiguous();
    at::Tensor const shapes = spatialShapes.contiguous();
    at::Tensor const starts = levelStartIndex.contiguous();
    at::Tensor const loc = samplingLocations.contiguous();
    at::Tensor const w = attentionWeights.contiguous();
    at::Tensor out = at::empty({N, Lq, M, D}, v.options());

    llmformer::msda::Params p;
    p.value = v.data_ptr();
    p.spatialShapes = shapes.data_ptr();
    p.levelStartIndex = starts.data_ptr();
    p.samplingLocations = loc.data_ptr();
    p.attentionWeights = w.data_ptr();
    p.output = out.data_ptr();
    p.batch = N;
    p.spatialSize = S;
    p.heads = M;
    p.channels = D;
    p.levels = L;
    p.queries = Lq;
    p.points = P;
    p.valueType = floatType(v, "value");
    p.locationType = floatType(loc, "sampling_locations");
    p.indexType = shapes.scalar_type() == at::kLong ? IndexType::kINT64 : IndexType::kINT32;

    cudaStream_t const stream = c10::cuda::getCurrentCUDAStream(value.device().index()).stream();
    llmformer::msda::Status const status
        = naive ? llmformer::msda::forwardNaive(p, stream) : llmformer::msda::forward(p, stream);
    TORCH_CHECK(status == llmformer::msda::Status::kSUCCESS, "ms_deform_attn CUDA kernel: ",
        llmformer::msda::statusString(status));
    return out;
}

} // namespace

TORCH_LIBRARY(llmformer_cuda, m)
{
    m.def(
        "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
        "Tensor attention_weights, bool naive=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmformer_cuda, CUDA, m)
{
    m.impl("ms_deform_attn", &msdaForward);
}
