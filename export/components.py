"""The three deployable components of a preset, as (module, example inputs, names, dynamic axes)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from engines.contract import (CLASS_AXIS, PHRASES_AXIS, PRIORS_AXIS, SEGMENTER, TEXT_ENCODER, VISION_TOWER,
                              VOCAB_AXIS, ComponentNames)
from llmformer.presets import Preset

# Ranges of the dynamic axes, recorded in the manifest (and the TensorRT profiles made from it).
DEFAULT_RANGES = {PRIORS_AXIS: (1, 64), VOCAB_AXIS: (1, 256), PHRASES_AXIS: (1, 128)}


@dataclass
class Component:
    names: ComponentNames
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.names.component


def vision_tower_component(preset: Preset, tower: nn.Module, seed: int = 0) -> Component:
    g = torch.Generator().manual_seed(seed)
    s = preset.vision_tower.image_size
    return Component(VISION_TOWER.names, tower, (torch.randn(1, 3, s, s, generator=g),))


def text_encoder_component(preset: Preset, encoder: nn.Module, seed: int = 0) -> Component:
    g = torch.Generator().manual_seed(seed)
    L = preset.text_encoder.max_length
    ids = torch.randint(1000, 2000, (3, L), generator=g)
    mask = torch.ones(3, L, dtype=torch.int64)
    mask[1, L // 2:] = 0
    axes = {n: {0: PHRASES_AXIS} for n in (TEXT_ENCODER.input_ids, TEXT_ENCODER.attention_mask,
                                           TEXT_ENCODER.text_embeddings)}
    return Component(TEXT_ENCODER.names, encoder, (ids, mask), axes)


def segmenter_example(preset: Preset, priors: int = 3, vocab: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random segmenter inputs. More than one prior and class, so tracing keeps those axes dynamic."""
    g = torch.Generator().manual_seed(seed)
    c, t = preset.segmenter, preset.vision_tower
    tokens = t.grid ** 2 + (1 if t.has_cls else 0)
    E = c.text_dim
    valid = torch.ones(1, priors)
    valid[0, -1] = 0.0
    relation = torch.eye(priors)[None].clone()
    if priors > 1:
        relation[0, 0, 1] = 1.0
    return (
        torch.randn(1, 3, c.frame_size, c.frame_size, generator=g),
        torch.randn(len(t.feature_layers), 1, tokens, t.hidden_size, generator=g),
        torch.randn(1, priors, E, generator=g),
        torch.randn(1, priors, E, generator=g),
        valid,
        relation,
        torch.randn(vocab, E, generator=g),
    )


def segmenter_component(preset: Preset, segmenter: nn.Module, seed: int = 0) -> Component:
    s = SEGMENTER
    axes = {s.object_embeddings: {1: PRIORS_AXIS}, s.attribute_embeddings: {1: PRIORS_AXIS},
            s.prior_valid: {1: PRIORS_AXIS}, s.relation_graph: {1: PRIORS_AXIS, 2: PRIORS_AXIS},
            s.vocab_embeddings: {0: VOCAB_AXIS}, s.class_logits: {2: CLASS_AXIS}}
    return Component(SEGMENTER.names, segmenter, segmenter_example(preset, seed=seed), axes)
