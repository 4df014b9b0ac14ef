"""LLMFormer's segmenter: ViT-Adapter + MSDA pixel decoder + prior-guided decoder + open-vocabulary heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmformer.adapter import ViTAdapter
from llmformer.decoder import PriorGuidedDecoder
from llmformer.pixel_decoder import PixelDecoder
from llmformer.presets import SegmenterConfig


class LLMFormerSegmenter(nn.Module):
    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        self.cfg = cfg
        self.adapter = ViTAdapter(cfg)
        self.pixel_decoder = PixelDecoder(cfg)
        self.decoder = PriorGuidedDecoder(cfg)

    def forward_all(self, frame, vision_hidden_states, object_embeddings, attribute_embeddings, prior_valid,
                    relation_graph, vocab_embeddings) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's prediction (for training's deep supervision); the last one is the output."""
        c1, pyramid = self.adapter(frame, vision_hidden_states)
        mask_features, memory = self.pixel_decoder(c1, pyramid)
        return self.decoder(mask_features, memory, object_embeddings, attribute_embeddings, prior_valid,
                            relation_graph, vocab_embeddings)

    def forward(
        self,
        frame: torch.Tensor,                  # (B, 3, H, W), ImageNet-normalized
        vision_hidden_states: torch.Tensor,   # (n_layers, B, T, C_vit)
        object_embeddings: torch.Tensor,      # (B, K, E)
        attribute_embeddings: torch.Tensor,   # (B, K, E)
        prior_valid: torch.Tensor,            # (B, K)
        relation_graph: torch.Tensor,         # (B, K, K)
        vocab_embeddings: torch.Tensor,       # (V, E)
    ) -> tuple[torch.Tensor, torch.Tensor]:   # mask logits (B, Q, H/s, W/s), class logits (B, Q, V+1)
        return self.forward_all(frame, vision_hidden_states, object_embeddings, attribute_embeddings,
                                prior_valid, relation_graph, vocab_embeddings)[-1]


def semantic_inference(mask_logits: torch.Tensor, class_logits: torch.Tensor,
                       size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask2Former's semantic inference for one image.

    mask_logits (Q, h, w), class_logits (Q, V+1) -> labels (H, W) int64 in [0, V), and the per-class
    score map (V, H, W): sum over queries of softmax(class)[:V] x sigmoid(mask), bilinearly resized."""
    probs = class_logits.softmax(-1)[:, :-1]                                   # drop "no object"
    scores = torch.einsum("qv,qhw->vhw", probs, mask_logits.sigmoid())
    scores = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    return scores.argmax(0), scores


def parameter_counts(model: LLMFormerSegmenter) -> dict[str, int]:
    return {name: sum(p.numel() for p in part.parameters())
            for name, part in (("adapter", model.adapter), ("pixel_decoder", model.pixel_decoder),
                               ("decoder", model.decoder))}
