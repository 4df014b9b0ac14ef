"""The artifact contract: what `export/build_engines.py` writes and `runtime.load()` reads, typed once.

Three things live here, torch-free, so a Jetson without PyTorch reads the same definitions the exporter
wrote with:

- **Tensor names** of every graph as named fields (`SEGMENTER.object_embeddings`), never by position: the
  segmenter's object and attribute embeddings have the same shape, so a reorder would pass every shape
  check. `inputs` / `outputs` give the graph's order, which only the exporter needs.
- **`TensorSpec`**: one named input or output with its dtype and shape range.
- **`Manifest`**: `manifest.json` as dataclasses with `from_json` / `to_json`. Reading validates every key
  and names the one that is missing or malformed (`ManifestError: manifest.json: components.segmenter.onnx
  .sha256 is missing`), and checks that each component has the tensors this code feeds it.

`read_manifest(folder)` adds the folder checks: every listed file exists inside the folder (no absolute
paths, `..` or symlinks out of it) with the recorded size and sha256.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, Callable, ClassVar, Iterator, Mapping

import numpy as np

from engines.errors import EngineError, ManifestError
from engines.files import atomic_write_bytes, fingerprint_file, sha256_file

__all__ = [
    "BATCH_AXIS", "PRIORS_AXIS", "VOCAB_AXIS", "CLASS_AXIS", "PHRASES_AXIS", "ComponentNames", "VISION_TOWER",
    "TEXT_ENCODER", "SEGMENTER", "CAPTIONER_VISION", "CAPTIONER_EMBED", "CAPTIONER_DECODER", "FRAME_PREPROCESS",
    "SEMANTIC_MAP", "FRAME_HEIGHT_AXIS", "FRAME_WIDTH_AXIS", "TensorSpec", "FileEntry",
    "TorchSource", "TensorRTEngineEntry", "ComponentEntry", "Preprocess", "CaptionerEntry", "Sample", "Manifest",
    "FORMAT", "FORMAT_VERSION", "MANIFEST_NAME", "read_manifest", "write_manifest", "file_entry",
]

# ================================================================================================ names
# Dynamic axes of the exported graphs (the manifest's shape ranges and TensorRT profiles use them).
BATCH_AXIS = "batch"                              # frames per vision/segmenter call, B (build_engines --max-batch)
PRIORS_AXIS = "priors"                            # objects parsed from the caption, K
VOCAB_AXIS = "vocab"                              # class names, V
CLASS_AXIS = "vocab_plus_no_object"               # V + 1
PHRASES_AXIS = "phrases"                          # text-encoder batch
FRAME_HEIGHT_AXIS = "frame_height"                # the caller's frame, H (frame graphs)
FRAME_WIDTH_AXIS = "frame_width"                  # ... and W


def _input(name: str):
    return field(default=name, metadata={"role": "input"})


def _output(name: str):
    return field(default=name, metadata={"role": "output"})


@dataclass(frozen=True)
class ComponentNames:
    """A graph's component name and its tensor names in graph order."""

    component: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class _Graph:
    """Tensor names as fields; field order is graph order (the order of the module's forward arguments)."""

    component: ClassVar[str]

    def _role(self, role: str) -> tuple[str, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if f.metadata.get("role") == role)

    @property
    def inputs(self) -> tuple[str, ...]:
        return self._role("input")

    @property
    def outputs(self) -> tuple[str, ...]:
        return self._role("output")

    @property
    def names(self) -> ComponentNames:
        return ComponentNames(self.component, self.inputs, self.outputs)


@dataclass(frozen=True)
class VisionTowerNames(_Graph):
    component: ClassVar[str] = "vision_tower"
    pixel_values: str = _input("pixel_values")                    # (B, 3, S, S) float32, the tower's normalization
    vision_hidden_states: str = _output("vision_hidden_states")   # (n_layers, B, T, C)


@dataclass(frozen=True)
class TextEncoderNames(_Graph):
    component: ClassVar[str] = "text_encoder"
    input_ids: str = _input("input_ids")                          # (B, L) int64
    attention_mask: str = _input("attention_mask")                # (B, L) int64
    text_embeddings: str = _output("text_embeddings")             # (B, E), L2-normalized


