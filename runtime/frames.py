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


# Frames over 8K UHD are refused: postprocessing holds a few float32 maps at the frame's size (about 40 bytes a
# pixel, 1.3 GB at 8K) and the models see 256-512 px anyway; a bigger frame is more often a mistake than a use.
MAX_FRAME_PIXELS = 7680 * 4320


def _dtype_hint(frame: np.ndarray) -> str:
    """How to turn a frame of an unsupported dtype into uint8 RGB (empty if there is no obvious way)."""
    dtype = frame.dtype
    if dtype == np.bool_:
        return ": a boolean mask is not an image; for black and white pass frame.astype(np.uint8) * 255"
    if dtype.kind in "iu":
        lo, hi = int(frame.min()), int(frame.max())
        if 0 <= lo and hi <= 255:
            return f": its values are in [{lo}, {hi}], so pass frame.astype(np.uint8)"
        if dtype == np.uint16:
            return f": 16-bit data (values in [{lo}, {hi}]): pass (frame >> 8).astype(np.uint8)"
        return f": values in [{lo}, {hi}] would wrap in uint8; scale them to 0-255 first, then frame.astype(np.uint8)"
    if dtype == np.float16:
        return ": pass frame.astype(np.float32) (RGB in [0, 1])"
    return "" if dtype.kind == "f" else ": that is not pixel data"


