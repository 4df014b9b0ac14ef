"""Train the segmenter (and the demo's vision tower) with Mask2Former's set loss, priors from captions.

    torchrun --nproc-per-node 2 -m llmformer.train llmformer/train/configs/demo_segmenter.json

Each step: a batch of scenes -> the tower's hidden states and the segmenter's inputs (preprocessed as the
runtime does) -> priors parsed from each scene's caption -> every decoder layer's prediction -> Hungarian
matching against the classes present -> loss. The vocabulary is the training split's class list (frozen
text-encoder embeddings). Writes OUT/segmenter.safetensors and OUT/vision_tower.safetensors (the
project's checkpoint format), OUT/train_state.safetensors (resume), OUT/log.jsonl and OUT/metrics.json.
"""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llmformer.checkpoint import save_component
from llmformer.data.synthetic import BACKGROUND_NAMES
from llmformer.presets import IMAGENET_MEAN, IMAGENET_STD, Preset, get_preset
from llmformer.segmenter import LLMFormerSegmenter, semantic_inference
from llmformer.vision_tower import VisionTower
from runtime.evaluate import Confusion
from runtime.frames import to_tensor
from llmformer.train.common import (STATE_FILE, Dist, Logger, due, optimizer_step, prepare_run, rank_batch, resume,
                                    save_state, seed_everything, set_threads, start_tower, tower_pixels)
from llmformer.train.config import TrainConfig
from llmformer.train.data import open_split
from llmformer.train.losses import LossWeights, semantic_targets, set_criterion
from llmformer.train.text import PriorNoise, TextSide


class TowerAndSegmenter(nn.Module):
    """One module, so DistributedDataParallel averages the tower's and the segmenter's gradients together."""

    def __init__(self, tower: VisionTower, segmenter: LLMFormerSegmenter, train_tower: bool):
        super().__init__()
        self.tower, self.segmenter, self.train_tower = tower, segmenter, train_tower
        for name, p in tower.named_parameters():
            # The pooled output's layer norm feeds nothing the segmenter reads (and DDP wants every
            # trained parameter used).
            p.requires_grad_(train_tower and "post_layernorm" not in name)

    def forward(self, frame, pixels, objects, attributes, valid, relation, vocab):
        if self.train_tower:
            hidden = self.tower(pixels)
        else:
            with torch.no_grad():
                hidden = self.tower(pixels)
        return self.segmenter.forward_all(frame, hidden, objects, attributes, valid, relation, vocab)


def build_models(cfg: TrainConfig) -> tuple[Preset, VisionTower, LLMFormerSegmenter]:
    preset = get_preset(cfg.preset)
    if cfg.segmenter_overrides:
        preset = dataclasses.replace(preset, segmenter=dataclasses.replace(preset.segmenter, **cfg.segmenter_overrides))
    return preset, start_tower(cfg, preset).train(), LLMFormerSegmenter(preset.segmenter).train()


def preprocess(images: list[np.ndarray], preset: Preset) -> tuple[torch.Tensor, torch.Tensor]:
    """The runtime's own preprocessing (runtime.frames.to_tensor): segmenter input and tower pixels."""
    s = preset.segmenter.frame_size
    frame = np.concatenate([to_tensor(im, s, IMAGENET_MEAN, IMAGENET_STD) for im in images])
    return torch.from_numpy(frame), tower_pixels(images, preset)


@torch.no_grad()
def evaluate(model: TowerAndSegmenter, preset: Preset, text: TextSide, scenes, classes: list[str],
             batch: int = 8) -> dict[str, float]:
    """mIoU and pixel accuracy of the PyTorch model on `scenes`, priors from their captions."""
    model.eval()
    conf = Confusion(len(classes))
    vocab = text.vocabulary(classes)
    for i in range(0, len(scenes), batch):
        items = [scenes[j] for j in range(i, min(i + batch, len(scenes)))]
        frame, pixels = preprocess([it.image for it in items], preset)
        priors, _ = text.priors([it.caption for it in items], classes)
        mask_logits, class_logits = model(frame, pixels, *priors, vocab)[-1]
        for b, it in enumerate(items):
            labels, _ = semantic_inference(mask_logits[b], class_logits[b], it.labels.shape)
            conf.add(labels.numpy(), it.labels)
    model.train()
    return conf.summary(classes)


def main(cfg: TrainConfig) -> dict:
    d = Dist()
    set_threads(cfg.threads)
    seed_everything(cfg.seed + d.rank)
    out = prepare_run(cfg, d.main)
    preset, tower, segmenter = build_models(cfg)
    model = TowerAndSegmenter(tower, segmenter, cfg.train_tower).to(d.device)
    text = TextSide(preset)
    train_set = open_split(cfg.dataset, "train", preset.segmenter.frame_size)
    val_set = open_split(cfg.dataset, "val", preset.segmenter.frame_size) if d.main else None
    classes = list(train_set.classes)
    vocab = text.vocabulary(classes).to(d.device)
    weights = LossWeights(**cfg.loss)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = resume(out, model, optimizer, d)
    state_path = out / STATE_FILE
    # An ablation (a module switched off) leaves that module's parameters without gradients.
    ablated = any(v is False for v in cfg.segmenter_overrides.values())
    ddp = DistributedDataParallel(model, find_unused_parameters=ablated) if d.world > 1 else model
    log = Logger(out, cfg, d.main, start)
    noise = None
    if cfg.caption_dropout or cfg.prior_swap or cfg.prior_drop:   # its own stream: the scenes' draws stay put
        objects = [c for c in classes if c not in BACKGROUND_NAMES]
        noise = PriorNoise(cfg.caption_dropout, cfg.prior_swap, objects,
                           np.random.default_rng([cfg.seed, d.rank, start]), drop=cfg.prior_drop)
    mask_size = (preset.segmenter.frame_size // preset.segmenter.mask_stride,) * 2
    global_batch = cfg.batch_size * d.world
    metrics: dict = {}
    for step in range(start, cfg.steps):
        items = rank_batch(train_set, step, cfg.batch_size, d)
        frame, pixels = preprocess([it.image for it in items], preset)
        priors, _ = text.priors([it.caption for it in items], classes, noise)
        targets = [semantic_targets(torch.as_tensor(np.asarray(it.labels, np.int64)), len(classes), mask_size)
                   for it in items]
        predictions = ddp(frame.to(d.device), pixels.to(d.device), *(p.to(d.device) for p in priors), vocab)
        loss, parts = set_criterion(predictions, targets, weights)
        optimizer_step(optimizer, params, loss, step, cfg)
        if (step + 1) % cfg.log_every == 0 or step == start:
            log(step, d.mean({"loss": float(loss.detach()), **parts}) | {"lr": optimizer.param_groups[0]["lr"]})
        if d.main and due(step, cfg.ckpt_every, cfg.steps):
            save_state(state_path, model, optimizer, step + 1)
            save_component(segmenter, out / "segmenter.safetensors")
            save_component(tower, out / "vision_tower.safetensors")
        if d.main and due(step, cfg.eval_every, cfg.steps):
            t0 = time.perf_counter()
            metrics = evaluate(model, preset, text, val_set, classes)
            log(step, {"val_miou": metrics["miou"], "val_pixel_acc": metrics["pixel_accuracy"],
                       "eval_s": time.perf_counter() - t0}, kind="eval")
        d.barrier()
    if d.main:
        result = {"steps": cfg.steps, "world_size": d.world, "global_batch": global_batch, "val": metrics}
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    d.close()
    return metrics