@dataclass(frozen=True)
class SegmenterNames(_Graph):
    component: ClassVar[str] = "segmenter"
    frame: str = _input("frame")                                  # (B, 3, H, W) float32, ImageNet normalization
    vision_hidden_states: str = _input("vision_hidden_states")    # (n_layers, B, T, C)
    object_embeddings: str = _input("object_embeddings")          # (B, K, E)
    attribute_embeddings: str = _input("attribute_embeddings")    # (B, K, E)
    prior_valid: str = _input("prior_valid")                      # (B, K) float32: 1 prior, 0 padding
    relation_graph: str = _input("relation_graph")                # (B, K, K) float32
    vocab_embeddings: str = _input("vocab_embeddings")            # (V, E), shared by the batch's frames
    mask_logits: str = _output("mask_logits")                     # (B, Q, H/s, W/s)
    class_logits: str = _output("class_logits")                   # (B, Q, V+1)


# The captioner (LLaVA-Phi). Its vision graph is the vision tower plus the projector: one tower pass per
# frame gives the captioner its image embeddings and the segmenter its hidden states.
@dataclass(frozen=True)
class CaptionerVisionNames(_Graph):
    component: ClassVar[str] = "captioner_vision"
    pixel_values: str = _input("pixel_values")                    # (B, 3, S, S) float32, CLIP normalization
    image_embeds: str = _output("image_embeds")                   # (B, N, E_text)
    vision_hidden_states: str = _output("vision_hidden_states")   # (L, B, T, C), as the vision tower's


@dataclass(frozen=True)
class CaptionerEmbedNames(_Graph):
    component: ClassVar[str] = "captioner_embed"
    input_ids: str = _input("input_ids")                          # (1, S) int64
    inputs_embeds: str = _output("inputs_embeds")                 # (1, S, E_text)


@dataclass(frozen=True)
class CaptionerDecoderNames(_Graph):
    """The decoder's fixed tensors; past/present come per layer (`for_layers`), named as optimum names them."""

    component: ClassVar[str] = "captioner_decoder"
    inputs_embeds: str = _input("inputs_embeds")                  # (1, S, E_text) float32
    attention_mask: str = _input("attention_mask")                # (1, P + S) int64: 1 = a valid slot / token
    position_ids: str = _input("position_ids")                    # (1, S) int64
    logits: str = _output("logits")                               # (1, 1, V): the last position only

    def past(self, n_layers: int) -> tuple[str, ...]:
        """past_key_values.{i}.key/.value per layer: (1, Hkv, P, D), the cache buffer."""
        return tuple(f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value"))

    def present(self, n_layers: int) -> tuple[str, ...]:
        """present.{i}.key/.value per layer: (1, Hkv, S, D), the keys/values of this call's tokens only."""
        return tuple(f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value"))

    def for_layers(self, n_layers: int) -> ComponentNames:
        return ComponentNames(self.component, self.inputs + self.past(n_layers), self.outputs + self.present(n_layers))


# The frame graphs (issue 17): preprocessing and semantic inference on the engines' device, so a frame crosses
# to the device once (uint8) and only labels and scores come back. Optional: a build without them (older, or
# `--host-postprocess`) runs both stages in numpy/OpenCV (runtime/frames.py).
@dataclass(frozen=True)
class FramePreprocessNames(_Graph):
    component: ClassVar[str] = "frame_preprocess"
    image: str = _input("image")                                  # (1, H, W, 3) uint8 RGB, any H, W
    pixel_values: str = _output(VisionTowerNames.pixel_values)    # (1, 3, S_v, S_v): the tower's input
    frame: str = _output(SegmenterNames.frame)                    # (1, 3, S_s, S_s): the segmenter's input


@dataclass(frozen=True)
class SemanticMapNames(_Graph):
    component: ClassVar[str] = "semantic_map"
    mask_logits: str = _input(SegmenterNames.mask_logits)         # (1, Q, h, w) float32
    class_logits: str = _input(SegmenterNames.class_logits)       # (1, Q, V+1) float32
    image: str = _input(FramePreprocessNames.image)               # (1, H, W, 3) uint8: only its shape is read
    labels: str = _output("labels")                               # (1, H, W) uint8 (V <= 256) or int32
    scores: str = _output("scores")                               # (V,) float32, as runtime.frames.semantic_map


VISION_TOWER = VisionTowerNames()
TEXT_ENCODER = TextEncoderNames()
SEGMENTER = SegmenterNames()
CAPTIONER_VISION = CaptionerVisionNames()
CAPTIONER_EMBED = CaptionerEmbedNames()
CAPTIONER_DECODER = CaptionerDecoderNames()
FRAME_PREPROCESS = FramePreprocessNames()
SEMANTIC_MAP = SemanticMapNames()


# ================================================================================================ reading JSON
class _At:
    """A position in the manifest ("components.segmenter.onnx"), so every error names the key it is about."""

    def __init__(self, node: Any, where: str):
        self.node, self.where = node, where
        if not isinstance(node, Mapping):
            raise ManifestError(f"{MANIFEST_NAME}: {where or 'the top level'} must be an object, got "
                                f"{_kind(node)}")

    @classmethod
    def of(cls, d: "Mapping[str, Any] | _At", where: str) -> "_At":
        """`d` itself when it already knows its place in the manifest, else a reader for a plain dict."""
        return d if isinstance(d, _At) else cls(d, where)

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return self.node.get(key) is not None

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., check: Callable[[Any], bool] | None = None,
            expect: str = "") -> Any:
        """The value at `key`, of type `kind`; a missing key is an error unless a default is given."""
        if key not in self.node or self.node[key] is None:
            if default is ...:
                raise ManifestError(f"{MANIFEST_NAME}: {self._key(key)} is missing")
            return default
        value = self.node[key]
        # bool is an int in Python; a manifest with `"size": true` is malformed all the same.
        wrong_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
        if not isinstance(value, kind) or wrong_bool or (check is not None and not check(value)):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ManifestError(f"{MANIFEST_NAME}: {self._key(key)} must be {expect or names}, got {value!r:.80}")
        return value

    def sub(self, key: str, optional: bool = False) -> "_At | None":
        if optional and not self.has(key):
            return None
        return _At(self.get(key, dict), self._key(key))

    def items(self, key: str, optional: bool = False) -> Iterator["_At"]:
        values = self.get(key, list, [] if optional else ...)
        for i, value in enumerate(values):
            yield _At(value, f"{self._key(key)}[{i}]")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _shape_ok(shape: Any) -> bool:
    return all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in shape)


