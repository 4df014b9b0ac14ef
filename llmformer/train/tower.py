"""Teach the demo's vision tower what is where before the captioner and the segmenter use it.

    torchrun --nproc-per-node 2 -m llmformer.train llmformer/train/configs/demo_tower.json

Why a stage of its own (benchmarks/README.md, issue 15): the segmenter is told each object's name by the
caption's priors and the captioner can lower its loss through colours and backgrounds first, so neither pushes the
tower to recognise a shape by sight, and a captioner on such a tower names the wrong shapes. Here each tower token
at LLaVA's feature layer (the tokens the captioner's projector reads) predicts, through a linear head used only in
training, the class mix of its cell of the label map: soft cross-entropy over every class (`loss.mix`) plus the
same over the object classes alone on cells that objects cover (`loss.objects`; objects = the classes that are not
the synthetic scenes' backgrounds), since backgrounds fill most cells and are learned first. On synthetic scenes
the same head can also predict the colour and pattern mix of the objects drawn in each cell (`loss.color`,
`loss.pattern`, off by default): the class targets teach the tower to ignore colour, which a captioner has to say.
Measured (benchmarks/README.md): the captioner then gets colours right far more often, its object F1 does not rise.
On the demo tower (val, 100 scenes) the head is at chance for the first ~1,500 steps x 32 scenes whatever the
learning rate or token grid, then rising; the shipped schedule, 20,000 steps of the 96-d tower on 168 px (12 x 12
tokens), ends at 90% object accuracy, scene F1 78 and 65% of small objects named (`evaluate`), where 24,000 steps of
the 64-d tower (in 14% less time) ended at 87%, 75 and 70%, and 16,000 at 84%, 70 and 56% (on 112 px: 79%, 64, 42%).
The targets are counted with one bincount per frame (`cell_mix`): the one-hot pooling it replaces cost more than the
tower's own step.

`low_res_size` / `low_res_steps` (off by default): the first steps on smaller frames (112 px: 8 x 8 tokens, a step
0.63 of the time with its data), the position table interpolated to their grid, then the tower's own size to the end
(progressive resizing). On the demo tower the loss per step on 112 px keeps pace with the loss on 168 px, and after
the switch the run is back level within ~1,000 steps (benchmarks/README.md, issue 15).

Writes OUT/vision_tower.safetensors (the project's checkpoint format: what the captioner and segmenter runs take
as `vision_tower`), OUT/train_state.safetensors (resume), OUT/log.jsonl, OUT/metrics.json (val, see `evaluate`:
shape accuracy on cells one object covers over 30%, and the scene-level precision / recall / F1 of the objects the
head names).
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llmformer.captioner import LLAVA_FEATURE_LAYER
from llmformer.checkpoint import save_component
from llmformer.data.synthetic import BACKGROUND_NAMES, COLORS, IGNORE, PATTERNS
from llmformer.presets import get_preset
from llmformer.train.common import (STATE_FILE, Dist, Logger, due, optimizer_step, prepare_run, rank_batch, resume,
                                    save_state, seed_everything, set_threads, start_tower, tower_pixels,
                                    train_tower_through)
from llmformer.train.config import TrainConfig
from llmformer.train.data import open_split
from llmformer.vision_tower import VisionTower

ATTRIBUTES = {"color": tuple(COLORS), "pattern": PATTERNS}   # what the color / pattern terms' targets name
LOSS_TERMS = {"mix": 1.0, "objects": 1.0, **dict.fromkeys(ATTRIBUTES, 0.0)}
COVERED = 0.1        # a cell counts for the objects term where objects cover more than this
SCORED = 0.3         # ... and for the val accuracy where one object covers more than this
PRESENT = 0.2        # a val cell names an object where the object classes hold more than this of its probability


class TowerWithPatchHead(nn.Module):
    """The tower and a linear head on its tokens at LLaVA's feature layer (CLS dropped where there is one)."""

    def __init__(self, tower: VisionTower, outputs: int, has_cls: bool):
        super().__init__()
        self.tower, self.has_cls = tower, has_cls
        model = tower.model
        self.head = nn.Linear(model.config.hidden_size, outputs)
        train_tower_through(model, LLAVA_FEATURE_LAYER)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, (S / patch)^2, outputs); frames smaller than the tower's own size read the position
        table interpolated to their grid (transformers' `interpolate_pos_encoding`), so it is trained through."""
        smaller = pixels.shape[-1] != self.tower.model.config.image_size
        hidden = self.tower.model(pixel_values=pixels, output_hidden_states=True,
                                  interpolate_pos_encoding=smaller).hidden_states[LLAVA_FEATURE_LAYER]
        return self.head(hidden[:, 1:] if self.has_cls else hidden)


def cell_mix(labels: list[np.ndarray], grid: int, classes: int) -> torch.Tensor:
    """(B, grid * grid, classes): each tower cell's class mix in the label map (rows sum to 1 over labelled
    pixels; 255 = unlabelled counts for nothing). Frames are square and stretched to the tower, so cell (i, j)
    of the grid holds label rows [i H / grid, (i + 1) H / grid) and the same columns."""
    out = np.zeros((len(labels), grid * grid, classes), np.float32)
    for b, lab in enumerate(labels):
        lab = np.asarray(lab)
        h, w = lab.shape
        cell = (np.arange(h) * grid // h)[:, None] * grid + (np.arange(w) * grid // w)[None, :]
        keep = lab < classes
        counts = np.bincount(cell[keep] * classes + lab[keep], minlength=grid * grid * classes)
        out[b] = counts.reshape(grid * grid, classes)
    out /= np.maximum(out.sum(-1, keepdims=True), 1e-6)
    return torch.from_numpy(out)


def attribute_mix(items: list, grid: int, attribute: str) -> torch.Tensor:
    """(B, grid * grid, len(ATTRIBUTES[attribute])): each tower cell's mix of the colors (or patterns) of the
    synthetic scene objects drawn in it, from the scene's instance map (rows sum to 1 over object pixels; 0 where
    no object is drawn)."""
    values = ATTRIBUTES[attribute]
    maps = []
    for it in items:
        lut = np.array([IGNORE] + [values.index(getattr(o, attribute)) for o in it.objects], np.uint8)
        maps.append(lut[it.instances])
    return cell_mix(maps, grid, len(values))


def split_head(logits: torch.Tensor, classes: int, attributes: tuple[str, ...] = ()
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The head's outputs: the class logits first, then each trained attribute's (in ATTRIBUTES order)."""
    sizes = [classes] + [len(ATTRIBUTES[name]) for name in attributes]
    first, *rest = logits.split(sizes, dim=-1)
    return first, dict(zip(attributes, rest))


def patch_loss(logits: torch.Tensor, mix: torch.Tensor, objects: torch.Tensor, weights: dict[str, float],
               attributes: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Soft cross-entropy of the class logits against the cell mixes, over all classes and over the object classes
    alone; for each of `attributes` ({"color": (its logits, its attribute_mix targets), ...}) the same on the cells
    objects cover."""
    mix_term = -(mix * logits.log_softmax(-1)).sum(-1).mean()
    covered = mix[..., objects].sum(-1)
    keep = covered > COVERED
    terms = {"mix": mix_term}
    if not keep.any():                  # no object in the batch: the object terms count for nothing
        terms |= {name: logits.sum() * 0.0 for name in ["objects", *(attributes or {})]}
    else:
        target = mix[..., objects][keep] / covered[keep, None]
        terms["objects"] = -(target * logits[..., objects][keep].log_softmax(-1)).sum(-1).mean()
        for name, (part, target) in (attributes or {}).items():
            terms[name] = -(target[keep] * part[keep].log_softmax(-1)).sum(-1).mean()
    loss = sum(weights[k] * v for k, v in terms.items())
    return loss, {k: float(v.detach()) for k, v in terms.items()}


def named_objects(logits: torch.Tensor, objects: torch.Tensor) -> list[set[int]]:
    """The object classes the head names in each frame of (B, cells, classes) logits: a cell names the object
    class it ranks first among the object classes when those hold over PRESENT of its probability (a small
    object rarely wins a cell's argmax against the background around it)."""
    first = torch.where(objects, logits, torch.finfo(logits.dtype).min).argmax(-1)
    named = torch.where(logits.softmax(-1)[..., objects].sum(-1) > PRESENT, first, -1)
    return [{c for c in cells.tolist() if c >= 0} for cells in named]


@torch.no_grad()
def evaluate(model: TowerWithPatchHead, preset, scenes, classes: int, objects: torch.Tensor,
             attributes: tuple[str, ...] = ()) -> dict[str, float]:
    """What the tower's tokens tell apart, on the val scenes:
    - object accuracy on the cells one object class covers over SCORED (argmax over the object classes);
    - which objects a scene holds, read off the head alone (`named_objects`): scene precision / recall / F1 of
      those names against the object classes in the label map, and the recall of the synthetic scenes' small
      objects apart. Comparable across token grids, and near the ceiling of a captioner that reads these tokens
      (benchmarks/README.md, issue 15);
    - for each trained attribute ("color", "pattern"), its accuracy on the cells objects cover over SCORED."""
    model.eval()
    hits = total = tp = fp = fn = small_hits = small = 0
    attr_hits, attr_total = dict.fromkeys(attributes, 0), dict.fromkeys(attributes, 0)
    grid = preset.vision_tower.grid
    for i in range(0, len(scenes), 16):
        items = [scenes[j] for j in range(i, min(i + 16, len(scenes)))]
        logits, parts = split_head(model(tower_pixels([it.image for it in items], preset)), classes, attributes)
        mix = cell_mix([it.labels for it in items], grid, classes)[..., objects]
        scored = mix.max(-1).values > SCORED
        hits += int((logits[..., objects].argmax(-1) == mix.argmax(-1))[scored].sum())
        total += int(scored.sum())
        covered = mix.sum(-1) > SCORED
        for name, part in parts.items():
            target = attribute_mix(items, grid, name)
            attr_hits[name] += int((part.argmax(-1) == target.argmax(-1))[covered].sum())
            attr_total[name] += int(covered.sum())
        for it, got in zip(items, named_objects(logits, objects)):
            truth = {int(c) for c in np.unique(it.labels) if c < classes and objects[c]}
            tp, fp, fn = tp + len(got & truth), fp + len(got - truth), fn + len(truth - got)
            small_ids = [it.classes.index(o.name) for o in getattr(it, "objects", ()) if o.size == "small"]
            small_hits, small = small_hits + sum(c in got for c in small_ids), small + len(small_ids)
    model.train()
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    metrics = {"object_accuracy": hits / max(total, 1) * 100, "cells": total,
               "scene_precision": precision * 100, "scene_recall": recall * 100,
               "scene_f1": 200 * precision * recall / max(precision + recall, 1e-9)}
    metrics |= {f"{name}_accuracy": attr_hits[name] / max(attr_total[name], 1) * 100 for name in attributes}
    return metrics | ({"small_recall": small_hits / small * 100} if small else {})


def main(cfg: TrainConfig) -> dict:
    unknown = set(cfg.loss) - set(LOSS_TERMS)
    if unknown:
        raise ValueError(f"loss: unknown terms {sorted(unknown)} for the tower task; known: {sorted(LOSS_TERMS)}")
    weights = {**LOSS_TERMS, **cfg.loss}
    attributes = tuple(name for name in ATTRIBUTES if weights[name] > 0)
    if attributes and cfg.dataset.kind != "synthetic":
        raise ValueError(f"loss: {', '.join(attributes)} need the synthetic scenes' objects (dataset.kind "
                         f"\"synthetic\"), not {cfg.dataset.kind!r}: set them to 0")
    preset = get_preset(cfg.preset)
    v = preset.vision_tower
    if cfg.low_res_steps:
        if cfg.low_res_size % v.patch_size or cfg.low_res_size >= v.image_size:
            raise ValueError(f"low_res_size {cfg.low_res_size}: a multiple of the tower's patch ({v.patch_size} px) "
                             f"below its {v.image_size} px")
        if cfg.low_res_steps >= cfg.steps:
            raise ValueError(f"low_res_steps {cfg.low_res_steps} leaves none of the run's {cfg.steps} steps at the "
                             f"tower's own size: make it fewer")
    d = Dist()
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    out = prepare_run(cfg, d.main)
    train_set = open_split(cfg.dataset, "train", preset.segmenter.frame_size)
    classes = len(train_set.classes)
    objects = torch.tensor([c not in BACKGROUND_NAMES for c in train_set.classes])
    tower = start_tower(cfg, preset)
    outputs = classes + sum(len(ATTRIBUTES[name]) for name in attributes)
    model = TowerWithPatchHead(tower, outputs, preset.vision_tower.has_cls).train().to(d.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, state_path = resume(out, model, optimizer, d), out / STATE_FILE
    ddp = DistributedDataParallel(model) if d.world > 1 else model
    log = Logger(out, cfg, d.main, start)
    val_set = open_split(cfg.dataset, "val", preset.segmenter.frame_size) if d.main else None
    metrics: dict = {}
    for step in range(start, cfg.steps):
        items = rank_batch(train_set, step, cfg.batch_size, d)
        size = cfg.low_res_size if step < cfg.low_res_steps else v.image_size
        grid = size // v.patch_size
        pixels = tower_pixels([it.image for it in items], preset, size)
        mix = cell_mix([it.labels for it in items], grid, classes).to(d.device)
        logits, heads = split_head(ddp(pixels.to(d.device)), classes, attributes)
        targets = {name: (heads[name], attribute_mix(items, grid, name).to(d.device)) for name in attributes}
        loss, parts = patch_loss(logits, mix, objects.to(d.device), weights, targets)
        optimizer_step(optimizer, params, loss, step, cfg)
        if (step + 1) % cfg.log_every == 0 or step == start:
            log(step, d.mean({"loss": float(loss.detach()), **parts}) | {"lr": optimizer.param_groups[0]["lr"]})
        if d.main and due(step, cfg.ckpt_every, cfg.steps):
            save_state(state_path, model, optimizer, step + 1)
            save_component(tower, out / "vision_tower.safetensors")
        if d.main and due(step, cfg.eval_every, cfg.steps):
            t0 = time.perf_counter()
            metrics = evaluate(model, preset, val_set, classes, objects, attributes)
            values = {f"val_{k}": v for k, v in metrics.items() if k != "cells"}
            log(step, values | {"eval_s": time.perf_counter() - t0}, kind="eval")
        d.barrier()
    if d.main:
        (out / "metrics.json").write_text(json.dumps({"steps": cfg.steps, "world_size": d.world,
                                                      "global_batch": cfg.batch_size * d.world, "val": metrics},
                                                     indent=2) + "\n")
    d.close()
    return metrics
