"""PyTorch binding of the MSDA CUDA kernel (plugins_trt/msda/), built on first use with torch.utils.cpp_extension.

    from plugins_trt import msda_op
    if msda_op.is_available():                     # a CUDA GPU, a CUDA build of PyTorch, nvcc
        out = msda_op.ms_deform_attn_cuda(value, shapes, starts, locations, weights)   # (N, Lq, M*D)
        with msda_op.use_cuda_kernel():            # every llmformer.msda.ms_deform_attn call on CUDA tensors
            masks = segmenter(*inputs)

Same contract as llmformer.msda.ms_deform_attn. Inference only (no backward). FP16 value runs with FP32 coordinates,
bilinear weights and sums, so FP16 keeps sub-pixel precision on large levels.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

import torch

MSDA_DIR = Path(__file__).resolve().parent / "msda"
SOURCES = ("torch_binding.cpp", "msdaKernel.cu", "msdaNaiveKernel.cu")
EXTENSION_NAME = "llmformer_msda_cuda"


def nvcc_path() -> str | None:
    """nvcc from CUDA_HOME, PATH, or /usr/local/cuda (where JetPack and the CUDA installers put it)."""
    candidates = [Path(os.environ[v]) / "bin" / "nvcc" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    found = shutil.which("nvcc")
    candidates += [Path(found)] if found else []
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    return next((str(c) for c in candidates if c.is_file()), None)


def unavailable_reason() -> str | None:
    """Why the kernel cannot run here, or None when it can."""
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (no GPU visible or no driver)"
    if nvcc_path() is None:
        return "nvcc not found (set CUDA_HOME or put the CUDA toolkit's bin/ on PATH) to build the binding"
    return None


def is_available() -> bool:
    return unavailable_reason() is None


@functools.lru_cache(maxsize=None)
def load(verbose: bool = False) -> None:
    """Build (first call, cached by torch in ~/.cache/torch_extensions) and load the binding; registers
    torch.ops.llmformer_cuda.ms_deform_attn. Set TORCH_CUDA_ARCH_LIST to build for other GPUs than this one."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"MSDA CUDA kernel unavailable: {reason}. llmformer.msda.ms_deform_attn runs anywhere.")
    nvcc = nvcc_path()
    if "CUDA_HOME" not in os.environ and shutil.which("nvcc") is None:
        os.environ["CUDA_HOME"] = str(Path(nvcc).parents[1])
    from torch.utils import cpp_extension

    if cpp_extension.is_ninja_available():
        cpp_extension.load(
            name=EXTENSION_NAME,
            sources=[str(MSDA_DIR / s) for s in SOURCES],
            extra_include_paths=[str(MSDA_DIR)],
            extra_cflags=["-O3"],  # cpp_extension picks the C++ standard torch's headers need (C++20 in 2.13)
            extra_cuda_cflags=["-O3"],
            is_python_module=False,
            verbose=verbose,
        )
    else:  # cpp_extension.load needs ninja; offline machines may not have it
        torch.ops.load_library(str(_build_without_ninja(nvcc, verbose)))

    @torch.library.register_fake("llmformer_cuda::ms_deform_attn")
    def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, naive=False):
        N, _, M, D = value.shape
        return value.new_empty(N, sampling_locations.shape[1], M, D)