def _ints(shape: Any) -> bool:
    return all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)


# ================================================================================================ TensorSpec
@dataclass(frozen=True)
class TensorSpec:
    """One named input or output. `shape` holds ints for fixed axes and strings for dynamic ones;
    `min_shape`/`max_shape` give the range of the dynamic axes (what TensorRT profiles are made from)."""

    name: str
    dtype: str                      # numpy dtype name: "float32", "int64", ...
    shape: tuple[int | str, ...]
    min_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None

    @property
    def one_frame(self) -> tuple[int | str, ...]:
        """The shape with the batch axis (BATCH_AXIS) at one frame: what a single-frame call binds."""
        return tuple(1 if d == BATCH_AXIS else d for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        for k in ("min_shape", "max_shape"):
            d[k] = None if d[k] is None else list(d[k])
        return d

    @classmethod
    def from_json(cls, d: "Mapping[str, Any] | _At") -> "TensorSpec":
        at = _At.of(d, "tensor")
        shape = tuple(at.get("shape", list, check=_shape_ok, expect="a list of ints and axis names"))
        ranges = {}
        for key in ("min_shape", "max_shape"):
            value = at.get(key, list, None, check=lambda s: _ints(s) and len(s) == len(shape),
                           expect=f"a list of {len(shape)} non-negative ints")
            ranges[key] = None if value is None else tuple(value)
        dtype = at.get("dtype", str)
        try:
            np.dtype(dtype)
        except TypeError as exc:
            raise ManifestError(f"{MANIFEST_NAME}: {at.where}.dtype {dtype!r} is not a numpy dtype") from exc
        return cls(name=at.get("name", str), dtype=dtype, shape=shape, **ranges)

    def check(self, array: np.ndarray, component: str) -> None:
        """Raise a clear error when `array` cannot be fed as this input."""
        if not isinstance(array, np.ndarray):
            raise EngineError(f"{component}: input '{self.name}' must be a numpy array, got {type(array).__name__}")
        if array.dtype != np.dtype(self.dtype):
            raise EngineError(f"{component}: input '{self.name}' must be {self.dtype}, got {array.dtype}")
        if array.ndim != len(self.shape):
            raise EngineError(f"{component}: input '{self.name}' must have {len(self.shape)} dims "
                              f"{list(self.shape)}, got shape {list(array.shape)}")
        for axis, (want, got) in enumerate(zip(self.shape, array.shape)):
            if isinstance(want, int) and want != got:
                raise EngineError(f"{component}: input '{self.name}' axis {axis} must be {want}, "
                                  f"got shape {list(array.shape)}")
            if self.min_shape is not None and got < self.min_shape[axis]:
                raise EngineError(f"{component}: input '{self.name}' axis {axis} is {got}, below the "
                                  f"built minimum {self.min_shape[axis]}")
            if self.max_shape is not None and got > self.max_shape[axis]:
                raise EngineError(f"{component}: input '{self.name}' axis {axis} is {got}, above the "
                                  f"built maximum {self.max_shape[axis]}; rebuild with a larger range")


# ================================================================================================ manifest
FORMAT = "llmformer-edge/artifacts"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
REBUILD_HINT = "rebuild with `python export/build_engines.py --out {folder}`"


def _relative_file(name: str) -> bool:
    """A file name inside the artifact folder: relative, no `..`, no backslashes or drive letters."""
    p = PurePosixPath(name)
    return bool(name) and "\\" not in name and ":" not in name and not p.is_absolute() and ".." not in p.parts


@dataclass
class FileEntry:
    """A file of the artifact folder, relative to it, with its size, sha256 (hashed once, at build) and a
    cheap fingerprint (engines.files.fingerprint_file) that `runtime.load()` checks by default."""

    file: str
    sha256: str
    size: int
    fingerprint: str | None = None       # None in folders built before fingerprints: those are fully hashed

    def to_json(self) -> dict[str, Any]:
        d = {"file": self.file, "sha256": self.sha256, "size": self.size}
        return d if self.fingerprint is None else {**d, "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, d: "Mapping[str, Any] | _At") -> "FileEntry":
        at = _At.of(d, "FileEntry")
        digest = dict(check=lambda s: len(s) == 64, expect="a sha256 hex digest")
        return cls(file=at.get("file", str, check=_relative_file, expect="a relative path inside the artifact folder"),
                   sha256=at.get("sha256", str, **digest),
                   size=at.get("size", int, check=lambda n: n >= 0, expect="a non-negative int"),
                   fingerprint=at.get("fingerprint", str, None, **digest))


def file_entry(folder: str | os.PathLike, name: str) -> FileEntry:
    """The entry of `folder/name` as it is on disk now."""
    path = Path(folder) / name
    return FileEntry(name, sha256_file(path), path.stat().st_size, fingerprint_file(path))


@dataclass
class TorchSource:
    """Where the PyTorch engine finds a captioner graph's module: one part of the saved LLaVA checkpoint
    (whose files the manifest lists once, under `captioner.checkpoint`)."""

    captioner: str                         # folder of the transformers checkpoint, relative to the artifacts
    part: str                              # "vision" | "embed" | "decoder"
    segmenter_layers: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"captioner": self.captioner, "part": self.part, "segmenter_layers": list(self.segmenter_layers)}

    @classmethod
    def from_json(cls, d: "Mapping[str, Any] | _At") -> "TorchSource":
        at = _At.of(d, "TorchSource")
        return cls(captioner=at.get("captioner", str, check=_relative_file, expect="a relative folder name"),
                   part=at.get("part", str, check=lambda p: p in ("vision", "embed", "decoder"),
                               expect="vision, embed or decoder"),
                   segmenter_layers=list(at.get("segmenter_layers", list, [], check=_ints, expect="a list of ints")))


@dataclass
class TensorRTEngineEntry(FileEntry):
    """A serialized TensorRT engine and what it was built with (it runs only on the same TensorRT, GPU
    architecture and plugin library)."""

    trt_version: str = ""
    compute_capability: str = ""
    plugin_sha256: str | None = None
    workspace_bytes: int = 0
    profiles: list[dict[str, list[list[int]]]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "trt_version": self.trt_version, "compute_capability": self.compute_capability,
                "plugin_sha256": self.plugin_sha256, "workspace_bytes": self.workspace_bytes,
                "profiles": self.profiles}

    @classmethod
    def from_json(cls, d: "Mapping[str, Any] | _At") -> "TensorRTEngineEntry":
        at = _At.of(d, "TensorRTEngineEntry")
        base = FileEntry.from_json(at)
        return cls(base.file, base.sha256, base.size, base.fingerprint, trt_version=at.get("trt_version", str, ""),
                   compute_capability=str(at.get("compute_capability", (str, int, float), "")),
                   plugin_sha256=at.get("plugin_sha256", str, None),
                   workspace_bytes=at.get("workspace_bytes", int, 0),
                   profiles=at.get("profiles", list, []))


@dataclass
class ComponentEntry:
    """One graph of the folder: its ONNX file(s), tensors, precision, and what the build measured."""

    precision: str
    onnx: FileEntry
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    weights: FileEntry | None = None               # safetensors of the PyTorch module (the PyTorch engine)
    data_files: list[FileEntry] = field(default_factory=list)   # ONNX external data of `onnx`
    profiles: list[dict[str, Any]] = field(default_factory=list)  # TensorRT profiles the exporter asks for
    torch: TorchSource | None = None               # captioner parts: the module comes from the checkpoint
    random_weights: bool = False
    max_abs_diff_vs_torch: float | None = None
    greedy_tokens_match_torch: bool | None = None
    # The frame graphs' check against the host path (runtime/frames.py) at build: {"max_grey_levels": ...} for
    # frame_preprocess, {"label_mismatch": share of pixels} for semantic_map (export/frame_graphs.py validate()).
    max_diff_vs_host: dict[str, float] | None = None
    precision_report: dict[str, Any] | None = None
    onnx_fp32: FileEntry | None = None             # the FP32 graph `onnx` was converted from
    onnx_fp32_data_files: list[FileEntry] = field(default_factory=list)
    onnx_tensorrt: FileEntry | None = None         # a graph made for TensorRT, built instead of `onnx`
    tensorrt: TensorRTEngineEntry | None = None

    _FILES: ClassVar[tuple[str, ...]] = ("onnx", "weights", "onnx_fp32", "onnx_tensorrt", "tensorrt")
    _FILE_LISTS: ClassVar[tuple[str, ...]] = ("data_files", "onnx_fp32_data_files")
    _OPTIONAL: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "max_abs_diff_vs_torch": (float, int), "greedy_tokens_match_torch": bool, "max_diff_vs_host": dict,
        "precision_report": dict}

    def input(self, name: str) -> TensorSpec:
        return self._spec(self.inputs, name, "input")

    def output(self, name: str) -> TensorSpec:
        return self._spec(self.outputs, name, "output")

    @staticmethod
    def _spec(specs: list[TensorSpec], name: str, role: str) -> TensorSpec:
        for spec in specs:
            if spec.name == name:
                return spec
        raise ManifestError(f"no {role} named '{name}' (have {[s.name for s in specs]})")

    def files(self) -> Iterator[FileEntry]:
        for key in self._FILES:
            if getattr(self, key) is not None:
                yield getattr(self, key)
        for key in self._FILE_LISTS:
            yield from getattr(self, key)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"precision": self.precision, "inputs": [s.to_json() for s in self.inputs],
                             "outputs": [s.to_json() for s in self.outputs], "random_weights": self.random_weights}
        for key in self._FILES:
            if getattr(self, key) is not None:
                d[key] = getattr(self, key).to_json()
        for key in self._FILE_LISTS:
            if getattr(self, key):
                d[key] = [f.to_json() for f in getattr(self, key)]
        if self.profiles:
            d["profiles"] = self.profiles
        if self.torch is not None:
            d["torch"] = self.torch.to_json()
        for key in self._OPTIONAL:
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    @classmethod
    def from_json(cls, d: "Mapping[str, Any] | _At") -> "ComponentEntry":
        at = _At.of(d, "ComponentEntry")
        files = {}
        for key in cls._FILES:
            sub = at.sub(key, optional=key != "onnx")
            kind = TensorRTEngineEntry if key == "tensorrt" else FileEntry
            files[key] = None if sub is None else kind.from_json(sub)
        lists = {key: [FileEntry.from_json(f) for f in at.items(key, optional=True)] for key in cls._FILE_LISTS}
        torch = at.sub("torch", optional=True)
        return cls(precision=at.get("precision", str),
                   inputs=[TensorSpec.from_json(s) for s in at.items("inputs")],
                   outputs=[TensorSpec.from_json(s) for s in at.items("outputs")],
                   profiles=at.get("profiles", list, []),
                   torch=None if torch is None else TorchSource.from_json(torch),
                   random_weights=at.get("random_weights", bool, False),
                   **files, **lists, **{k: at.get(k, kind, None) for k, kind in cls._OPTIONAL.items()})


