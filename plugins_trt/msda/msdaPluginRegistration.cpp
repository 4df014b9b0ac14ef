/*
 * How TensorRT finds the creator. Two flavours of the same library, chosen at build time:
 *
 * - static (libllmformer_plugins.so, the default): the creator registers itself in the global plugin registry
 *   when the library is loaded: dlopen / ctypes.CDLL, `trtexec --staticPlugins=` (or the older `--plugins=`).
 * - dynamic (libllmformer_plugins_dynamic.so, LLMFORMER_DYNAMIC_PLUGIN_REGISTRATION): nothing happens at load;
 *   IPluginRegistry::loadLibrary() and `trtexec --dynamicPlugins=` call getCreators() instead, which is also
 *   what lets a version-compatible engine embed the library (--setPluginsToSerialize).
 * One library must not do both: loadLibrary() fails when a creator it is handed is already registered.
 */
#include <cstdint>
#include <mutex>

#include "msdaPlugin.h"

#define LLMFORMER_PLUGIN_API extern "C" __attribute__((visibility("default")))

namespace
{

llmformer::plugin::MsdaPluginCreator& msdaCreator()
{
    static llmformer::plugin::MsdaPluginCreator creator;
    return creator;
}

} // namespace

#ifndef LLMFORMER_DYNAMIC_PLUGIN_REGISTRATION

namespace
{

bool registerCreators()
{
    static std::mutex mutex;
    static bool registered = false;
    std::lock_guard<std::mutex> lock(mutex);
    if (!registered)
    {
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        registered = registry != nullptr
            && (registry->getCreator(llmformer::plugin::kMSDA_PLUGIN_NAME, llmformer::plugin::kMSDA_PLUGIN_VERSION,
                    llmformer::plugin::kPLUGIN_NAMESPACE)
                    != nullptr
                || registry->registerCreator(msdaCreator(), llmformer::plugin::kPLUGIN_NAMESPACE));
    }
    return registered;
}

// Runs when the library is loaded.
bool const gRegisteredAtLoad = registerCreators();

} // namespace

// For callers that load the library with ctypes/dlopen and want a yes/no: true when the llmformer creators are in
// TensorRT's registry (registering them now if loading could not).
LLMFORMER_PLUGIN_API bool initLlmformerPlugins()
{
    return gRegisteredAtLoad || registerCreators();
}

#else // LLMFORMER_DYNAMIC_PLUGIN_REGISTRATION

LLMFORMER_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* /*finder*/)
{
    // Errors go to stderr (see msdaPlugin.cpp); nothing to keep.
}

LLMFORMER_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&msdaCreator()};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

#endif // LLMFORMER_DYNAMIC_PLUGIN_REGISTRATION
