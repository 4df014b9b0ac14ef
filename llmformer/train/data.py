"""Datasets for training: generated synthetic scenes or a COCO-Stuff folder, behind one item interface
(`.image` RGB uint8, `.labels` index into `.classes` with 255 ignored, `.caption`, `.canonical_caption`)."""
from __future__ import annotations

from pathlib import Path

from llmformer.train.config import DatasetConfig


def open_split(cfg: DatasetConfig, which: str, size: int):
    """`which` is "train" or "val"; the split names come from the config."""
    split = cfg.train_split if which == "train" else cfg.val_split
    if cfg.kind == "synthetic":
        from llmformer.data.synthetic import SyntheticScenes

        length = cfg.train_length if which == "train" else cfg.val_length
        return SyntheticScenes(split, length, size=size, seed=cfg.seed)
    from llmformer.data.cocostuff import CocoStuff

    return CocoStuff(Path(cfg.root), split, size=size)
