"""Overlays (runtime.visualize): demo frames segmented on the tiny artifacts, written as PNG, read back,
and checked for the legend (swatch colors, text rows), the caption, and the blended colors elsewhere."""
import cv2
import numpy as np
import pytest

import runtime
from llmformer.data.frames import DEMO_SCENES, demo_frame
from runtime.frames import FrameError
from runtime.pipeline import Segmentation
from runtime.visualize import legend_swatches, palette

SIZE = (360, 480)


def blended(frame: np.ndarray, seg, alpha: float = 0.5) -> np.ndarray:
    """What the overlay must be away from the legend and caption, computed independently of OpenCV."""
    colors = palette(max(len(seg.classes), 1)).astype(np.float64)
    out = (1 - alpha) * frame.astype(np.float64) + alpha * colors[np.maximum(seg.labels, 0)]
    out = np.where((seg.labels >= 0)[..., None], out, frame)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def is_text(pixels: np.ndarray) -> tuple[bool, bool]:
    """(white text, dark outline) present. Blends of a palette color (one channel ~50, one ~230) with a
    frame are never near-white nor near-black, so these come from the drawn text only."""
    px = pixels.reshape(-1, 3).astype(int)
    return bool((px.min(1) >= 220).any()), bool((px.max(1) <= 40).any())


def check_overlay(frame: np.ndarray, seg, overlay: np.ndarray) -> list[int]:
    h, w = frame.shape[:2]
    counts = np.bincount(seg.labels[seg.labels >= 0].ravel(), minlength=len(seg.classes))
    present = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    boxes = legend_swatches(frame.shape, len(present))
    assert len(boxes) == len(present)
    colors = palette(len(seg.classes))
    for idx, (x0, y0, x1, y1) in zip(present, boxes):
        swatch = overlay[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3)
        assert (swatch == colors[idx]).all(), f"swatch of {seg.classes[idx]!r}"
        white, dark = is_text(overlay[y0 - 4:y1 + 5, x1 + 8:x1 + 60])   # "name score" right of the swatch
        assert white and dark, f"no legend text for {seg.classes[idx]!r}"
    white, _ = is_text(overlay[h - 60:, :w // 2])
    assert white == bool(seg.caption)                                    # the caption at the bottom
    # Away from the legend (top left) and the caption (bottom rows): exactly the alpha blend.
    expect = blended(frame, seg)
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(int(0.35 * h), int(0.65 * h), 200), rng.integers(int(0.3 * w), w, 200)
    diff = np.abs(overlay[ys, xs].astype(int) - expect[ys, xs].astype(int))
    assert diff.max() <= 1
    assert not any(is_text(overlay[int(0.35 * h):int(0.65 * h), int(0.3 * w):]))
    return present


def test_overlay_pngs_of_demo_frames_show_the_legend_caption_and_blended_colors(tiny_artifacts, tmp_path):
    with runtime.load(tiny_artifacts) as rt:
        for i, (caption, vocabulary) in enumerate(DEMO_SCENES[:3]):
            frame = demo_frame(i, SIZE)
            seg = rt.segment(frame, vocabulary=vocabulary, caption=caption)
            path = tmp_path / f"overlay_{i}.png"
            assert cv2.imwrite(str(path), cv2.cvtColor(runtime.visualize(frame, seg), cv2.COLOR_RGB2BGR))
            overlay = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            assert overlay.shape == frame.shape
            assert check_overlay(frame, seg, overlay)


def test_legend_lists_classes_by_area_with_their_palette_colors():
    frame = demo_frame(7, SIZE)
    labels = np.zeros(SIZE, np.int32)          # class 0 in the top quarter
    labels[90:, :] = 2                         # class 2 the most pixels
    labels[300:, 240:] = 3                     # class 3; class 1 absent
    seg = Segmentation(labels, ["ball", "box", "table", "wall"], np.array([0.9, 0, 0.8, 0.7], np.float32),
                       None, None, {})
    overlay = runtime.visualize(frame, seg)
    assert check_overlay(frame, seg, overlay) == [2, 0, 3]
    assert (overlay[200, 400] == blended(frame, seg)[200, 400]).all()
    no_legend = runtime.visualize(frame, seg, legend=False)
    assert np.abs(no_legend.astype(int) - blended(frame, seg).astype(int)).max() <= 1


def test_overlay_refuses_a_frame_that_was_not_segmented():
    seg = Segmentation(np.zeros((40, 50), np.int32), ["ball"], np.ones(1, np.float32), None, None, {})
    with pytest.raises(FrameError, match="pass the frame that was segmented"):
        runtime.visualize(demo_frame(0, (50, 40)), seg)


def test_a_note_goes_under_the_caption_and_must_be_text():
    """The demo's "caption objects: right ...; wrong ..." line: drawn in the bottom rows, the rest untouched."""
    frame = demo_frame(7, SIZE)
    labels = np.zeros(SIZE, np.int32)
    labels[180:, :] = 1
    seg = Segmentation(labels, ["ball", "table"], np.array([0.9, 0.8], np.float32), "a ball on a table", None, {})
    plain, noted = runtime.visualize(frame, seg), runtime.visualize(frame, seg, note="caption objects: right: ball")
    changed = np.nonzero(np.abs(plain.astype(int) - noted.astype(int)).max(-1))[0]
    assert changed.size and changed.min() >= SIZE[0] - 80      # only rows at the bottom (caption + note)
    assert is_text(noted[SIZE[0] - 25:, :SIZE[1] // 2])[0]     # the note is the last row
    with pytest.raises(runtime.InputTypeError, match="note"):
        runtime.visualize(frame, seg, note=3)


def test_the_demo_says_which_caption_objects_are_in_the_frame():
    from runtime.demo import caption_check

    truth = np.array([[0, 0, 2], [5, 5, 255]], np.uint8)    # star (0), ring (2), grass (5); 255 ignored
    vocabulary = ["star", "cloud", "ring", "cross", "sand", "grass"]
    assert caption_check(["cloud", "star", "star", "grass"], vocabulary, truth) == \
        "right: star, grass; wrong: cloud; missed: ring"
    assert caption_check([], vocabulary, truth) == "missed: star, ring, grass"