def check_frame(frame: object) -> np.ndarray:
    """Return the frame as a C-contiguous H x W x 3 uint8 RGB array, or raise FrameError.

    Accepted: uint8 RGB (a strided view such as frame[..., ::-1] is copied once, so OpenCV can also draw on
    it); float32/float64 RGB in [0, 1] (converted). Rejected with a fix in the message: anything not a numpy
    array; 0-, 1- and 4-D arrays (a batch of one: frame[0]); 2-D (grayscale) or 4-channel (RGBA/BGRA)
    frames; channels-first (3, H, W) frames (frame.transpose(1, 2, 0)); empty frames; frames over
    MAX_FRAME_PIXELS (8K UHD: downscale); other dtypes (bool, int16, uint16, float16, ...); NaN/inf."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"frame must be a numpy array (H x W x 3 uint8 RGB), got {type(frame).__name__}")
    shape = frame.shape
    if frame.ndim == 2:
        raise FrameError(f"frame is 2-D {shape} (grayscale?): pass H x W x 3 RGB, e.g. "
                         f"runtime.frames.to_rgb(frame) or cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)")
    if frame.ndim != 3:
        hint = {0: " (a scalar, not an image)", 1: " (a flat buffer? reshape it: frame.reshape(H, W, 3))"}.get(
            frame.ndim, "")
        if frame.ndim == 4:
            nchw = shape[1] in (3, 4) and shape[3] not in (3, 4)
            one = "frame[0]" if shape[0] == 1 else "one frame at a time, frame[i]"
            hint = (f" (a batch of {shape[0]}{', channels-first' if nchw else ''}? pass "
                    f"{one}{'.transpose(1, 2, 0)' if nchw else ''})")
        raise FrameError(f"frame must be H x W x 3 (RGB), got shape {shape}{hint}")
    if frame.size == 0:
        raise FrameError(f"frame is empty: shape {shape}")
    if shape[2] != 3:
        if shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4):
            fix = {1: "runtime.frames.to_rgb(frame[0]) (it is grayscale)",
                   3: "frame.transpose(1, 2, 0)",
                   4: "runtime.frames.to_rgb(frame.transpose(1, 2, 0), 'rgba') (or 'bgra')"}[shape[0]]
            raise FrameError(f"frame must have 3 channels last (H x W x 3 RGB), got shape {shape}, which looks "
                             f"channels-first ({shape[0]} x H x W, as torch tensors are): pass {fix}")
        hint = {1: " (grayscale? use runtime.frames.to_rgb(frame))",
                4: " (RGBA? use runtime.frames.to_rgb(frame, 'rgba'), or 'bgra' for OpenCV's order)"}
        raise FrameError(f"frame must have 3 channels (RGB), got {shape[2]}{hint.get(shape[2], '')}")
    if shape[0] * shape[1] > MAX_FRAME_PIXELS:
        scale = int((MAX_FRAME_PIXELS / (shape[0] * shape[1])) ** 0.5 * 100) / 100
        raise FrameError(f"frame of shape {shape} has {shape[0] * shape[1] / 1e6:.1f} Mpx, over the "
                         f"{MAX_FRAME_PIXELS / 1e6:.1f} Mpx of 8K UHD (7680 x 4320) that this runtime takes: "
                         f"downscale it, e.g. cv2.resize(frame, None, fx={scale}, fy={scale}, "
                         f"interpolation=cv2.INTER_AREA)")
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    if frame.dtype in (np.float32, np.float64):
        if not np.isfinite(frame).all():
            raise FrameError("frame contains NaN or inf values: float frames must be finite RGB in [0, 1]")
        lo, hi = float(frame.min()), float(frame.max())
        if lo < 0.0 or hi > 1.0:
            raise FrameError(f"float frames must be RGB in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                             f"for 0-255 data pass frame.astype(np.uint8)")
        return (frame * 255.0 + 0.5).astype(np.uint8)
    raise FrameError(f"frame dtype must be uint8 (or float32/float64 in [0, 1]), got {frame.dtype}{_dtype_hint(frame)}")


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
    if frame.size == 0:
        raise FrameError(f"frame is empty: shape {frame.shape}")
    if frame.dtype != np.uint8:
        hint = (": for values in [0, 1] pass (frame * 255 + 0.5).astype(np.uint8) (segment() takes float RGB as it is)"
                if frame.dtype in (np.float32, np.float64) else _dtype_hint(frame))
        raise FrameError(f"to_rgb converts uint8 frames, got {frame.dtype}{hint or ': pass uint8 0-255 data'}")
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
    it wins none). Any V >= 1: OpenCV 5 resizes at most 128 channels a call (4.x 512), so the maps go in
    chunks, with the result of one resize of all of them bit for bit (tests/test_postprocess.py)."""
    probs = _softmax(class_logits.astype(np.float32), -1)[:, :-1]                 # (Q, V)
    # Clipped: a trained model's logits reach -100 and beyond, where exp overflows float32 (sigmoid is 0 anyway).
    sig = 1.0 / (1.0 + np.exp(-np.clip(mask_logits.astype(np.float32), -60.0, 60.0)))   # (Q, h, w)
    Q, h, w = sig.shape
    scores = (probs.T @ sig.reshape(Q, h * w)).reshape(-1, h, w)                  # (V, h, w)
    V = scores.shape[0]
    if V == 0:
        raise ValueError(f"semantic_map needs at least one class: class_logits is {class_logits.shape} "
                         f"(Q, V + 1), the last column being Mask2Former's 'no object'")
    H, W = size
    hwc = scores.transpose(1, 2, 0)                                              # (h, w, V)
    # Chunks of channels: OpenCV 5 resizes at most 128 at a time (4.x: 512), and a chunk's memory stays bounded
    # on big frames. Reductions are exact across chunks (argmax keeps the first maximum, the sum adds classes
    # in order), so labels and scores do not depend on the chunking.
    labels = best = total = None
    for lo, hi in _channel_chunks(V, H * W):
        up = cv2.resize(np.ascontiguousarray(hwc[..., lo:hi]), (W, H), interpolation=cv2.INTER_LINEAR)
        up = up.reshape(H * W, hi - lo)                                          # (H*W, c)
        idx = up.argmax(-1)
        # cv2.transpose copies in cache-sized blocks: several times faster than numpy's copy of a transposed view.
        # Max and sum run over the leading axis: numpy reduces a short last axis several times slower.
        rows = cv2.transpose(up)                                                 # (c, H*W)
        del up
        top = rows.max(0)
        if labels is None:
            labels, best, total = idx, top, rows.sum(0)
        else:
            won = top > best                     # strict: a tie keeps the earlier class, as one argmax would
            labels = np.where(won, idx + lo, labels)
            np.maximum(best, top, out=best)
            for row in rows:                     # class by class: the order, so the rounding, of one sum(0)
                total += row
    labels = labels.astype(np.int32)
    share = best / np.maximum(total, 1e-12)
    counts = np.bincount(labels, minlength=V)
    sums = np.bincount(labels, weights=share, minlength=V)
    per_class = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)
    return labels.reshape(H, W), per_class


# Output floats per resize chunk (256 MB; the chunk and its transpose live together): a 640 x 480 frame resizes
# up to 128 classes at once, a 1080p one 32, an 8K one 10 (the floor, 1.3 GB).
_CHUNK_FLOATS = 1 << 26


def _channel_chunks(channels: int, pixels: int) -> list[tuple[int, int]]:
    """[lo, hi) channel ranges of near-equal size, each at most 128 channels and _CHUNK_FLOATS floats.

    No chunk of 1, 3 or 4 channels unless that is all there is: OpenCV resizes those through their own
    kernels, whose float rounding differs in the last bits from the rest, and then results would depend on
    the chunking. Near-equal chunks of at most n >= 10 channels have at least 5."""
    most = max(10, min(128, _CHUNK_FLOATS // max(pixels, 1)))
    n = -(-channels // most)
    bounds = [channels * i // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))
