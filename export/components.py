"""The three deployable components of a preset, as (module, example inputs, names, dynamic axes)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from engines.contract import (BATCH_AXIS, CLASS_AXIS, PHRASES_AXIS, PRIORS_AXIS, SEGMENTER, TEXT_ENCODER,
                              VISION_TOWER, VOCAB_AXIS, ComponentNames)
from llmformer.presets import Preset

# Ranges of the dynamic axes, recorded in the manifest (and the TensorRT profiles made from it). The batch axis's
# max is build_engines.py --max-batch.
DEFAULT_MAX_BATCH = 8
DEFAULT_RANGES = {PRIORS_AXIS: (1, 64), VOCAB_AXIS: (1, 256), PHRASES_AXIS: (1, 128),
                  BATCH_AXIS: (1, DEFAULT_MAX_BATCH)}


def traced_batch(max_batch: int) -> int:
    """The batch size to trace a graph with: 2 where it gets a batch axis (traced at 1 the exporter may fold the
    axis into constants), else the fixed 1 of builds without one (--max-batch 1)."""
    return 2 if max_batch > 1 else 1


@dataclass
class Component:
    names: ComponentNames
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.names.component


def vision_tower_component(preset: Preset, tower: nn.Module, seed: int = 0,
                           max_batch: int = DEFAULT_MAX_BATCH) -> Component:
    g = torch.Generator().manual_seed(seed)
    s = preset.vision_tower.image_size
    axes = {VISION_TOWER.pixel_values: {0: BATCH_AXIS}, VISION_TOWER.vision_hidden_states: {1: BATCH_AXIS}}
    return Component(VISION_TOWER.names, tower, (torch.randn(traced_batch(max_batch), 3, s, s, generator=g),),
                     axes if max_batch > 1 else {})


def text_encoder_component(preset: Preset, encoder: nn.Module, seed: int = 0) -> Component:
    g = torch.Generator().manual_seed(seed)
    L = preset.text_encoder.max_length
    ids = torch.randint(1000, 2000, (3, L), generator=g)
    mask = torch.ones(3, L, dtype=torch.int64)
    mask[1, L // 2:] = 0
    axes = {n: {0: PHRASES_AXIS} for n in (TEXT_ENCODER.input_ids, TEXT_ENCODER.attention_mask,
                                           TEXT_ENCODER.text_embeddings)}
    return Component(TEXT_ENCODER.names, encoder, (ids, mask), axes)


def segmenter_example(preset: Preset, priors: int = 3, vocab: int = 4, seed: int = 0,
                      batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Random segmenter inputs. More than one prior and class, so tracing keeps those axes dynamic."""
    g = torch.Generator().manual_seed(seed)
    c, t = preset.segmenter, preset.vision_tower
    tokens = t.grid ** 2 + (1 if t.has_cls else 0)
    E = c.text_dim
    valid = torch.ones(batch, priors)
    valid[:, -1] = 0.0
    relation = torch.eye(priors)[None].repeat(batch, 1, 1)
    if priors > 1:
        relation[:, 0, 1] = 1.0
    return (
        torch.randn(batch, 3, c.frame_size, c.frame_size, generator=g),
        torch.randn(len(t.feature_layers), batch, tokens, t.hidden_size, generator=g),
        torch.randn(batch, priors, E, generator=g),
        torch.randn(batch, priors, E, generator=g),
        valid,
        relation,
        torch.randn(vocab, E, generator=g),
    )


def segmenter_component(preset: Preset, segmenter: nn.Module, seed: int = 0,
                        max_batch: int = DEFAULT_MAX_BATCH) -> Component:
    s = SEGMENTER
    axes = {s.object_embeddings: {1: PRIORS_AXIS}, s.attribute_embeddings: {1: PRIORS_AXIS},
            s.prior_valid: {1: PRIORS_AXIS}, s.relation_graph: {1: PRIORS_AXIS, 2: PRIORS_AXIS},
            s.vocab_embeddings: {0: VOCAB_AXIS}, s.class_logits: {2: CLASS_AXIS}}
    if max_batch > 1:   # the batch is axis 0 of every tensor but the hidden states' (axis 1) and the shared vocabulary
        for name in (*s.inputs, *s.outputs):
            if name != s.vocab_embeddings:
                axes.setdefault(name, {})[1 if name == s.vision_hidden_states else 0] = BATCH_AXIS
    example = segmenter_example(preset, seed=seed, batch=traced_batch(max_batch))
    return Component(SEGMENTER.names, segmenter, example, axes)