PREPROCESS_MODES = ("stretch", "pad", "crop")


@dataclass
class Preprocess:
    """How a frame becomes one graph's (1, 3, size, size) image input, then (x / 255 - mean) / std:

    - "stretch": resized to the square as it is (what the segmenter and the demo's tower are trained with);
    - "pad": padded to a square with `pad_color`, centered (LLaVA's `image_aspect_ratio: pad`), then resized
      so the shorter side is `resize` and center-cropped to `size` (CLIP's image processor);
    - "crop": CLIP's image processor alone: shorter side to `resize`, center crop to `size`."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mode: str = "stretch"
    resize: int | None = None                        # "pad" / "crop": the shorter side before the crop
    pad_color: tuple[int, int, int] | None = None    # "pad": RGB

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"size": self.size, "mean": list(self.mean), "std": list(self.std)}
        if self.mode != "stretch":
            d.update(mode=self.mode, resize=self.resize, pad_color=None if self.pad_color is None else list(self.pad_color))
        return d

    @classmethod
    def from_json(cls, d: "Mapping[str, Any] | _At") -> "Preprocess":
        at = _At.of(d, "Preprocess")

        def triple(key: str, positive: bool) -> tuple[float, float, float]:
            ok = (lambda v: len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                and (x > 0 or not positive) for x in v))
            return tuple(float(x) for x in at.get(key, list, check=ok,
                                                   expect=f"3 {'positive ' if positive else ''}numbers"))

        positive = dict(check=lambda n: n > 0, expect="a positive int")
        mode = at.get("mode", str, "stretch", check=lambda m: m in PREPROCESS_MODES, expect=" or ".join(PREPROCESS_MODES))
        size = at.get("size", int, **positive)
        resize = None if mode == "stretch" else at.get("resize", int, check=lambda n: n >= size,
                                                         expect=f"an int >= size ({size})")
        pad = None
        if mode == "pad":
            pad = tuple(at.get("pad_color", list, check=lambda v: len(v) == 3 and all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in v), expect="3 ints in 0..255"))
        return cls(size=size, mean=triple("mean", False), std=triple("std", True), mode=mode, resize=resize,
                   pad_color=pad)


@dataclass
class CaptionerEntry:
    """What the decode loop needs beside its graphs."""

    tokenizer: FileEntry          # the LLM's tokenizer.json
    prompt: FileEntry             # the prompt format (chat template pieces, stop tokens)
    max_context: int              # KV-cache length the decoder graph was built for
    image_tokens: int             # image embeddings per frame
    checkpoint: list[FileEntry] = field(default_factory=list)  # the transformers checkpoint (PyTorch engine)

    def to_json(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_json(), "prompt": self.prompt.to_json(),
                "max_context": self.max_context, "image_tokens": self.image_tokens,
                "checkpoint": [f.to_json() for f in self.checkpoint]}

    @classmethod
    def from_json(cls, d: "Mapping[str, Any] | _At") -> "CaptionerEntry":
        at = _At.of(d, "CaptionerEntry")
        positive = dict(check=lambda n: n > 0, expect="a positive int")
        return cls(tokenizer=FileEntry.from_json(at.sub("tokenizer")), prompt=FileEntry.from_json(at.sub("prompt")),
                   max_context=at.get("max_context", int, **positive), image_tokens=at.get("image_tokens", int, **positive),
                   checkpoint=[FileEntry.from_json(f) for f in at.items("checkpoint", optional=True)])


@dataclass
class Sample:
    """A frame shipped with the build (`samples/`), so that `python -m runtime.demo` and the profiler have
    input on any device without a dataset: a caption and vocabulary for it, and, for trained builds, the
    ground-truth labels (a PNG of indices into `vocabulary`, 255 = ignore)."""

    frame: FileEntry                     # PNG, RGB
    caption: str
    vocabulary: list[str]
    labels: FileEntry | None = None

    def files(self) -> Iterator[FileEntry]:
        yield self.frame
        if self.labels is not None:
            yield self.labels

    def to_json(self) -> dict[str, Any]:
        return {"frame": self.frame.to_json(), "caption": self.caption, "vocabulary": list(self.vocabulary),
                "labels": None if self.labels is None else self.labels.to_json()}

    @classmethod
    def from_json(cls, d: "Mapping[str, Any] | _At") -> "Sample":
        at = _At.of(d, "Sample")
        labels = at.sub("labels", optional=True)
        names = at.get("vocabulary", list, check=lambda v: v and all(isinstance(n, str) and n for n in v),
                       expect="a non-empty list of class names")
        return cls(frame=FileEntry.from_json(at.sub("frame")), caption=at.get("caption", str), vocabulary=list(names),
                   labels=None if labels is None else FileEntry.from_json(labels))


# The components a runtime needs: the per-frame vision graph is the captioner's when there is one.
_CAPTIONER_GRAPHS = (CAPTIONER_VISION, CAPTIONER_EMBED, CAPTIONER_DECODER)


@dataclass
class Manifest:
    """`manifest.json`. The JSON keeps the layout of format version 1; `to_json` / `from_json` convert."""

    preset: dict[str, Any]                        # the build's preset (llmformer.presets.Preset.to_json())
    backend: str                                  # the backend the folder was built for
    precision: str
    opset: int
    tokenizer: FileEntry                          # the text encoder's tokenizer.json
    max_length: int                               # ... and its padded length
    preprocess: dict[str, Preprocess]             # by component: vision_tower, segmenter, and captioner_vision
                                                  # where the captioner sees frames otherwise (a LLaVA checkpoint)
    components: dict[str, ComponentEntry]
    parser: str | None = None                     # the spaCy pipeline the build recorded
    captioner: CaptionerEntry | None = None
    samples: list[Sample] = field(default_factory=list)
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def preset_name(self) -> str:
        return str(self.preset["name"])

    @property
    def vision_component(self) -> str:
        """The per-frame vision graph: the captioner's (tower + projector) when the build has a captioner."""
        return CAPTIONER_VISION.component if self.captioner is not None else VISION_TOWER.component

    @property
    def max_batch(self) -> int:
        """Frames one call of the vision and segmenter graphs takes: the max of their batch axis (BATCH_AXIS) in the
        shape ranges, as `build_engines.py --max-batch B` built them; 1 where a graph has no batch axis (builds from
        before it, or --max-batch 1), and Runtime.segment_batch then runs its frames one at a time."""
        specs = (self.components[self.vision_component].input(VISION_TOWER.pixel_values),
                 self.components[SEGMENTER.component].input(SEGMENTER.frame))
        return min(s.max_shape[0] if s.shape[0] == BATCH_AXIS and s.max_shape else 1 for s in specs)

    @property
    def frame_graphs(self) -> bool:
        """Whether the build has the frame graphs (FRAME_PREPROCESS, SEMANTIC_MAP): frames are preprocessed and
        postprocessed on the engines' device. Older builds and `--host-postprocess` builds have neither."""
        return FRAME_PREPROCESS.component in self.components and SEMANTIC_MAP.component in self.components

    def files(self) -> Iterator[FileEntry]:
        yield self.tokenizer
        if self.captioner is not None:
            yield self.captioner.tokenizer
            yield self.captioner.prompt
            yield from self.captioner.checkpoint
        for component in self.components.values():
            yield from component.files()
        for sample in self.samples:
            yield from sample.files()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "created": self.created, "preset": self.preset,
            "backend": self.backend, "precision": self.precision, "opset": self.opset,
            "tokenizer": {**self.tokenizer.to_json(), "max_length": self.max_length},
            "preprocess": {k: v.to_json() for k, v in self.preprocess.items()},
            "priors": {"parser": self.parser},
            "captioner": None if self.captioner is None else self.captioner.to_json(),
            "components": {k: v.to_json() for k, v in self.components.items()},
            "samples": [s.to_json() for s in self.samples],
            "versions": self.versions,
        }

    @classmethod
    def from_json(cls, data: Any) -> "Manifest":
        at = _At(data, "")
        if at.get("format", str, "") != FORMAT:
            raise ManifestError(f"{MANIFEST_NAME} is not an llmformer-edge manifest (format must be '{FORMAT}')")
        version = at.get("format_version", int, check=lambda v: v >= 1, expect="a positive int")
        if version > FORMAT_VERSION:
            raise ManifestError(f"{MANIFEST_NAME} has format version {version}, newer than this runtime reads "
                                f"({FORMAT_VERSION}): upgrade llmformer-edge, or rebuild with this version")
        preset = at.get("preset", dict)
        _At(preset, "preset").get("name", str)
        tok = at.sub("tokenizer")
        priors = at.sub("priors", optional=True)
        captioner = at.sub("captioner", optional=True)
        comps, pre = at.sub("components"), at.sub("preprocess")
        manifest = cls(
            preset=preset, backend=at.get("backend", str, "onnxruntime"), precision=at.get("precision", str, "fp32"),
            opset=at.get("opset", int, 17), tokenizer=FileEntry.from_json(tok),
            max_length=tok.get("max_length", int, check=lambda n: n > 0, expect="a positive int"),
            preprocess={name: Preprocess.from_json(pre.sub(name))
                        for name in (VISION_TOWER.component, SEGMENTER.component, CAPTIONER_VISION.component)
                        if name != CAPTIONER_VISION.component or pre.has(name)},
            components={name: ComponentEntry.from_json(comps.sub(name)) for name in comps.node},
            parser=None if priors is None else priors.get("parser", str, None),
            captioner=None if captioner is None else CaptionerEntry.from_json(captioner),
            samples=[Sample.from_json(s) for s in at.items("samples", optional=True)],
            created=at.get("created", str, ""), versions=at.get("versions", dict, {}))
        manifest.check_graphs()
        return manifest

    def check_graphs(self) -> None:
        """Every component this code runs is present, with the tensors it feeds and reads."""
        graphs = [TEXT_ENCODER, SEGMENTER]
        graphs += list(_CAPTIONER_GRAPHS) if self.captioner is not None else [VISION_TOWER]
        frame = [g for g in (FRAME_PREPROCESS, SEMANTIC_MAP) if g.component in self.components]
        if len(frame) == 1:
            other = ({FRAME_PREPROCESS.component, SEMANTIC_MAP.component} - {frame[0].component}).pop()
            raise ManifestError(f"{MANIFEST_NAME}: components.{other} is missing: the frame graphs come as a pair "
                                f"({FRAME_PREPROCESS.component}, {SEMANTIC_MAP.component})")
        graphs += frame
        for graph in graphs:
            comp = self.components.get(graph.component)
            if comp is None:
                raise ManifestError(f"{MANIFEST_NAME}: components.{graph.component} is missing")
            for role, want, have in (("inputs", graph.inputs, comp.inputs), ("outputs", graph.outputs, comp.outputs)):
                missing = sorted(set(want) - {s.name for s in have})
                if missing:
                    raise ManifestError(f"{MANIFEST_NAME}: components.{graph.component}.{role} lacks {missing}: the "
                                        f"graph does not follow this runtime's contract")


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Path:
    """Write `folder/manifest.json` atomically (a killed writer leaves the old one or none, never half)."""
    path = Path(folder) / MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps(manifest.to_json(), indent=2) + "\n").encode())
    return path


