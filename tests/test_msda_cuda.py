"""The MSDA CUDA kernel (plugins_trt/msda/): compiles for Jetson Orin, Ada and Hopper everywhere nvcc is, and on
a GPU matches llmformer/msda.py (FP32 to 1e-5, FP16 to 1e-2 relative), including locations outside the maps and a
1x1 level, and is clean under compute-sanitizer.

The GPU tests skip with the reason on machines without a CUDA GPU; plugins_trt/gpu_check.sh runs them.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from llmformer import msda
from llmformer.msda import MSDeformAttn, ms_deform_attn
from plugins_trt import msda_op

MSDA_DIR = Path(__file__).resolve().parents[1] / "plugins_trt" / "msda"
KERNEL_SOURCES = ("msdaKernel.cu", "msdaNaiveKernel.cu", "tests/msdaKernelTest.cu")
ARCHS = ("87", "89", "90")  # Jetson Orin, Ada (L4, RTX 40xx), Hopper (H100)
NVCC_FLAGS = ["-std=c++17", "-O3", "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror"]


def _nvcc():
    return msda_op.nvcc_path()


def test_kernel_compiles_for_orin_ada_hopper(tmp_path):
    """nvcc, warnings as errors, sm_87/sm_89/sm_90 in one call (--threads compiles the archs in parallel)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found on PATH, in CUDA_HOME or /usr/local/cuda/bin")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = [nvcc, *NVCC_FLAGS, *gencode, "--threads", str(min(len(ARCHS), os.cpu_count() or 1)),
           "-Xptxas", "-v", f"-I{MSDA_DIR}", "-c", *[str(MSDA_DIR / s) for s in KERNEL_SOURCES], "-odir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    for source in KERNEL_SOURCES:
        assert (tmp_path / (Path(source).stem + ".o")).is_file()
    # ptxas reports every kernel it compiles, per architecture: all three must be there, for both kernels.
    compiled = re.findall(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", result.stderr)
    for arch in ARCHS:
        kernels = {name for name, a in compiled if a == arch}
        assert any("msdaForwardKernel" in k for k in kernels), f"optimized kernel not built for sm_{arch}"
        assert any("msdaNaiveKernel" in k for k in kernels), f"naive kernel not built for sm_{arch}"


# ------------------------------------------------------------------------------------------------ GPU tests
gpu = pytest.mark.skipif(not msda_op.is_available(),
                         reason=f"MSDA CUDA kernel cannot run here: {msda_op.unavailable_reason()}")

PYRAMIDS = {
    1: [(13, 17)],
    3: [(16, 20), (8, 10), (1, 1)],            # a 1x1 level: every location but its centre needs zero padding
    4: [(24, 24), (12, 12), (6, 6), (1, 1)],
}


@pytest.fixture(scope="module")
def built():
    msda_op.load(verbose=bool(os.environ.get("LLMFORMER_VERBOSE_BUILD")))


def _inputs(shapes, heads, head_dim, points, dtype=torch.float32, batch=2, queries=97, seed=0, lo=-0.25, hi=1.25):
    """Random MSDA inputs on the GPU; locations in [lo, hi] so a good share falls outside the maps."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    S, L = sum(h * w for h, w in shapes), len(shapes)
    value = torch.randn(batch, S, heads, head_dim, device="cuda", generator=g).to(dtype)
    loc = torch.rand(batch, queries, heads, L, points, 2, device="cuda", generator=g) * (hi - lo) + lo
    weights = torch.rand(batch, queries, heads, L, points, device="cuda", generator=g).softmax(-1)
    return value, loc, weights


def _reference(value, shapes, loc, weights):
    return ms_deform_attn(value.float(), shapes, None, loc.float(), weights.float())


def _close_fp16(got, ref):
    torch.testing.assert_close(got.float(), ref, rtol=1e-2, atol=1e-3)


@gpu
@pytest.mark.parametrize("naive", [False, True], ids=["optimized", "naive"])
@pytest.mark.parametrize("head_dim", [32, 64])
@pytest.mark.parametrize("points", [4, 8])
@pytest.mark.parametrize("levels", [1, 3, 4])
def test_kernel_matches_reference_fp32(built, levels, points, head_dim, naive):
    shapes = PYRAMIDS[levels]
    value, loc, weights = _inputs(shapes, 4, head_dim, points)
    got = msda_op.ms_deform_attn_cuda(value, shapes, None, loc, weights, naive=naive)
    torch.testing.assert_close(got, _reference(value, shapes, loc, weights), rtol=1e-5, atol=1e-5)


@gpu
@pytest.mark.parametrize("naive", [False, True], ids=["optimized", "naive"])
@pytest.mark.parametrize("head_dim", [32, 64])
@pytest.mark.parametrize("points", [4, 8])
@pytest.mark.parametrize("levels", [1, 3, 4])
def test_kernel_matches_reference_fp16(built, levels, points, head_dim, naive):
    shapes = PYRAMIDS[levels]
    value, loc, weights = _inputs(shapes, 4, head_dim, points, dtype=torch.float16)
    got = msda_op.ms_deform_attn_cuda(value, shapes, None, loc, weights, naive=naive)
    assert got.dtype == torch.float16
    _close_fp16(got, _reference(value, shapes, loc, weights))


@gpu
def test_fp16_locations_are_accepted_with_fp16_values(built):
    shapes = PYRAMIDS[3]
    value, loc, weights = _inputs(shapes, 8, 32, 4, dtype=torch.float16)
    loc16, w16 = loc.half(), weights.half()
    got = msda_op.ms_deform_attn_cuda(value, shapes, None, loc16, w16)
    _close_fp16(got, _reference(value, shapes, loc16, w16))


@gpu
def test_fp16_keeps_sub_pixel_precision_on_a_256_wide_level(built):
    """Bilinear sampling reproduces a value that is linear in x exactly, so the output is the sampled pixel
    coordinate itself. Values (x - 128) / 256 are exact in FP16 and keep the output below 0.5, where FP16
    output rounding is at most 2^-13 = 0.031 px; coordinates computed in half precision would add up to
    0.0625 px (half the FP16 spacing near x = 200), which is the loss this kernel exists to avoid."""
    W, H, M, D = 256, 2, 1, 8
    xs = (torch.arange(W, device="cuda", dtype=torch.float32) - W / 2) / W
    value = xs.repeat(H).view(1, H * W, 1, 1).expand(1, H * W, M, D).contiguous().half()
    loc = torch.rand(1, 500, M, 1, 1, 2, device="cuda") * 0.9 + 0.05
    loc[..., 1] = 0.5
    weights = torch.ones(1, 500, M, 1, 1, device="cuda")
    got = msda_op.ms_deform_attn_cuda(value, [(H, W)], None, loc, weights).float()[..., 0]  # channel 0
    expected = (loc[:, :, 0, 0, 0, 0] * W - 0.5 - W / 2) / W                # (N, Lq), like got
    assert ((got - expected).abs() * W).max() < 0.035


@gpu
def test_int64_and_int32_level_tables_agree(built):
    shapes = PYRAMIDS[4]
    value, loc, weights = _inputs(shapes, 8, 32, 4)
    t32, s32 = msda_op.level_table(shapes, value.device)
    got32 = msda_op.ms_deform_attn_cuda(value, t32, s32, loc, weights)
    got64 = msda_op.ms_deform_attn_cuda(value, t32.long(), s32.long(), loc, weights)
    assert torch.equal(got32, got64)


@gpu
@pytest.mark.parametrize("shapes,heads,head_dim,points", [
    ([(7, 9), (4, 5)], 3, 16, 3),                 # generic template, vectorized
    ([(6, 6), (5, 4), (3, 3), (2, 2), (1, 1)], 2, 7, 2),  # 5 levels, 7 channels: scalar path
    ([(4, 4)] * 17, 2, 32, 2),                   # more levels than the optimized kernel stages: naive fallback
])
def test_generic_shapes_match_reference(built, shapes, heads, head_dim, points):
    value, loc, weights = _inputs(shapes, heads, head_dim, points)
    ref = _reference(value, shapes, loc, weights)
    for dtype in (torch.float32, torch.float16):
        got = msda_op.ms_deform_attn_cuda(value.to(dtype), shapes, None, loc, weights)
        if dtype == torch.float32:
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        else:
            _close_fp16(got, _reference(value.to(dtype), shapes, loc, weights))


@gpu
def test_misaligned_value_takes_the_scalar_path_and_still_matches(built):
    shapes = PYRAMIDS[3]
    value, loc, weights = _inputs(shapes, 4, 32, 4)
    storage = torch.empty(value.numel() + 1, device="cuda")
    shifted = storage[1:].view_as(value)  # 4 bytes off a 16-byte boundary, still contiguous
    shifted.copy_(value)
    got = msda_op.ms_deform_attn_cuda(shifted, shapes, None, loc, weights)
    torch.testing.assert_close(got, _reference(value, shapes, loc, weights), rtol=1e-5, atol=1e-5)


@gpu
def test_locations_all_outside_give_zeros_and_nan_locations_contribute_nothing(built):
    shapes = PYRAMIDS[3]
    value, loc, weights = _inputs(shapes, 4, 32, 4, lo=1.6, hi=3.0)
    assert torch.count_nonzero(msda_op.ms_deform_attn_cuda(value, shapes, None, loc, weights)) == 0
    loc[0, 0, 0, 0, 0, 0] = float("nan")
    out = msda_op.ms_deform_attn_cuda(value, shapes, None, loc, weights)
    assert torch.isfinite(out).all()


@gpu
def test_empty_query_set_returns_an_empty_output(built):
    shapes = PYRAMIDS[1]
    value, loc, weights = _inputs(shapes, 4, 32, 4, queries=0)
    assert msda_op.ms_deform_attn_cuda(value, shapes, None, loc, weights).shape == (2, 0, 4 * 32)


@gpu
def test_bad_inputs_get_clear_errors(built):
    shapes = PYRAMIDS[3]
    value, loc, weights = _inputs(shapes, 4, 32, 4)
    with pytest.raises(RuntimeError, match="float32 or float16"):
        msda_op.ms_deform_attn_cuda(value.bfloat16(), shapes, None, loc, weights)
    with pytest.raises(RuntimeError, match="attention_weights must be"):
        msda_op.ms_deform_attn_cuda(value, shapes, None, loc, weights[:, :, :2])
    with pytest.raises(ValueError, match="sum to"):
        msda_op.ms_deform_attn_cuda(value, shapes[:2], None, loc[:, :, :, :2], weights[:, :, :, :2])


@gpu
def test_use_cuda_kernel_routes_msdeformattn(built):
    torch.manual_seed(0)
    attn = MSDeformAttn(256, 3, 8, 4).cuda().eval()
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(std=0.5)
    shapes = PYRAMIDS[3]
    S = sum(h * w for h, w in shapes)
    q, ref_pts, v = torch.randn(1, 50, 256).cuda(), torch.rand(1, 50, 3, 2).cuda(), torch.randn(1, S, 256).cuda()
    with torch.no_grad():
        expected = attn(q, ref_pts, v, shapes)
        with msda_op.use_cuda_kernel():
            got = attn(q, ref_pts, v, shapes)
    assert msda._implementation is None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _build_standalone_test(tmp_path) -> Path:
    major, minor = torch.cuda.get_device_capability()
    binary = tmp_path / "msdaKernelTest"
    cmd = [_nvcc(), "-std=c++17", "-O2", "-lineinfo", f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}",
           f"-I{MSDA_DIR}", *[str(MSDA_DIR / s) for s in KERNEL_SOURCES], "-o", str(binary)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return binary


@gpu
def test_standalone_kernel_test_passes(tmp_path):
    binary = _build_standalone_test(tmp_path)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALL PASSED" in result.stdout


@gpu
def test_kernels_are_memcheck_clean(tmp_path):
    candidates = [shutil.which("compute-sanitizer"), Path(_nvcc()).parent / "compute-sanitizer",
                  "/usr/local/cuda/bin/compute-sanitizer"]
    sanitizer = next((str(c) for c in candidates if c and Path(c).is_file()), None)
    if sanitizer is None:
        pytest.skip("compute-sanitizer not found on PATH, next to nvcc or in /usr/local/cuda/bin")
    binary = _build_standalone_test(tmp_path)
    result = subprocess.run([sanitizer, "--tool", "memcheck", "--error-exitcode", "3", str(binary), "--small"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR SUMMARY: 0 errors" in result.stdout + result.stderr
