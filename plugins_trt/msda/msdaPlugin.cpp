/*
 * TensorRT 10 IPluginV3 MSDA plugin: shape/type plumbing around llmformer::msda::forward().
 * Method contracts follow the TensorRT 10 C++ API reference (IPluginV3, IPluginV3OneCore, IPluginV3OneBuild,
 * IPluginV3OneRuntime, IPluginCreatorV3One).
 */
#include "msdaPlugin.h"

#include <cstdio>
#include <exception>
#include <new>

#include "msdaKernel.h"

namespace llmformer
{
namespace plugin
{
namespace
{

using nvinfer1::DataType;

void logError(char const* what)
{
    // V3 plugins get no logger from TensorRT outside version-compatible loading; stderr is always there.
    std::fprintf(stderr, "[llmformer %s plugin] error: %s\n", kMSDA_PLUGIN_NAME, what);
}

bool agree(int64_t a, int64_t b)
{
    return a < 0 || b < 0 || a == b; // -1 is an unknown (dynamic) dimension at build time
}

// Ranks and cross-input consistency of (value, spatial_shapes, level_start_index, sampling_locations,
// attention_weights). Unknown dimensions pass; onShapeChange() re-checks with the concrete ones.
bool checkInputDims(nvinfer1::Dims const* d)
{
    nvinfer1::Dims const& value = d[MsdaPlugin::kVALUE];
    nvinfer1::Dims const& shapes = d[MsdaPlugin::kSPATIAL_SHAPES];
    nvinfer1::Dims const& starts = d[MsdaPlugin::kLEVEL_START_INDEX];
    nvinfer1::Dims const& loc = d[MsdaPlugin::kSAMPLING_LOCATIONS];
    nvinfer1::Dims const& weights = d[MsdaPlugin::kATTENTION_WEIGHTS];
    if (value.nbDims != 4 || shapes.nbDims != 2 || starts.nbDims != 1 || loc.nbDims != 6 || weights.nbDims != 5)
    {
        logError("expected ranks value 4, spatial_shapes 2, level_start_index 1, sampling_locations 6, "
                 "attention_weights 5");
        return false;
    }
    bool const ok = agree(shapes.d[1], 2) && agree(loc.d[5], 2)                                  // [H, W], (x, y)
        && agree(value.d[0], loc.d[0]) && agree(value.d[0], weights.d[0])                         // N
        && agree(loc.d[1], weights.d[1])                                                          // Lq
        && agree(value.d[2], loc.d[2]) && agree(value.d[2], weights.d[2])                         // M
        && agree(shapes.d[0], starts.d[0]) && agree(shapes.d[0], loc.d[3]) && agree(shapes.d[0], weights.d[3]) // L
        && agree(loc.d[4], weights.d[4]);                                                         // P
    if (!ok)
    {
        logError("inconsistent input shapes; expected value (N, S, M, D), spatial_shapes (L, 2), level_start_index "
                 "(L), sampling_locations (N, Lq, M, L, P, 2), attention_weights (N, Lq, M, L, P)");
    }
    return ok;
}

} // namespace

MsdaPlugin::MsdaPlugin()
{
    mFieldsToSerialize.nbFields = 0;
    mFieldsToSerialize.fields = nullptr;
}

nvinfer1::IPluginCapability* MsdaPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* MsdaPlugin::clone() noexcept
{
    // No state: a fresh object is a full copy.
    return new (std::nothrow) MsdaPlugin();
}

char const* MsdaPlugin::getPluginName() const noexcept
{
    return kMSDA_PLUGIN_NAME;
}

char const* MsdaPlugin::getPluginVersion() const noexcept
{
    return kMSDA_PLUGIN_VERSION;
}

char const* MsdaPlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t MsdaPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

int32_t MsdaPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != kNB_OUTPUTS || nbInputs != kNB_INPUTS)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[kVALUE];
    return 0;
}

int32_t MsdaPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS
        || inputs[kVALUE].nbDims != 4 || inputs[kSAMPLING_LOCATIONS].nbDims != 6)
    {
        logError("expected 5 inputs with value (N, S, M, D) and sampling_locations (N, Lq, M, L, P, 2), 1 output");
        return -1;
    }
    // (N, Lq, M, D): TensorRT's plugin layout. models/msda.py's (N, Lq, M * D) is a Reshape after the node.
    outputs[0].nbDims = 4;
    outputs[0].d[0] = inputs[kVALUE].d[0];
    outputs[0].d[1] = inputs[kSAMPLING_LOCATIONS].d[1];
    outputs[0].d[2] = inputs[kVALUE].d[2];
    outputs[0].d[3] = inputs[kVALUE].d[3];
    return 0;
}

