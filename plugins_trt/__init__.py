"""LLMFormer's CUDA kernels and TensorRT plugins (see plugins_trt/msda/README.md).

plugins_trt.msda_op is the PyTorch binding of the MSDA kernel; the TensorRT plugin library is built with
CMake (plugins_trt/CMakeLists.txt). Nothing here is imported by the TensorRT/ONNX Runtime path.
"""
