"""Extractor-style ViT-Adapter: a CNN pyramid from the full-resolution frame that reads the frozen ViT.

The spatial-prior stem supplies the detail a 336 px ViT lacks (1/4 ... 1/32 of the frame); extractors
(MSDA from pyramid tokens into the ViT's token grid) pull the ViT's semantics into the pyramid. Nothing
flows back into the ViT, so its single pass per frame also serves the captioner.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmformer.layers import FFN, group_norm
from llmformer.msda import MSDeformAttn, reference_points_for
from llmformer.presets import SegmenterConfig


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SpatialPriorStem(nn.Module):
    """frame (B, 3, H, W) -> c1 (1/4, stem channels) and c2, c3, c4 (1/8, 1/16, 1/32) projected to `dim`."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(_conv_bn(3, c, 2), _conv_bn(c, c, 1), _conv_bn(c, c, 1), nn.MaxPool2d(3, 2, 1))
        self.conv2 = _conv_bn(c, 2 * c, 2)
        self.conv3 = _conv_bn(2 * c, 4 * c, 2)
        self.conv4 = _conv_bn(4 * c, 4 * c, 2)
        self.proj = nn.ModuleList(nn.Conv2d(ch, dim, 1) for ch in (2 * c, 4 * c, 4 * c))

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        c1 = self.stem(frame)          # (B, c, H/4, W/4)
        c2 = self.conv2(c1)            # (B, 2c, H/8, W/8)
        c3 = self.conv3(c2)            # (B, 4c, H/16, W/16)
        c4 = self.conv4(c3)            # (B, 4c, H/32, W/32)
        return c1, [p(x) for p, x in zip(self.proj, (c2, c3, c4))]


class Extractor(nn.Module):
    """Pyramid tokens (queries) attend to one ViT layer's token grid (a single-level MSDA), then an FFN."""

    def __init__(self, dim: int, heads: int, points: int, ffn: int):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.feat_norm = nn.LayerNorm(dim)
        self.attn = MSDeformAttn(dim, levels=1, heads=heads, points=points)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, feat: torch.Tensor,
                grid: tuple[int, int]) -> torch.Tensor:
        query = query + self.attn(self.query_norm(query), reference, self.feat_norm(feat), [grid])
        return query + self.ffn(self.ffn_norm(query))


class ViTAdapter(nn.Module):
    """frame (B, 3, H, W) + ViT hidden states (n, B, T, C_vit) -> c1 (B, stem, H/4, W/4) and the pyramid
    [1/8, 1/16, 1/32], each (B, dim, h, w)."""

    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = SpatialPriorStem(cfg.stem_channels, cfg.dim)
        self.level_embed = nn.Parameter(torch.zeros(3, cfg.dim))
        self.vit_proj = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(cfg.vit_dim), nn.Linear(cfg.vit_dim, cfg.dim)) for _ in range(cfg.vit_layers))
        self.extractors = nn.ModuleList(
            Extractor(cfg.dim, cfg.heads, cfg.points, cfg.adapter_ffn) for _ in range(cfg.vit_layers))
        self.out_norms = nn.ModuleList(group_norm(cfg.dim) for _ in range(3))
        nn.init.normal_(self.level_embed, std=0.02)

    def forward(self, frame: torch.Tensor, vit_states: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        c1, pyramid = self.stem(frame)
        B = frame.shape[0]
        shapes = [(int(x.shape[2]), int(x.shape[3])) for x in pyramid]
        tokens = torch.cat([x.flatten(2).transpose(1, 2) + self.level_embed[i] for i, x in enumerate(pyramid)], 1)
        # Every pyramid token samples the ViT grid around its own position (one level in the ViT).
        reference = reference_points_for(shapes, tokens.device, tokens.dtype)[None, :, None, :].expand(B, -1, 1, -1)
        g = self.cfg.vit_grid
        vit_tokens = vit_states[:, :, 1:] if self.cfg.vit_has_cls else vit_states   # (n, B, g*g, C_vit)
        vit_feats = [proj(vit_tokens[i]) for i, proj in enumerate(self.vit_proj)]   # each (B, g*g, dim)
        for extractor, feat in zip(self.extractors, vit_feats):
            tokens = extractor(tokens, reference, feat, (g, g))
        # Split back into maps and add the last ViT layer, resized to each level (ViT-Adapter's fusion).
        vit_map = vit_feats[-1].transpose(1, 2).reshape(B, self.cfg.dim, g, g)
        outs, start = [], 0
        for i, (h, w) in enumerate(shapes):
            x = tokens[:, start:start + h * w].transpose(1, 2).reshape(B, self.cfg.dim, h, w)
            start += h * w
            x = x + F.interpolate(vit_map, size=(h, w), mode="bilinear", align_corners=False)
            outs.append(self.out_norms[i](x))
        return c1, outs
