"""Every component's tensor names, defined once: the exporters write them, the runtime feeds them.

Torch-free on purpose (the runtime imports this on machines without PyTorch).
"""
from __future__ import annotations

from dataclasses import dataclass


# Dynamic axes of the exported graphs (the manifest's shape ranges and TensorRT profiles use them).
PRIORS_AXIS = "priors"                            # objects parsed from the caption, K
VOCAB_AXIS = "vocab"                              # class names, V
CLASS_AXIS = "vocab_plus_no_object"               # V + 1
PHRASES_AXIS = "phrases"                          # text-encoder batch


@dataclass(frozen=True)
class ComponentNames:
    component: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


VISION_TOWER = ComponentNames(
    "vision_tower",
    inputs=("pixel_values",),                      # (1, 3, S, S) float32, the tower's normalization
    outputs=("vision_hidden_states",),             # (n_layers, 1, T, C)
)
TEXT_ENCODER = ComponentNames(
    "text_encoder",
    inputs=("input_ids", "attention_mask"),        # (B, L) int64 each
    outputs=("text_embeddings",),                  # (B, E), L2-normalized
)
SEGMENTER = ComponentNames(
    "segmenter",
    inputs=(
        "frame",                                   # (1, 3, H, W) float32, ImageNet normalization
        "vision_hidden_states",                    # (n_layers, 1, T, C)
        "object_embeddings",                       # (1, K, E)
        "attribute_embeddings",                    # (1, K, E)
        "prior_valid",                             # (1, K) float32: 1 prior, 0 padding
        "relation_graph",                          # (1, K, K) float32
        "vocab_embeddings",                        # (V, E)
    ),
    outputs=("mask_logits", "class_logits"),       # (1, Q, H/s, W/s), (1, Q, V+1)
)


# The captioner (LLaVA-Phi). Its vision graph is the vision tower plus the projector: one tower pass per
# frame gives the captioner its image embeddings and the segmenter its hidden states.

CAPTIONER_VISION = ComponentNames(
    "captioner_vision",
    inputs=VISION_TOWER.inputs,                               # pixel_values (1, 3, S, S) float32, CLIP normalization
    outputs=("image_embeds",) + VISION_TOWER.outputs,         # (1, N, E_text), vision_hidden_states (L, 1, T, C)
)


@dataclass(frozen=True)
class DecoderNames:
    """The decoder's tensors; past/present come per layer, named as optimum names them."""

    component: str = "captioner_decoder"
    inputs_embeds: str = "inputs_embeds"                      # (1, S, E_text) float32
    attention_mask: str = "attention_mask"                    # (1, P + S) int64: 1 = a valid slot / token
    position_ids: str = "position_ids"                        # (1, S) int64
    logits: str = "logits"                                    # (1, 1, V): the last position only

    def past(self, n_layers: int) -> tuple[str, ...]:
        """past_key_values.{i}.key/.value per layer: (1, Hkv, P, D), the cache buffer."""
        return tuple(f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value"))

    def present(self, n_layers: int) -> tuple[str, ...]:
        """present.{i}.key/.value per layer: (1, Hkv, S, D), the keys/values of this call's tokens only."""
        return tuple(f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value"))

    def names(self, n_layers: int) -> ComponentNames:
        return ComponentNames(self.component,
                              inputs=(self.inputs_embeds, self.attention_mask, self.position_ids) + self.past(n_layers),
                              outputs=(self.logits,) + self.present(n_layers))


CAPTIONER_DECODER = DecoderNames()
CAPTIONER_EMBED = ComponentNames(
    "captioner_embed",
    inputs=("input_ids",),                                    # (1, S) int64
    outputs=(CAPTIONER_DECODER.inputs_embeds,),               # (1, S, E_text)
)
