"""llmformer-edge runtime: `runtime.load(folder).segment(frame)`.

On the ONNX Runtime and TensorRT paths this package imports neither torch nor transformers.
"""
from runtime.captioning import CaptionPolicy
from runtime.frames import FrameError
from runtime.pipeline import (ImageFeatures, PriorEmbeddings, Runtime, RuntimeInputError, Segmentation, load)

__all__ = ["CaptionPolicy", "FrameError", "ImageFeatures", "PriorEmbeddings", "Runtime", "RuntimeInputError", "Segmentation", "load"]
