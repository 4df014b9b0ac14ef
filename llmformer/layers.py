"""Small building blocks shared by the adapter, pixel decoder and prior-guided decoder."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Masked-out attention logits get this instead of -inf: it still zeroes the softmax in FP32 and stays
# finite in FP16, so a row that is masked everywhere cannot turn into NaN in a half-precision engine.
MASK_VALUE = -1e4


class Attention(nn.Module):
    """Multi-head attention written out (MatMul/Softmax), so every ONNX opset and TensorRT take it, and
    so callers can pass an additive bias per head and read the attention map back."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self,
        query: torch.Tensor,             # (B, Q, C)
        key: torch.Tensor,               # (B, K, C)
        value: torch.Tensor,             # (B, K, C)
        bias: torch.Tensor | None = None,  # broadcastable to (B, h, Q, K), added to the logits
    ) -> tuple[torch.Tensor, torch.Tensor]:  # output (B, Q, C), map averaged over heads (B, Q, K)
        B, Q, C = query.shape
        h = self.heads
        q = self.q(query).view(B, Q, h, C // h).transpose(1, 2)
        k = self.k(key).view(B, -1, h, C // h).transpose(1, 2)
        v = self.v(value).view(B, -1, h, C // h).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(C // h))   # (B, h, Q, K)
        if bias is not None:
            logits = logits + bias
        attn = logits.softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(B, Q, C)
        return self.out(out), attn.mean(1)


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MLP(nn.Module):
    """`layers` linear layers with ReLU between (Mask2Former's mask-embedding head)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, layers: int):
        super().__init__()
        dims = [dim_in] + [hidden] * (layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def sine_position_embedding(h: int, w: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """DETR's normalized 2-D sine embedding of an h x w map: (h*w, dim). Depends on shapes only, so it
    folds into a constant in a fixed-size ONNX graph."""
    half = dim // 2
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w * 2 * math.pi
    freq = 10000.0 ** (2 * (torch.arange(half, device=device, dtype=dtype) // 2) / half)
    py = ys[:, None] / freq                                    # (h, half)
    px = xs[:, None] / freq                                    # (w, half)
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], -1).flatten(1)
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], -1).flatten(1)
    emb = torch.cat([py[:, None, :].expand(h, w, half), px[None, :, :].expand(h, w, half)], -1)
    return emb.reshape(h * w, dim)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)
