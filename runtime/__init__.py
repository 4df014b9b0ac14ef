"""llmformer-edge runtime: `runtime.load(folder).segment(frame)`, `runtime.visualize(frame, segmentation)`.

On the ONNX Runtime and TensorRT paths this package imports neither torch nor transformers nor `llmformer`:
it reads an artifact folder (engines.contract) and runs it through engines. Every error it raises is a
`LLMFormerError`, and also the builtin a caller would catch without knowing this project (ValueError, ...).
"""
from engines.errors import EngineError, LLMFormerError, ManifestError, OptionError
from runtime.captioning import CaptionPolicy, CaptionPolicyError, CaptionTimeout
from runtime.decode import Caption, CaptionError
from runtime.frames import FrameError, to_rgb
from runtime.nlp import ParserUnavailableError
from runtime.pipeline import (ImageFeatures, InputTypeError, PriorEmbeddings, Runtime, RuntimeInputError, Segmentation,
                              load)
from runtime.priors import PriorObject, Priors, Relation
# The function shadows the submodule's attribute; `from runtime.visualize import palette` still works.
from runtime.visualize import visualize


def __getattr__(name: str):
    # runtime.camera is imported on first use, not here: `python -m runtime.camera` must not find it in
    # sys.modules already (runpy warns), and importing the runtime should not import the camera loop.
    if name == "SourceError":
        from runtime.camera import SourceError

        return SourceError
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")

__all__ = ["Caption", "CaptionError", "CaptionPolicy", "CaptionPolicyError", "CaptionTimeout", "EngineError", "FrameError",
           "ImageFeatures", "InputTypeError", "LLMFormerError", "ManifestError", "OptionError", "ParserUnavailableError",
           "PriorEmbeddings", "PriorObject", "Priors", "Relation", "Runtime", "RuntimeInputError", "Segmentation",
           "SourceError", "load", "to_rgb", "visualize"]
