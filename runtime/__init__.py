"""llmformer-edge runtime: `runtime.load(folder).segment(frame)`, `runtime.visualize(frame, segmentation)`.

On the ONNX Runtime and TensorRT paths this package imports neither torch nor transformers nor `llmformer`:
it reads an artifact folder (engines.contract) and runs it through engines. Every error it raises is a
`LLMFormerError`, and also the builtin a caller would catch without knowing this project (ValueError, ...).
"""
from engines.errors import EngineError, LLMFormerError, ManifestError
from runtime.camera import SourceError
from runtime.captioning import CaptionPolicy, CaptionTimeout
from runtime.decode import Caption, CaptionError
from runtime.frames import FrameError, to_rgb
from runtime.nlp import ParserUnavailableError
from runtime.pipeline import ImageFeatures, PriorEmbeddings, Runtime, RuntimeInputError, Segmentation, load
from runtime.priors import PriorObject, Priors, Relation
# The function shadows the submodule's attribute; `from runtime.visualize import palette` still works.
from runtime.visualize import visualize

__all__ = ["Caption", "CaptionError", "CaptionPolicy", "CaptionTimeout", "EngineError", "FrameError", "ImageFeatures",
           "LLMFormerError", "ManifestError", "ParserUnavailableError", "PriorEmbeddings", "PriorObject", "Priors",
           "Relation", "Runtime", "RuntimeInputError", "Segmentation", "SourceError", "load", "to_rgb", "visualize"]
