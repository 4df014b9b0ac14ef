"""Mask2Former's MSDA pixel decoder: deformable self-attention over the 1/8-1/32 pyramid, then mask
features at 1/4 (an FPN step from the stem's 1/4 map) or 1/8."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmformer.layers import FFN, group_norm, sine_position_embedding
from llmformer.msda import MSDeformAttn, reference_points_for
from llmformer.presets import SegmenterConfig


class EncoderLayer(nn.Module):
    """Deformable DETR's encoder layer (post-norm): MSDA over all levels, then FFN."""

    def __init__(self, dim: int, heads: int, points: int, ffn: int, levels: int = 3):
        super().__init__()
        self.attn = MSDeformAttn(dim, levels=levels, heads=heads, points=points)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        x = self.norm1(x + self.attn(x + pos, reference, x, shapes))
        return self.norm2(x + self.ffn(x))


class PixelDecoder(nn.Module):
    """c1 (B, stem, H/4, W/4) + pyramid [1/8, 1/16, 1/32] (B, dim, h, w) ->
    mask features (B, dim, H/s, W/s) and the memory, low resolution first: [1/32, 1/16, 1/8]."""

    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        d = cfg.dim
        self.mask_stride = cfg.mask_stride
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(d, d, 1), group_norm(d)) for _ in range(3))
        self.level_embed = nn.Parameter(torch.zeros(3, d))
        self.layers = nn.ModuleList(
            EncoderLayer(d, cfg.heads, cfg.points, cfg.encoder_ffn) for _ in range(cfg.encoder_layers))
        if cfg.mask_stride == 4:
            self.lateral = nn.Sequential(nn.Conv2d(cfg.stem_channels, d, 1, bias=False), group_norm(d))
            self.fpn_out = nn.Sequential(nn.Conv2d(d, d, 3, 1, 1, bias=False), group_norm(d), nn.ReLU(inplace=True))
        self.mask_features = nn.Conv2d(d, d, 1)
        nn.init.normal_(self.level_embed, std=0.02)

    def forward(self, c1: torch.Tensor, pyramid: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        B, d = pyramid[0].shape[:2]
        maps = [proj(x) for proj, x in zip(self.input_proj, pyramid)]
        shapes = [(int(x.shape[2]), int(x.shape[3])) for x in maps]
        tokens = torch.cat([x.flatten(2).transpose(1, 2) for x in maps], 1)                 # (B, S, d)
        pos = torch.cat([sine_position_embedding(h, w, d, x.device, x.dtype) + self.level_embed[i]
                         for i, ((h, w), x) in enumerate(zip(shapes, maps))], 0)[None]      # (1, S, d)
        # Encoder queries are the tokens themselves: each one's reference point is its own position,
        # repeated at every level (normalized coordinates line up across levels).
        ref = reference_points_for(shapes, tokens.device, tokens.dtype)[None, :, None, :].expand(B, -1, 3, -1)
        for layer in self.layers:
            tokens = layer(tokens, pos, ref, shapes)
        memory, start = [], 0
        for h, w in shapes:
            memory.append(tokens[:, start:start + h * w].transpose(1, 2).reshape(B, d, h, w))
            start += h * w
        top = memory[0]                                                                     # 1/8
        if self.mask_stride == 4:
            top = self.lateral(c1) + F.interpolate(top, size=c1.shape[-2:], mode="bilinear", align_corners=False)
            top = self.fpn_out(top)
        return self.mask_features(top), memory[::-1]
