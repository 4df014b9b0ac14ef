"""The PyTorch engine: the `llmformer/` code itself, the reference every other backend is compared with."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engines.base import Engine
from engines.contract import ComponentEntry, TensorSpec
from engines.errors import EngineError


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, name: str, module: torch.nn.Module, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 device: str | None = None, threads: int | None = None):
        super().__init__(name, inputs, outputs)
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.eval().to(self.device)
        self._msda = None
        if self.device.type == "cuda":
            # On a GPU every MSDA call runs the project's CUDA kernel where it can be built.
            from plugins_trt import msda_op

            if msda_op.is_available():
                self._msda = msda_op.use_cuda_kernel

    @classmethod
    def from_component(cls, name: str, folder: Path, component: ComponentEntry, device: str | None = None,
                       threads: int | None = None) -> "TorchEngine":
        """The options are engines.base.ENGINE_OPTIONS["torch"]; create_engine() refuses any other."""
        from llmformer.checkpoint import CheckpointError, load_component

        source = component.torch
        try:
            if source is not None:  # one part of a transformers LLaVA checkpoint saved beside the graphs
                from llmformer.captioner import captioner_part

                module = captioner_part(Path(folder) / source.captioner, source.part, source.segmenter_layers)
            elif component.weights is not None:
                module = load_component(Path(folder) / component.weights.file)
            else:
                raise EngineError(f"{name}: this build has no PyTorch weights; rebuild with build_engines.py")
        except (CheckpointError, ValueError, OSError) as exc:
            raise EngineError(f"{name}: {exc}") from exc
        return cls(name, module, component.inputs, component.outputs, device=device, threads=threads)

    def close(self) -> None:
        self.module = None
        super().close()

    @torch.inference_mode()
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self.input_names]
        if self._msda is not None:
            with self._msda():
                out = self.module(*args)
        else:
            out = self.module(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {n: t.detach().float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
                for n, t in zip(self.output_names, out)}
