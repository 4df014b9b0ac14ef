/*
 * TensorRT 10 IPluginV3 wrapper of the LLMFormer MSDA kernel (msdaKernel.h).
 *
 * Same I/O as TensorRT's open-source MultiscaleDeformableAttnPlugin_TRT, registered under this project's
 * namespace so that it never collides with libnvinfer_plugin's creator:
 *   name "MultiscaleDeformableAttnPlugin_TRT", version "1", namespace "llmformer".
 * No attributes. ONNX nodes select it with plugin_version="1" and plugin_namespace="llmformer".
 */
#ifndef LLMFORMER_MSDA_PLUGIN_H
#define LLMFORMER_MSDA_PLUGIN_H

#include <cstdint>

#include <cuda_runtime_api.h>

#include <NvInferRuntime.h>

namespace llmformer
{
namespace plugin
{

constexpr char const* kMSDA_PLUGIN_NAME = "MultiscaleDeformableAttnPlugin_TRT";
constexpr char const* kMSDA_PLUGIN_VERSION = "1";
constexpr char const* kPLUGIN_NAMESPACE = "llmformer";

class MsdaPlugin : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    // Input positions, as in TensorRT's plugin and models/msda.py.
    static constexpr int32_t kVALUE = 0;
    static constexpr int32_t kSPATIAL_SHAPES = 1;
    static constexpr int32_t kLEVEL_START_INDEX = 2;
    static constexpr int32_t kSAMPLING_LOCATIONS = 3;
    static constexpr int32_t kATTENTION_WEIGHTS = 4;
    static constexpr int32_t kNB_INPUTS = 5;
    static constexpr int32_t kNB_OUTPUTS = 1;

    MsdaPlugin();
    MsdaPlugin(MsdaPlugin const&) = delete;
    MsdaPlugin& operator=(MsdaPlugin const&) = delete;
    ~MsdaPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    // The plugin has no attributes, so nothing is serialized; the collection still has to exist.
    nvinfer1::PluginFieldCollection mFieldsToSerialize{};
};

class MsdaPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    MsdaPluginCreator();
    ~MsdaPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    nvinfer1::PluginFieldCollection mFieldNames{};
};

} // namespace plugin
} // namespace llmformer

#endif // LLMFORMER_MSDA_PLUGIN_H
