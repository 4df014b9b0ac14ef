"""Calibration data: a folder of images (and captions) run through the real runtime, recorded per component.

Every component is calibrated on exactly what it is fed at run time: `CalibrationSet.record()` opens the artifact
folder's FP32 graphs with ONNX Runtime, runs `Runtime.segment(frame, vocabulary, caption)` on each image, and
records the inputs each engine receives. So the segmenter sees real preprocessing (runtime.frames.to_tensor with
the manifest's parameters), real vision-tower hidden states and real text embeddings of parsed caption priors;
the text encoder sees the phrases the runtime asks for; the vision tower sees preprocessed frames.

    data = CalibrationSet.from_folder("calib/")            # *.jpg/*.png/...; optional calib/captions.txt
    feeds = data.record(artifact_folder, manifest)         # {"segmenter": [feeds, ...], ...}

`captions.txt`: one caption per line, optionally `caption | class, class, ...` to give the vocabulary too. Without
it the generated frames' scripted captions are used (llmformer.data.frames.DEMO_SCENES), cycled over the images.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from engines.base import Engine
from engines.contract import Manifest
from engines.errors import LLMFormerError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CAPTIONS_FILE = "captions.txt"
MIN_IMAGES = 1
CAPTION_TOKENS = 8      # decode steps recorded per frame for the captioner's decoder


class CalibrationError(LLMFormerError, ValueError):
    """Calibration data that cannot be used; the message says which file and what to do."""


def list_images(folder: str | Path) -> list[Path]:
    """The image files in `folder` (sorted, not recursive); a clear error for a missing or empty folder."""
    folder = Path(folder)
    if not folder.exists():
        raise CalibrationError(f"calibration folder {folder} does not exist: pass --calib DIR with a folder of "
                               f"images ({', '.join(IMAGE_EXTENSIONS)})")
    if not folder.is_dir():
        raise CalibrationError(f"--calib {folder} is a file; pass a folder of images")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(images) < MIN_IMAGES:
        raise CalibrationError(f"calibration folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}): add a few "
                               f"hundred frames like the ones the camera will see (a few dozen at the very least)")
    return images


def read_images(paths: Sequence[Path]) -> list[np.ndarray]:
    """H x W x 3 uint8 RGB frames; every file that cannot be decoded is named in one error."""
    import cv2

    frames, bad = [], []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None or bgr.size == 0:
            bad.append(path.name)
            continue
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if bad:
        raise CalibrationError(f"{len(bad)} calibration image(s) in {paths[0].parent} cannot be read: "
                               f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}; remove or re-encode them")
    return frames


def read_captions(path: str | Path) -> list[tuple[str, list[str] | None]]:
    """`caption` or `caption | class, class` per line; blank lines and `#` comments skipped."""
    path = Path(path)
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        caption, _, names = line.partition("|")
        vocabulary = [n.strip() for n in names.split(",") if n.strip()] or None
        if not caption.strip():
            raise CalibrationError(f"{path}:{number}: empty caption")
        out.append((caption.strip(), vocabulary))
    if not out:
        raise CalibrationError(f"{path} has no captions: one per line, optionally `caption | class, class`")
    return out


def default_captions() -> list[tuple[str, list[str] | None]]:
    from llmformer.data.frames import DEMO_SCENES

    return [(caption, list(vocabulary)) for caption, vocabulary in DEMO_SCENES]


@dataclass
class CalibrationSet:
    """Frames and captions to calibrate on. `source` says where they came from (for reports)."""

    frames: list[np.ndarray]
    captions: list[tuple[str, list[str] | None]]
    source: str

    @classmethod
    def from_folder(cls, folder: str | Path, limit: int | None = None) -> "CalibrationSet":
        folder = Path(folder)
        images = list_images(folder)[:limit]
        captions_file = folder / CAPTIONS_FILE
        captions = read_captions(captions_file) if captions_file.is_file() else default_captions()
        return cls(read_images(images), captions, f"{folder} ({len(images)} images)")

    @classmethod
    def demo(cls, count: int = 8, size: tuple[int, int] = (360, 480)) -> "CalibrationSet":
        """Deterministic generated frames (llmformer.data.frames.demo_frame) with their scripted captions."""
        from llmformer.data.frames import demo_frame

        return cls([demo_frame(i, size) for i in range(count)], default_captions(), f"demo frames 0-{count - 1}")

    def fingerprint(self) -> str:
        """sha256 over the pixels and the captions: the calibration cache's key for the data."""
        h = hashlib.sha256()
        for frame in self.frames:
            h.update(str(frame.shape).encode())
            h.update(np.ascontiguousarray(frame).tobytes())
        h.update(json.dumps(self.captions, sort_keys=True).encode())
        return h.hexdigest()

    def cases(self) -> Iterator[tuple[np.ndarray, str, list[str] | None]]:
        for i, frame in enumerate(self.frames):
            caption, vocabulary = self.captions[i % len(self.captions)]
            yield frame, caption, vocabulary

    def record(self, folder: str | Path, manifest: Manifest) -> dict[str, list[dict[str, np.ndarray]]]:
        """Run the FP32 pipeline of the artifact `folder` (its `manifest`, which may still be unpublished) on
        every frame; return each component's recorded input feeds, in call order."""
        from engines.onnxruntime_engine import OnnxRuntimeEngine
        from runtime.pipeline import Runtime

        folder = Path(folder)
        recorders = {name: _Recorder(OnnxRuntimeEngine.from_component(name, folder, comp,
                                                                      providers=["CPUExecutionProvider"]))
                     for name, comp in manifest.components.items()}
        rt = Runtime(folder, manifest, "onnxruntime", recorders, cache_size=0)
        try:
            for frame, caption, vocabulary in self.cases():
                rt.segment(frame, vocabulary=vocabulary, caption=caption)
                if getattr(rt, "captioner", None) is not None:  # the captioner's prefill and decode steps too
                    rt.caption(frame, max_new_tokens=CAPTION_TOKENS)
        finally:
            rt.close()
        return {name: r.seen for name, r in recorders.items()}


class _Recorder(Engine):
    """An engine that keeps a copy of every feed it runs and runs it on the wrapped engine. Host-staged (the
    base class's `run_bound` goes through `_run`), so device-bound calls are recorded too."""

    def __init__(self, engine: Engine):
        super().__init__(engine.name, engine.inputs, engine.outputs)
        self.engine = engine
        self.backend = engine.backend
        self.seen: list[dict[str, np.ndarray]] = []

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.engine(feeds)

    def close(self) -> None:
        self.engine.close()
        super().close()


def FeedReader(feeds: Sequence[Mapping[str, np.ndarray]]):
    """onnxruntime.quantization's CalibrationDataReader over recorded feeds (made here so that importing this
    module does not import onnxruntime.quantization)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _FeedReader(CalibrationDataReader):
        def __init__(self, feeds):
            self.feeds = list(feeds)
            self._start, self._end = 0, len(self.feeds)
            self._it: Iterator | None = None

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._it is None:
                self._it = iter(self.feeds[self._start:self._end])
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = None

        def set_range(self, start_index: int, end_index: int) -> None:
            self._start, self._end, self._it = start_index, end_index, None

        def __len__(self) -> int:
            return len(self.feeds)

    return _FeedReader(feeds)
