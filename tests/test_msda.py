"""The MSDA reference against an independent per-point bilinear loop (no grid_sample)."""
import numpy as np
import pytest
import torch

from llmformer.msda import MSDeformAttn, ms_deform_attn


def bilinear_loop(value, shapes, locations, weights):
    """Straight from the contract: pixel x*W - 0.5, four corners, each outside the map contributes 0."""
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = locations.shape
    starts = np.cumsum([0] + [h * w for h, w in shapes])[:-1]
    out = np.zeros((N, Lq, M, D), dtype=np.float64)
    for n in range(N):
        for q in range(Lq):
            for m in range(M):
                for lvl, (H, W) in enumerate(shapes):
                    for p in range(P):
                        x = locations[n, q, m, lvl, p, 0] * W - 0.5
                        y = locations[n, q, m, lvl, p, 1] * H - 0.5
                        x0, y0 = int(np.floor(x)), int(np.floor(y))
                        acc = np.zeros(D)
                        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                            if 0 <= xi < W and 0 <= yi < H:
                                wgt = (1 - abs(x - xi)) * (1 - abs(y - yi))
                                acc += wgt * value[n, starts[lvl] + yi * W + xi, m]
                        out[n, q, m] += weights[n, q, m, lvl, p] * acc
    return out.reshape(N, Lq, M * D)


LEVEL_SETS = {1: [(5, 7)], 3: [(6, 6), (3, 5), (1, 1)], 4: [(8, 6), (4, 3), (2, 2), (1, 1)]}


def _inputs(shapes, points, dim, heads=2, queries=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in shapes)
    L = len(shapes)
    value = torch.randn(1, S, heads, dim, generator=g, dtype=torch.float64)
    # Inside, on the edge of and outside each map: [-0.3, 1.3] covers all three.
    loc = torch.rand(1, queries, heads, L, points, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    loc[0, 0, :, :, 0] = 0.0        # the map's corner: only one corner pixel, a quarter weight
    loc[0, 0, :, :, 1] = 1.0        # the opposite corner
    loc[0, 1, :, :, :, 0] = -0.5    # far outside: contributes exactly zero
    weights = torch.rand(1, queries, heads, L, points, generator=g, dtype=torch.float64)
    return value, loc, weights


@pytest.mark.parametrize("levels", [1, 3, 4])
@pytest.mark.parametrize("points,dim", [(4, 32), (8, 64)])
def test_msda_matches_independent_bilinear_loop(levels, points, dim):
    shapes = LEVEL_SETS[levels]
    value, loc, weights = _inputs(shapes, points, dim)
    starts = torch.tensor(np.cumsum([0] + [h * w for h, w in shapes])[:-1])
    out = ms_deform_attn(value, torch.tensor(shapes), starts, loc, weights)
    ref = bilinear_loop(value.numpy(), shapes, loc.numpy(), weights.numpy())
    assert out.shape == (1, loc.shape[1], value.shape[2] * dim)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-10)


def test_msda_zero_pads_outside_the_map():
    shapes = [(4, 4)]
    value = torch.ones(1, 16, 1, 1, dtype=torch.float64)
    loc = torch.tensor([0.5, -0.2, 1.2, 0.0], dtype=torch.float64)
    locations = torch.stack([loc, torch.full_like(loc, 0.5)], -1).view(1, 4, 1, 1, 1, 2)
    out = ms_deform_attn(value, shapes, None, locations, torch.ones(1, 4, 1, 1, 1, dtype=torch.float64))
    # Centre: all four corners inside. Outside: nothing. x = 0: the pixel at x*W-0.5 = -0.5 is half off.
    np.testing.assert_allclose(out.flatten().numpy(), [1.0, 0.0, 0.0, 0.5], atol=1e-12)


def test_msda_rejects_inconsistent_level_start_index():
    shapes = [(2, 2), (1, 1)]
    value, loc, weights = _inputs(shapes, 4, 8)
    with pytest.raises(ValueError, match="level_start_index"):
        ms_deform_attn(value, shapes, [0, 3], loc, weights)
    with pytest.raises(ValueError, match="spatial_shapes sum"):
        ms_deform_attn(value, [(2, 2), (2, 2)], None, loc, weights)


def test_msdeformattn_weights_sum_to_one_over_levels_and_points():
    torch.manual_seed(0)
    m = MSDeformAttn(dim=32, levels=3, heads=4, points=4)
    torch.nn.init.normal_(m.attention_weights.weight)
    q = torch.randn(2, 5, 32)
    w = m.attention_weights(q).view(2, 5, 4, 12).softmax(-1)
    assert torch.allclose(w.sum(-1), torch.ones(2, 5, 4))
    shapes = [(4, 4), (2, 2), (1, 1)]
    out = m(q, torch.rand(2, 5, 3, 2), torch.randn(2, 21, 32), shapes)
    assert out.shape == (2, 5, 32)
