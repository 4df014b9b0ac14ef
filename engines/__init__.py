"""One `Engine` interface (named numpy inputs -> named numpy outputs) over every backend.

Engines know nothing about captions or masks: they run a graph described by `TensorSpec`s. The artifact
contract (tensor names, `TensorSpec`, the typed `Manifest`) is `engines.contract`; the error root is
`engines.errors.LLMFormerError`. This package imports no other project package (the PyTorch engine loads
`llmformer` modules, lazily, when it is asked for).
"""
from engines.base import Engine, available_backends, create_engine
from engines.contract import ComponentEntry, Manifest, TensorSpec, read_manifest, write_manifest
from engines.errors import EngineError, LLMFormerError, ManifestError

__all__ = ["ComponentEntry", "Engine", "EngineError", "LLMFormerError", "Manifest", "ManifestError", "TensorSpec",
           "available_backends", "create_engine", "read_manifest", "write_manifest"]
