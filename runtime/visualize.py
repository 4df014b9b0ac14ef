"""Overlays: the label map blended on the frame, with a legend of class names and the caption.

    image = runtime.visualize(frame, rt.segment(frame, ...))     # H x W x 3 uint8 RGB

Colors come from `palette()` by class index. Pixels away from the legend (top left) and the caption
(bottom rows) are `(1 - alpha) * frame + alpha * palette[label]`, rounded; unlabeled pixels (-1) keep the
frame's color.
"""
from __future__ import annotations

import textwrap

import cv2
import numpy as np

CAPTION_ROWS = 3   # caption lines drawn at the bottom, at most
NOTE_ROWS = 2      # lines of a note under the caption, at most


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8: n distinct RGB colors (golden-angle hues), the same for the same index in every frame."""
    hues = (np.arange(n) * 137.508) % 360
    hsv = np.stack([hues / 2, np.full(n, 200), np.full(n, 230)], -1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def _line_height(height: int) -> tuple[float, int]:
    """(text scale, legend row height in pixels) for a frame this tall: readable from 240 px up."""
    scale = max(height / 512.0, 0.8)
    return scale, int(22 * scale)


def legend_swatches(frame_shape: tuple[int, ...], rows: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1), inclusive, of the legend's color swatches, one per row from the top, for a frame
    of this shape; rows that do not fit above the caption are left out."""
    _, line = _line_height(frame_shape[0])
    side = line - 7
    fit = max(0, (frame_shape[0] - CAPTION_ROWS * line) // line)
    return [(6, 6 + i * line, 6 + side - 1, 6 + i * line + side - 1) for i in range(min(rows, fit))]


def visualize(frame: np.ndarray, segmentation, alpha: float = 0.5, legend: bool = True,
              note: str | None = None) -> np.ndarray:
    """H x W x 3 uint8 RGB frame (or float in [0, 1], as segment() takes) + its Segmentation -> uint8 RGB
    overlay: colored labels blended at `alpha`, and with `legend`, a swatch + "name score" row per class
    present (most pixels first) at the top left and the caption (up to 3 lines) at the bottom, in white
    on black boxes; `note` (up to 2 lines, e.g. which caption objects are right) goes under the caption."""
    from runtime.frames import FrameError, check_frame
    from runtime.pipeline import InputTypeError, RuntimeInputError, check_text

    # Every argument is checked before anything is drawn (README, "Input contract").
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"alpha must be a number in [0, 1] (the labels' opacity), got {type(alpha).__name__} "
                             f"{alpha!r}")
    if not 0.0 <= alpha <= 1.0:   # NaN fails this too
        raise RuntimeInputError(f"alpha must be in [0, 1] (0: the frame alone, 1: the labels alone), got {alpha}")
    if not isinstance(legend, (bool, np.bool_)):
        raise InputTypeError(f"legend must be True or False, got {type(legend).__name__} {legend!r}")
    frame = check_frame(frame)
    labels, classes = getattr(segmentation, "labels", None), getattr(segmentation, "classes", None)
    if not isinstance(labels, np.ndarray) or not isinstance(classes, (list, tuple)):
        raise InputTypeError(f"segmentation must be the runtime.Segmentation that segment() returned, got "
                             f"{type(segmentation).__name__}")
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise RuntimeInputError(f"segmentation.labels must be an (H, W) integer label map, got {labels.dtype} "
                                f"{labels.shape}")
    if labels.shape != frame.shape[:2]:
        raise FrameError(f"the segmentation's labels are {labels.shape[0]} x {labels.shape[1]} but the frame is "
                         f"{frame.shape[0]} x {frame.shape[1]}: pass the frame that was segmented")
    if labels.size and (labels.min() < -1 or labels.max() >= len(classes)):
        raise RuntimeInputError(f"segmentation.labels holds values in [{labels.min()}, {labels.max()}], but a label "
                                f"is -1 (unlabeled) or an index into its {len(classes)} classes")
    scores = getattr(segmentation, "scores", None)
    if legend and scores is not None and len(scores) < len(classes):
        raise RuntimeInputError(f"segmentation.scores has {len(scores)} values for {len(classes)} classes")
    caption = getattr(segmentation, "caption", None)
    if legend and caption is not None:
        check_text(caption, "segmentation.caption")
    if note is not None:
        check_text(note, "note")
    colors = palette(max(len(segmentation.classes), 1))
    labeled = labels >= 0
    color_map = colors[np.where(labeled, labels, 0)]
    out = cv2.addWeighted(frame, 1.0 - alpha, color_map, alpha, 0.0)
    out[~labeled] = frame[~labeled]  # unlabeled pixels (-1) stay as they were
    if not legend:
        return out
    counts = np.bincount(labels[labeled].ravel(), minlength=len(segmentation.classes))
    present = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    scale, line = _line_height(frame.shape[0])
    for idx, (x0, y0, x1, y1) in zip(present, legend_swatches(frame.shape, len(present))):
        name = segmentation.classes[idx]
        score = float(segmentation.scores[idx]) if segmentation.scores is not None else 0.0
        cv2.rectangle(out, (x0, y0), (x1, y1), tuple(int(c) for c in colors[idx]), -1)
        _text(out, f"{name} {score:.2f}", (x1 + 8, y1), scale)
    width = max(int((frame.shape[1] - 12) / (6.5 * scale)), 10)  # characters per row, about
    rows = textwrap.wrap(caption or "", width=width, max_lines=CAPTION_ROWS, placeholder=" ...")
    rows += textwrap.wrap(note or "", width=width, max_lines=NOTE_ROWS, placeholder=" ...")
    if rows:
        for i, row in enumerate(rows):
            _text(out, row, (6, frame.shape[0] - 8 - (len(rows) - 1 - i) * line), scale)
    return out


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float) -> None:
    # White on a black box stays readable on any color. (An outline drawn as thicker text does not line
    # up with the text in OpenCV 5, whose fonts change width with thickness.)
    font, size, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, max(1, round(scale))
    (w, h), base = cv2.getTextSize(text, font, size, thick)
    x, y = org
    cv2.rectangle(img, (x - 2, y - h - 2), (x + w + 2, y + base), (0, 0, 0), -1)
    cv2.putText(img, text, org, font, size, (255, 255, 255), thick, cv2.LINE_AA)
