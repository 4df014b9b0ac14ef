"""Multi-scale deformable attention (MSDA), the PyTorch reference.

The op contract (shared with the CUDA kernel in `plugins_trt/msda/` and TensorRT's own plugin):

    value               (N, S, M, D)        S = sum of H_l * W_l over levels
    spatial_shapes      (L, 2)   int        [H_l, W_l]
    level_start_index   (L,)     int        offset of each level in S
    sampling_locations  (N, Lq, M, L, P, 2) normalized (x, y) in [0, 1]
    attention_weights   (N, Lq, M, L, P)
    -> output           (N, Lq, M * D)

Sampling is bilinear at pixel coordinate `x * W - 0.5` (pixel centres sit at half-integers, which is what
grid_sample with align_corners=False means), and each of the four corners outside the map contributes zero.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Shapes = Sequence[tuple[int, int]]


def _static_shapes(spatial_shapes: torch.Tensor | Shapes) -> list[tuple[int, int]]:
    # Level sizes decide how `value` is split, so they must be Python ints; when tracing for ONNX they
    # become constants, which is what a fixed-frame-size build wants.
    if isinstance(spatial_shapes, torch.Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | Shapes,
    level_start_index: torch.Tensor | Sequence[int] | None,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """MSDA with the contract in the module docstring. `level_start_index` is implied by the shapes and
    only checked for consistency when given as a concrete tensor or list."""
    if _implementation is not None:  # see msda_implementation() below
        return _implementation(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    shapes = _static_shapes(spatial_shapes)
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    if len(shapes) != L:
        raise ValueError(f"spatial_shapes has {len(shapes)} levels but sampling_locations has {L}")
    sizes = [h * w for h, w in shapes]
    if sum(sizes) != S:
        raise ValueError(f"value has S={S} tokens but spatial_shapes sum to {sum(sizes)}")
    if level_start_index is not None and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
        starts = [int(s) for s in (level_start_index.tolist() if isinstance(level_start_index, torch.Tensor)
                                   else level_start_index)]
        expected = [sum(sizes[:i]) for i in range(L)]
        if starts != expected:
            raise ValueError(f"level_start_index {starts} does not match spatial_shapes (expected {expected})")

    value_levels = value.split(sizes, dim=1)
    grids = 2.0 * sampling_locations - 1.0  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = value_levels[lvl].flatten(2).transpose(1, 2).reshape(N * M, D, h, w)       # (N*M, D, H, W)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)                          # (N*M, Lq, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)                                 # (N*M, D, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    out = (stacked * weights).sum(-1).view(N, M * D, Lq)
    return out.transpose(1, 2).contiguous()                                            # (N, Lq, M*D)


# --- Implementation hook (export/msda_plugin.py, plugins_trt/msda_op.py) ---------------------------------------
# The code above stays the definition of the op. An exporter or a backend can route every ms_deform_attn() call,
# whichever module makes it, to another implementation with the same signature and contract: the TensorRT plugin
# node when exporting, the CUDA kernel on a GPU.
MsdaImplementation = Callable[..., torch.Tensor]
_implementation: MsdaImplementation | None = None


@contextlib.contextmanager
def msda_implementation(fn: MsdaImplementation | None) -> Iterator[None]:
    """Inside the block, ms_deform_attn(...) returns fn(...) (None restores the reference); blocks nest."""
    global _implementation
    previous, _implementation = _implementation, fn
    try:
        yield
    finally:
        _implementation = previous
# ---------------------------------------------------------------------------------------------------------------------


class MSDeformAttn(nn.Module):
    """Deformable DETR's multi-scale deformable attention module.

    Each query predicts, per head, level and point, an offset from its reference point and a weight;
    weights are softmaxed jointly over levels x points.
    """

    def __init__(self, dim: int = 256, levels: int = 4, heads: int = 8, points: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Deformable DETR's init: offsets start on a ring of directions, one per head, growing per point.
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.heads, 1, 1, 2)
        grid = grid.repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,               # (N, Lq, C)
        reference_points: torch.Tensor,    # (N, Lq, L, 2) normalized x, y
        value: torch.Tensor,               # (N, S, C)
        spatial_shapes: Shapes,            # L x (H, W)
        value_padding_mask: torch.Tensor | None = None,  # (N, S) True where padded
    ) -> torch.Tensor:                     # (N, Lq, C)
        N, Lq, _ = query.shape
        M, L, P = self.heads, self.levels, self.points
        v = self.value_proj(value)
        if value_padding_mask is not None:
            v = v.masked_fill(value_padding_mask[..., None], 0.0)
        v = v.view(N, -1, M, self.dim // M)
        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(N, Lq, M, L * P).softmax(-1).view(N, Lq, M, L, P)
        # Offsets are in pixels of each level, so normalize by that level's (W, H).
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn(v, spatial_shapes, None, locations, weights)
        return self.output_proj(out)


def reference_points_for(shapes: Shapes, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre reference points of every position of every level, normalized: (S, 2) as (x, y)."""
    points = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(h, device=device, dtype=dtype) + 0.5) / h,
            (torch.arange(w, device=device, dtype=dtype) + 0.5) / w,
            indexing="ij",
        )
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    return torch.cat(points, 0)
