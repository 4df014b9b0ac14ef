"""Overlays: the label map blended on the frame, with a legend of class names and the caption."""
from __future__ import annotations

import textwrap

import cv2
import numpy as np


def palette(n: int) -> np.ndarray:
    """n distinct RGB colors (golden-angle hues), the same for the same index in every frame."""
    hues = (np.arange(n) * 137.508) % 360
    hsv = np.stack([hues / 2, np.full(n, 200), np.full(n, 230)], -1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def visualize(frame: np.ndarray, segmentation, alpha: float = 0.5, legend: bool = True) -> np.ndarray:
    """H x W x 3 uint8 RGB frame (or float in [0, 1], as segment() takes) + Segmentation -> uint8 RGB overlay."""
    from runtime.frames import check_frame

    frame = check_frame(frame)
    colors = palette(max(len(segmentation.classes), 1))
    labeled = segmentation.labels >= 0
    color_map = colors[np.where(labeled, segmentation.labels, 0)]
    out = cv2.addWeighted(frame, 1.0 - alpha, color_map, alpha, 0.0)
    out[~labeled] = frame[~labeled]  # unlabeled pixels (-1) stay as they were
    if not legend:
        return out
    present = np.unique(segmentation.labels[labeled])
    scale = max(frame.shape[0] / 512.0, 0.4)
    line = int(22 * scale)
    y = line
    for idx in present:
        name = segmentation.classes[idx]
        score = float(segmentation.scores[idx]) if segmentation.scores is not None else 0.0
        cv2.rectangle(out, (6, y - line + 6), (6 + line - 8, y - 2), tuple(int(c) for c in colors[idx]), -1)
        _text(out, f"{name} {score:.2f}", (6 + line, y - 4), scale)
        y += line
    if segmentation.caption:
        for i, row in enumerate(textwrap.wrap(segmentation.caption, width=max(int(frame.shape[1] / (11 * scale)), 10))[:3]):
            _text(out, row, (6, frame.shape[0] - 8 - (2 - i) * line), scale)
    return out


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float) -> None:
    # A dark outline under white text stays readable on any colour.
    for color, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, color, thick, cv2.LINE_AA)
