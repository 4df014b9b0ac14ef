"""A training run's configuration: one JSON file per run, copied into the run folder with the values
actually used, so a run is reproducible from its folder alone.

    {"task": "segmenter", "preset": "demo", "out": "runs/demo_segmenter", "steps": 3000, ...}

Unknown keys are an error (a typo must not silently fall back to a default)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("tower", "segmenter", "captioner")


@dataclass
class DatasetConfig:
    kind: str = "synthetic"          # "synthetic" (llmformer.data.synthetic, generated) or "cocostuff" (a local folder)
    root: str | None = None          # cocostuff: the folder in COCO-Stuff's layout (see data/cocostuff.py)
    train_split: str = "train"       # synthetic: train; cocostuff: train2017
    val_split: str = "val"           # synthetic: val; cocostuff: val2017
    train_length: int = 1_000_000    # synthetic: scenes in the train stream (generated on the fly)
    val_length: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("synthetic", "cocostuff"):
            raise ValueError(f"dataset.kind must be 'synthetic' or 'cocostuff', got {self.kind!r}")
        if self.kind == "cocostuff" and not self.root:
            raise ValueError("dataset.kind 'cocostuff' needs dataset.root: the COCO-Stuff folder")


@dataclass
class TrainConfig:
    task: str = "segmenter"
    preset: str = "demo"
    out: str = "runs/demo"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    steps: int = 1000
    batch_size: int = 8              # per process
    lr: float = 1e-3
    min_lr: float = 1e-5             # cosine decay floor
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    threads: int = 1                 # torch intra-op threads per process
    seed: int = 0
    log_every: int = 20
    eval_every: int = 500            # 0: only at the end
    ckpt_every: int = 250
    # segmenter
    train_tower: bool = True         # train the tower with this run's loss (captioner: the blocks it reaches)
    vision_tower: str | None = None  # start from this vision_tower.safetensors (else the preset's random tower)
    segmenter_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"relation_attention": false}
    loss: dict[str, float] = field(default_factory=dict)  # segmenter: train.losses.LossWeights; tower: mix, objects
    low_res_size: int = 0            # tower: the first low_res_steps steps on frames of this many pixels (0: off)
    low_res_steps: int = 0
    caption_dropout: float = 0.0     # segmenter: fraction of scenes trained without a caption (null priors)
    prior_swap: float = 0.0          # segmenter: chance that each caption object is renamed to another class
    prior_drop: float = 0.0          # segmenter: chance that each caption object is left out (a kind not named)
    # captioner
    captioner_text: dict[str, Any] = field(default_factory=dict)        # PhiConfig overrides of the tiny LM
    tokenizer_vocab: int = 512
    name_weight: float = 1.0         # loss weight of the answer tokens that spell a class name (1: plain cross-entropy)
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if isinstance(self.dataset, dict):
            self.dataset = _build(DatasetConfig, self.dataset, "dataset")
        for name in ("steps", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (self.low_res_size > 0) != (self.low_res_steps > 0) or min(self.low_res_size, self.low_res_steps) < 0:
            raise ValueError(f"low_res_size and low_res_steps go together, both > 0 or both 0; got "
                             f"{self.low_res_size} and {self.low_res_steps}")
        if self.low_res_steps and self.task != "tower":
            raise ValueError(f"low_res_steps is for the tower task, not {self.task!r}: the captioner and segmenter "
                             f"read the tower at its own size")
        if self.name_weight <= 0:
            raise ValueError(f"name_weight must be > 0, got {self.name_weight}")
        for name in ("caption_dropout", "prior_swap", "prior_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the training config {path}: {exc}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return _build(cls, values, str(path))


def _build(kind, values: dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    return kind(**values)
