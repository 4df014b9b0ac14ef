"""Frame checks, preprocessing and postprocessing in numpy/OpenCV (no torch on the deployment path).

Frame policy: `segment()` and `visualize()` take H x W x 3 RGB only and refuse grayscale and 4-channel
frames with a FrameError, because a 4-channel array may be RGBA or BGRA and a guess would swap colors
silently. `to_rgb(frame, order)` converts what capture devices deliver (gray, BGR, BGRA, RGBA) when the
caller says which order it is in; the camera loop uses it on every OpenCV frame (order "bgr").
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from engines.contract import Preprocess
from engines.errors import LLMFormerError


class FrameError(LLMFormerError, ValueError):
    """A frame that cannot be segmented; the message says what was wrong and how to fix it."""


def check_frame(frame: object) -> np.ndarray:
    """Return the frame as an H x W x 3 uint8 RGB array, or raise FrameError.

    Accepted: uint8 RGB; float32/float64 RGB in [0, 1] (converted). Rejected with a fix in the message:
    anything not a numpy array, 2-D (grayscale) or 4-channel (RGBA/BGRA) frames, empty frames, NaN/inf."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"frame must be a numpy array (H x W x 3 uint8 RGB), got {type(frame).__name__}")
    if frame.ndim == 2:
        raise FrameError(f"frame is 2-D {frame.shape} (grayscale?): pass H x W x 3 RGB, e.g. "
                         f"runtime.frames.to_rgb(frame) or cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)")
    if frame.ndim != 3:
        raise FrameError(f"frame must be H x W x 3 (RGB), got shape {frame.shape}")
    if frame.shape[2] != 3:
        hint = {1: " (grayscale? use runtime.frames.to_rgb(frame))",
                4: " (RGBA? use runtime.frames.to_rgb(frame, 'rgba'), or 'bgra' for OpenCV's order)"}
        raise FrameError(f"frame must have 3 channels (RGB), got {frame.shape[2]}{hint.get(frame.shape[2], '')}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise FrameError(f"frame is empty: shape {frame.shape}")
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype in (np.float32, np.float64):
        if not np.isfinite(frame).all():
            raise FrameError("frame contains NaN or inf values: float frames must be finite RGB in [0, 1]")
        lo, hi = float(frame.min()), float(frame.max())
        if lo < 0.0 or hi > 1.0:
            raise FrameError(f"float frames must be RGB in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                             f"for 0-255 data pass frame.astype(np.uint8)")
        return (frame * 255.0 + 0.5).astype(np.uint8)
    raise FrameError(f"frame dtype must be uint8 (or float32/float64 in [0, 1]), got {frame.dtype}")


ORDERS = ("rgb", "bgr", "rgba", "bgra")
_TO_RGB = {("bgr", 3): cv2.COLOR_BGR2RGB, ("rgba", 4): cv2.COLOR_RGBA2RGB, ("bgra", 4): cv2.COLOR_BGRA2RGB,
           ("bgr", 4): cv2.COLOR_BGRA2RGB, ("rgb", 4): cv2.COLOR_RGBA2RGB}


def to_rgb(frame: np.ndarray, order: str = "rgb") -> np.ndarray:
    """Any uint8 frame a camera or file gives -> H x W x 3 uint8 RGB (a new array unless it already is).

    `order`: the channel order of 3/4-channel frames: "rgb", "bgr" (OpenCV), "rgba" or "bgra"; an alpha
    channel is dropped (not blended). Gray frames (H x W or H x W x 1) are replicated to 3 channels. Other
    shapes and dtypes raise FrameError as in check_frame()."""
    if order not in ORDERS:
        raise FrameError(f"order must be one of {ORDERS}, got {order!r}")
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise FrameError(f"to_rgb converts uint8 frames, got {frame.dtype}: pass uint8 0-255 data")
    if frame.size == 0:
        raise FrameError(f"frame is empty: shape {frame.shape}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if frame.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_GRAY2RGB)
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        channels = frame.shape[2]
        code = _TO_RGB.get((order if channels == 4 else order[:3], channels))  # "bgra" on 3 channels: "bgr"
        return frame if code is None else cv2.cvtColor(np.ascontiguousarray(frame), code)
    return check_frame(frame)  # raises with the message for this shape


def to_tensor(frame: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """H x W x 3 uint8 RGB -> (1, 3, size, size) float32, resized (stretched to the square the graph was
    built for) and normalized."""
    interp = cv2.INTER_AREA if min(frame.shape[:2]) > size else cv2.INTER_LINEAR
    x = cv2.resize(frame, (size, size), interpolation=interp).astype(np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def to_pixels(frame: np.ndarray, pre: Preprocess) -> np.ndarray:
    """H x W x 3 uint8 RGB -> (1, 3, size, size) float32 as `pre` says (engines.contract.Preprocess): stretched,
    or LLaVA's pad-to-square and CLIP's shorter-side resize + center crop. CLIP resizes with PIL's antialiased
    bicubic; OpenCV's area filter (shrinking) / bicubic (growing) is the closest it has, within a few grey levels."""
    if pre.mode == "stretch":
        return to_tensor(frame, pre.size, pre.mean, pre.std)
    if pre.mode == "pad":
        h, w = frame.shape[:2]
        side = max(h, w)
        square = np.empty((side, side, 3), np.uint8)
        square[:] = np.asarray(pre.pad_color, np.uint8)
        top, left = (side - h) // 2, (side - w) // 2           # LLaVA's expand2square pastes it centered
        square[top:top + h, left:left + w] = frame
        frame = square
    h, w = frame.shape[:2]
    scale = pre.resize / min(h, w)
    rh, rw = max(pre.resize, int(h * scale)), max(pre.resize, int(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(frame, (rw, rh), interpolation=interp)
    top, left = (rh - pre.size) // 2, (rw - pre.size) // 2
    x = resized[top:top + pre.size, left:left + pre.size].astype(np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def semantic_map(mask_logits: np.ndarray, class_logits: np.ndarray,
                 size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Mask2Former's semantic inference (as `llmformer.segmenter.semantic_inference`), in numpy.

    mask_logits (Q, h, w), class_logits (Q, V+1), size (H, W) -> labels (H, W) int32 in [0, V) and a score
    per class in [0, 1]: the class's share of the total score, averaged over the pixels it wins (0 where
    it wins none)."""
    probs = _softmax(class_logits.astype(np.float32), -1)[:, :-1]                 # (Q, V)
    # Clipped: a trained model's logits reach -100 and beyond, where exp overflows float32 (sigmoid is 0 anyway).
    sig = 1.0 / (1.0 + np.exp(-np.clip(mask_logits.astype(np.float32), -60.0, 60.0)))   # (Q, h, w)
    Q, h, w = sig.shape
    scores = (probs.T @ sig.reshape(Q, h * w)).reshape(-1, h, w)                  # (V, h, w)
    V = scores.shape[0]
    H, W = size
    # cv2 resizes channel-last images with up to 512 channels at a time.
    hwc = scores.transpose(1, 2, 0)
    chunks = [cv2.resize(np.ascontiguousarray(hwc[..., i:i + 512]), (W, H), interpolation=cv2.INTER_LINEAR)
              .reshape(H, W, -1) for i in range(0, V, 512)]
    # Reductions run over the leading axis: numpy reduces a short last axis several times slower.
    up = np.ascontiguousarray(np.concatenate(chunks, -1).transpose(2, 0, 1))     # (V, H, W)
    labels = up.argmax(0).astype(np.int32)
    share = up.max(0) / np.maximum(up.sum(0), 1e-12)
    counts = np.bincount(labels.ravel(), minlength=V)
    sums = np.bincount(labels.ravel(), weights=share.ravel(), minlength=V)
    per_class = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)
    return labels, per_class
