"""llmformer-edge runtime: `runtime.load(folder).segment(frame)`, `runtime.visualize(frame, segmentation)`.

On the ONNX Runtime and TensorRT paths this package imports neither torch nor transformers.
"""
from runtime.captioning import CaptionPolicy
from runtime.frames import FrameError, to_rgb
from runtime.pipeline import (ImageFeatures, PriorEmbeddings, Runtime, RuntimeInputError, Segmentation, load)
# The function shadows the submodule's attribute; `from runtime.visualize import palette` still works.
from runtime.visualize import visualize

__all__ = ["CaptionPolicy", "FrameError", "ImageFeatures", "PriorEmbeddings", "Runtime", "RuntimeInputError",
           "Segmentation", "load", "to_rgb", "visualize"]