def _arch_flags() -> list[str]:
    """-gencode flags from TORCH_CUDA_ARCH_LIST ("8.7;9.0", "8.7 9.0+PTX"), else this GPU's architecture."""
    listed = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(";", " ").split()
    archs = [a.replace("+PTX", "").replace(".", "") for a in listed] or ["%d%d" % torch.cuda.get_device_capability()]
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def _build_without_ninja(nvcc: str, verbose: bool) -> Path:
    """Compile and link the binding with nvcc and the host compiler directly (what cpp_extension does with
    ninja), into TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions; rebuilt when a source is newer."""
    import subprocess
    import sysconfig

    from torch.utils import cpp_extension

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    build = root / f"{EXTENSION_NAME}_no_ninja"
    build.mkdir(parents=True, exist_ok=True)
    library = build / f"{EXTENSION_NAME}.so"
    sources = [MSDA_DIR / s for s in SOURCES]
    inputs = sources + [MSDA_DIR / "msdaKernel.h", MSDA_DIR / "msdaKernel.cuh"]
    if library.is_file() and library.stat().st_mtime > max(p.stat().st_mtime for p in inputs):
        return library
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    includes = [f"-I{p}" for p in [str(MSDA_DIR), *cpp_extension.include_paths(device_type="cuda"),
                                   sysconfig.get_paths()["include"]]]
    objects = []
    for src in sources:
        obj = build / (src.stem + ".o")
        if src.suffix == ".cu":
            cmd = [nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", abi, *_arch_flags(), *includes,
                   "-c", str(src), "-o", str(obj)]
        else:
            cmd = [os.environ.get("CXX", "c++"), "-O3", "-std=c++20", "-fPIC", abi, *includes, "-c", str(src),
                   "-o", str(obj)]  # C++20: what torch 2.13's headers are written for
        if verbose:
            print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        objects.append(str(obj))
    lib_dirs = cpp_extension.library_paths(device_type="cuda")
    cmd = [os.environ.get("CXX", "c++"), "-shared", *objects, "-o", str(library), *[f"-L{d}" for d in lib_dirs],
           *[f"-Wl,-rpath,{d}" for d in lib_dirs], "-lc10", "-lc10_cuda", "-ltorch", "-ltorch_cpu", "-ltorch_cuda",
           "-lcudart"]
    if verbose:
        print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return library


_level_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def level_table(shapes: Sequence[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(spatial_shapes, level_start_index) as INT32 tensors on `device`, made once per (shapes, device): a static
    pyramid then costs no host-to-device copy per call."""
    key = (tuple((int(h), int(w)) for h, w in shapes), str(device))
    if key not in _level_tables:
        sizes = [h * w for h, w in key[0]]
        _level_tables[key] = (torch.tensor(key[0], dtype=torch.int32, device=device).reshape(-1, 2),
                              torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], dtype=torch.int32,
                                           device=device))
    return _level_tables[key]


def ms_deform_attn_cuda(
    value: torch.Tensor,                                  # (N, S, M, D) float32 / float16
    spatial_shapes: torch.Tensor | Sequence[tuple[int, int]],   # (L, 2) [H, W]
    level_start_index: torch.Tensor | Sequence[int] | None,     # (L,)
    sampling_locations: torch.Tensor,                     # (N, Lq, M, L, P, 2) float32 (or value's float16)
    attention_weights: torch.Tensor,                      # (N, Lq, M, L, P)
    *,
    naive: bool = False,                                  # the one-thread-per-channel baseline kernel
) -> torch.Tensor:                                        # (N, Lq, M*D), value's dtype
    load()
    if isinstance(spatial_shapes, torch.Tensor):
        shapes = spatial_shapes
        if level_start_index is None:
            sizes = shapes[:, 0] * shapes[:, 1]
            level_start_index = sizes.cumsum(0) - sizes
    else:
        static = [(int(h), int(w)) for h, w in spatial_shapes]
        if sum(h * w for h, w in static) != value.shape[1]:
            raise ValueError(f"value has S={value.shape[1]} tokens but spatial_shapes {static} sum to "
                             f"{sum(h * w for h, w in static)}")
        shapes, starts = level_table(static, value.device)
        level_start_index = starts if level_start_index is None else level_start_index
    if not isinstance(level_start_index, torch.Tensor):
        level_start_index = torch.tensor([int(s) for s in level_start_index], device=value.device)
    level_start_index = level_start_index.to(shapes.dtype)
    out = torch.ops.llmformer_cuda.ms_deform_attn(value, shapes, level_start_index, sampling_locations,
                                                  attention_weights, naive)                # (N, Lq, M, D)
    return out.flatten(2)


def _dispatch(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    from llmformer import msda

    if value.is_cuda:
        return ms_deform_attn_cuda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    with msda.msda_implementation(None):
        return msda.ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@contextlib.contextmanager
def use_cuda_kernel() -> Iterator[None]:
    """Inside the block, llmformer.msda.ms_deform_attn runs this kernel for CUDA tensors (the reference for the
    rest). Raises at entry, with the reason, when the kernel cannot run here."""
    from llmformer import msda

    load()
    with msda.msda_implementation(_dispatch):
        yield
