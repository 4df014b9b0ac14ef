"""One `Engine` interface (named numpy inputs -> named numpy outputs) over every backend.

Engines know nothing about captions or masks: they run a graph described by `TensorSpec`s.
"""
from engines.base import Engine, EngineError, TensorSpec, available_backends, create_engine

__all__ = ["Engine", "EngineError", "TensorSpec", "available_backends", "create_engine"]
