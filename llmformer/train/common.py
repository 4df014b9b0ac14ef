"""What the training tasks share: the process group, logging with ETA, the run folder, the learning-rate
schedule, resumable training state in safetensors (no pickles), and the tower's input as the runtime makes it."""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from llmformer.train.config import TrainConfig
from runtime.frames import to_tensor

STATE_FILE = "train_state.safetensors"


class Dist:
    """torchrun's environment: one process = one rank. gloo on CPU, NCCL where there are GPUs."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cpu")
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        if self.world > 1:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average a dict of floats over the ranks (for logging)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay from cfg.lr to cfg.min_lr at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


class Logger:
    """Rank 0 prints `step/steps loss ... lr, s/step, ETA` and appends JSON lines to OUT/log.jsonl."""

    def __init__(self, out: Path, cfg: TrainConfig, main: bool, start_step: int = 0):
        self.out, self.cfg, self.main = out, cfg, main
        self.t0, self.step0 = time.perf_counter(), start_step

    def __call__(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        if not self.main:
            return
        done = step + 1 - self.step0
        per_step = (time.perf_counter() - self.t0) / max(done, 1)
        eta = per_step * (self.cfg.steps - step - 1)
        record = {"kind": kind, "step": step + 1, **values, "s_per_step": round(per_step, 3), "eta_s": round(eta)}
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        print(f"[{kind}] step {step + 1}/{self.cfg.steps} {shown} | {per_step:.2f} s/step, ETA "
              f"{int(eta // 60)}m{int(eta % 60):02d}s", flush=True)


def prepare_run(cfg: TrainConfig, main: bool) -> Path:
    """The run folder, with the config as used written into it (rank 0)."""
    out = Path(cfg.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
    return out


def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, extra: dict | None = None
               ) -> None:
    """Model weights, AdamW moments and the step, in one safetensors file (written atomically)."""
    from safetensors.torch import save_file

    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st:
                for key in ("exp_avg", "exp_avg_sq"):
                    tensors[f"optim.{names[id(p)]}.{key}"] = st[key].detach().contiguous().clone()
                tensors[f"optim.{names[id(p)]}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    meta = {"step": str(step), "extra": json.dumps(extra or {})}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """Restore what save_state wrote; returns (step, extra)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    params = dict(model.named_parameters())
    for name, p in params.items():
        if f"optim.{name}.exp_avg" in tensors:
            optimizer.state[p] = {"exp_avg": tensors[f"optim.{name}.exp_avg"].to(p.device),
                                  "exp_avg_sq": tensors[f"optim.{name}.exp_avg_sq"].to(p.device),
                                  "step": tensors[f"optim.{name}.step"].reshape(()).clone()}
    return int(meta["step"]), json.loads(meta.get("extra", "{}"))


def resume(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, d: Dist) -> int:
    """The step to start from: OUT/train_state.safetensors's (weights and AdamW moments restored), else 0."""
    path = out / STATE_FILE
    if not path.is_file():
        return 0
    start, _ = load_state(path, model, optimizer)
    if d.main:
        print(f"resuming {out} at step {start}", flush=True)
    return start


def rank_batch(dataset, step: int, batch_size: int, d: Dist) -> list:
    """This rank's slice of step `step`'s global batch: the ranks read consecutive, disjoint slices, so no
    item is seen twice per epoch."""
    first = (step * batch_size * d.world + d.rank * batch_size) % len(dataset)
    return [dataset[(first + i) % len(dataset)] for i in range(batch_size)]


def optimizer_step(optimizer: torch.optim.Optimizer, params: list, loss: torch.Tensor, step: int,
                   cfg: TrainConfig) -> None:
    """Backward, clip to cfg.grad_clip, and an AdamW step at the schedule's learning rate for `step`."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    optimizer.step()


def due(step: int, every: int, steps: int) -> bool:
    """Whether step `step` (0-based) ends a period of `every` steps (0: never) or the run."""
    return bool(every and (step + 1) % every == 0) or step + 1 == steps


def fused_attention(model: nn.Module) -> nn.Module:
    """Train a transformers model with PyTorch's fused attention (`sdpa`) instead of the eager attention it is
    loaded and exported with (llmformer.vision_tower: plain MatMul/Softmax for every opset). The same function within
    float rounding (7e-7 on the demo tower's features) and a 1.4x faster demo tower step on this CPU (89 -> 64 ms, 16
    frames, one thread); the checkpoints it writes load eager again. Returns `model`."""
    model.set_attn_implementation("sdpa")
    return model


def start_tower(cfg: TrainConfig, preset):
    """The run's starting tower: `cfg.vision_tower` (a vision_tower.safetensors) or the preset's random one, set to
    train with fused attention."""
    from llmformer.checkpoint import load_component
    from llmformer.vision_tower import VisionTower, build_vision_model

    if not cfg.vision_tower:
        tower = VisionTower(build_vision_model(preset.vision_tower), preset.vision_tower.feature_layers)
    else:
        tower = load_component(cfg.vision_tower)
        if not isinstance(tower, VisionTower):
            raise ValueError(f"{cfg.vision_tower} does not hold a vision tower")
    fused_attention(tower.model)
    return tower


def train_tower_through(model: nn.Module, feature_layer: int, train: bool = True) -> None:
    """Mark trainable (`train`) what a read of `hidden_states[feature_layer]` of this CLIP/SigLIP vision model
    reaches: the embeddings and the blocks up to that layer (hidden_states[k] follows block k). The later blocks
    and the pooled output's norm get no gradient from it, and DDP wants every trained parameter used."""
    layers = model.config.num_hidden_layers
    reached = feature_layer if feature_layer >= 0 else layers + 1 + feature_layer
    for name, p in model.named_parameters():
        block = int(name.split("encoder.layers.")[1].split(".")[0]) if "encoder.layers." in name else -1
        p.requires_grad_(train and block < reached and "post_layernorm" not in name)


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def tower_pixels(images: list[np.ndarray], preset, size: int | None = None) -> torch.Tensor:
    """The runtime's tower preprocessing (runtime.frames.to_tensor): what every stage's tower reads; `size` other
    than the tower's own only for the tower stage's low-resolution steps."""
    v = preset.vision_tower
    size = size or v.image_size
    return torch.from_numpy(np.concatenate([to_tensor(im, size, v.mean, v.std) for im in images]))