bool MsdaPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0
        || pos >= kNB_INPUTS + kNB_OUTPUTS)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    DataType const t = desc.type;
    // TensorRT asks position by position, so inOut[i] for i < pos is already decided.
    switch (pos)
    {
    case kVALUE: return t == DataType::kFLOAT || t == DataType::kHALF;
    // INT64 too: onnx-tensorrt casts INT64 plugin inputs to INT32 only for the plugins on its own list.
    case kSPATIAL_SHAPES: return t == DataType::kINT32 || t == DataType::kINT64;
    case kLEVEL_START_INDEX: return t == inOut[kSPATIAL_SHAPES].desc.type;
    // FP32 locations keep sub-pixel precision at any level size; FP16 is accepted for graphs made for
    // TensorRT's own plugin, whose FP16 variant takes half locations.
    case kSAMPLING_LOCATIONS: return t == DataType::kFLOAT || (t == DataType::kHALF && inOut[kVALUE].desc.type == t);
    case kATTENTION_WEIGHTS: return t == inOut[kSAMPLING_LOCATIONS].desc.type;
    default: return t == inOut[kVALUE].desc.type; // the output
    }
}

int32_t MsdaPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        return -1;
    }
    nvinfer1::Dims dims[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        dims[i] = in[i].desc.dims;
    }
    return checkInputDims(dims) ? 0 : -1;
}

size_t MsdaPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

int32_t MsdaPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        return -1;
    }
    nvinfer1::Dims dims[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        dims[i] = in[i].dims;
    }
    return checkInputDims(dims) ? 0 : -1;
}

int32_t MsdaPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    nvinfer1::Dims const& value = inputDesc[kVALUE].dims;
    nvinfer1::Dims const& loc = inputDesc[kSAMPLING_LOCATIONS].dims;
    DataType const valueType = inputDesc[kVALUE].type;
    DataType const locType = inputDesc[kSAMPLING_LOCATIONS].type;
    DataType const indexType = inputDesc[kSPATIAL_SHAPES].type;
    bool const typesOk = (valueType == DataType::kFLOAT || valueType == DataType::kHALF)
        && (locType == DataType::kFLOAT || locType == DataType::kHALF)
        && (indexType == DataType::kINT32 || indexType == DataType::kINT64)
        && inputDesc[kATTENTION_WEIGHTS].type == locType && inputDesc[kLEVEL_START_INDEX].type == indexType
        && outputDesc[0].type == valueType;
    if (!typesOk || value.nbDims != 4 || loc.nbDims != 6)
    {
        logError("unsupported input types or ranks at enqueue");
        return -1;
    }

    msda::Params p;
    p.value = inputs[kVALUE];
    p.spatialShapes = inputs[kSPATIAL_SHAPES];
    p.levelStartIndex = inputs[kLEVEL_START_INDEX];
    p.samplingLocations = inputs[kSAMPLING_LOCATIONS];
    p.attentionWeights = inputs[kATTENTION_WEIGHTS];
    p.output = outputs[0];
    p.batch = value.d[0];
    p.spatialSize = value.d[1];
    p.heads = value.d[2];
    p.channels = value.d[3];
    p.levels = loc.d[3];
    p.queries = loc.d[1];
    p.points = loc.d[4];
    p.valueType = valueType == DataType::kHALF ? msda::DataType::kFLOAT16 : msda::DataType::kFLOAT32;
    p.locationType = locType == DataType::kHALF ? msda::DataType::kFLOAT16 : msda::DataType::kFLOAT32;
    p.indexType = indexType == DataType::kINT64 ? msda::IndexType::kINT64 : msda::IndexType::kINT32;

    msda::Status const status = msda::forward(p, stream);
    if (status != msda::Status::kSUCCESS)
    {
        logError(msda::statusString(status));
        return -1;
    }
    return 0;
}

nvinfer1::IPluginV3* MsdaPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

nvinfer1::PluginFieldCollection const* MsdaPlugin::getFieldsToSerialize() noexcept
{
    return &mFieldsToSerialize;
}

MsdaPluginCreator::MsdaPluginCreator()
{
    mFieldNames.nbFields = 0;
    mFieldNames.fields = nullptr;
}

char const* MsdaPluginCreator::getPluginName() const noexcept
{
    return kMSDA_PLUGIN_NAME;
}

char const* MsdaPluginCreator::getPluginVersion() const noexcept
{
    return kMSDA_PLUGIN_VERSION;
}

char const* MsdaPluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

nvinfer1::PluginFieldCollection const* MsdaPluginCreator::getFieldNames() noexcept
{
    return &mFieldNames;
}

nvinfer1::IPluginV3* MsdaPluginCreator::createPlugin(
    char const* /*name*/, nvinfer1::PluginFieldCollection const* /*fc*/, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    // No attributes: fields that a graph carries anyway (mmdeploy's im2col_step, say) are ignored.
    MsdaPlugin* plugin = new (std::nothrow) MsdaPlugin();
    if (plugin == nullptr)
    {
        logError("out of host memory creating the plugin");
    }
    return plugin;
}

} // namespace plugin
} // namespace llmformer
