import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def tiny_preset(name: str = "demo", **segmenter_overrides):
    """A preset with the named preset's structure (layer counts, queries, mask stride, switches) but tiny
    widths, a 64 px frame and a 2-block random ViT, so its forward pass takes milliseconds."""
    from llmformer.presets import TextEncoderConfig, VisionTowerConfig, get_preset

    p = get_preset(name)
    tower = VisionTowerConfig(image_size=56, patch_size=14, hidden_size=32, num_layers=2, num_heads=2,
                              intermediate_size=64, feature_layers=(1, 2))
    text = TextEncoderConfig(source=None, max_length=8, embed_dim=16, hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=32)
    if p.text_encoder.kind == "clip":
        text = dataclasses.replace(text, kind="clip")
    seg = dataclasses.replace(p.segmenter, frame_size=64, dim=32, stem_channels=8, vit_dim=32, vit_grid=4,
                              vit_has_cls=True, vit_layers=2, text_dim=16, heads=4, points=2, adapter_ffn=32,
                              encoder_ffn=32, decoder_ffn=32, **segmenter_overrides)
    # The tiny tower fits no shipped checkpoint: a tiny random captioner, a random segmenter.
    return dataclasses.replace(p, vision_tower=tower, text_encoder=text, segmenter=seg, segmenter_weights=None,
                               captioner="tiny" if p.captioner else None)


@pytest.fixture
def tiny():
    return tiny_preset


class MSDAWrapper(torch.nn.Module):
    """An MSDeformAttn with its level shapes bound, so the module traces with three tensor inputs."""

    def __init__(self, attn, shapes):
        super().__init__()
        self.attn, self.shapes = attn, shapes

    def forward(self, query, reference, value):
        return self.attn(query, reference, value, self.shapes)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    """tiny_preset() built by export.build_engines, once per test session. Read-only: copy it before
    altering files."""
    from export.build_engines import build, parse_args

    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    build(parse_args(["--out", str(out)]), preset=tiny_preset())
    return out


class Clock:
    """A fake clock for the caption policy: call it for the time, set `t` to move it."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def run_without_torch(body: str, hidden: tuple[str, ...] = ("torch", "transformers", "llmformer")) -> None:
    """Run `body` (Python source) in a fresh interpreter where the `hidden` packages cannot be imported (by
    default torch, transformers and the PyTorch side's `llmformer`, as on a Jetson that installs only the
    runtime's needs), then check it imported none of them and ran to the end."""
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        HIDDEN = {tuple(hidden)!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in HIDDEN:
                    raise ModuleNotFoundError(f'No module named {{name!r}} (hidden by the test)')
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(ROOT)!r})
    """) + textwrap.dedent(body) + textwrap.dedent("""
        assert not any(m.split('.')[0] in HIDDEN for m in sys.modules), [m for m in sys.modules if m.split('.')[0] in HIDDEN]
        print('ok')
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