VERIFY_LEVELS = ("off", "fast", "full")


def read_manifest(folder: str | os.PathLike, verify: str = "fast") -> Manifest:
    """Load and validate `folder/manifest.json`, then check every listed file as `verify` says:

    - "fast" (default): inside the folder, present, the recorded size and fingerprint (8 MiB read per file
      at most, milliseconds for a 10 GB decoder): a missing, truncated, replaced or half-copied file.
    - "full": also every byte against the sha256 recorded at build (seconds per GB): silent corruption or
      an edit that keeps the size.
    - "off": the manifest only (a caller that verified the folder already)."""
    if verify not in VERIFY_LEVELS:
        raise ManifestError(f"verify must be one of {', '.join(VERIFY_LEVELS)}, got {verify!r}")
    folder = Path(folder)
    hint = REBUILD_HINT.format(folder=folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ManifestError(f"artifact folder {folder} does not exist: build it with "
                            f"`python export/build_engines.py --out {folder}`")
    if not path.is_file():
        raise ManifestError(f"{path} is missing: the folder holds no finished build (a build may have been "
                            f"interrupted); {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); {hint}") from exc
    try:
        manifest = Manifest.from_json(data)
    except ManifestError as exc:
        raise ManifestError(f"{folder}/{exc}; {hint}") from None
    if verify != "off":
        root = folder.resolve()
        for entry in manifest.files():
            file = folder / entry.file
            if not file.is_file():
                raise ManifestError(f"{entry.file} is listed in {path} but missing from {folder}; {hint}")
            if not file.resolve().is_relative_to(root):
                raise ManifestError(f"{entry.file} in {folder} points outside the artifact folder (a symlink to "
                                    f"{file.resolve()}); the runtime reads only the folder's own files: {hint}")
            size = file.stat().st_size
            if size != entry.size:
                raise ManifestError(f"{entry.file} in {folder} is {size} bytes, the build wrote {entry.size}: it was "
                                    f"altered or only partly copied; {hint}")
            # Folders from before fingerprints get the full hash: there is nothing cheaper to compare with.
            full = verify == "full" or entry.fingerprint is None
            if (sha256_file(file) != entry.sha256) if full else (fingerprint_file(file) != entry.fingerprint):
                raise ManifestError(f"{entry.file} in {folder} was altered after the build ("
                                    f"{'sha256' if full else 'fingerprint'} mismatch); {hint}")
    return manifest
