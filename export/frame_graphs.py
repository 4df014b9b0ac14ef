"""The frame graphs (issue 17): preprocessing and semantic inference as ONNX, so that a frame goes to the engines'
device once (uint8) and only the labels and scores come back.

Both are written with `onnx.helper` (no torch: they are a few dozen plain operators), opset 18, and use only
operators TensorRT's ONNX parser takes (engines/trt_supported_ops.py; checked at build and in the tests).

**frame_preprocess**: image (1, H, W, 3) uint8, any H and W -> each graph's (1, 3, S, S) normalized input, as
`runtime.frames.to_tensor` makes it: OpenCV's area filter when the frame shrinks (min(H, W) > S), bilinear
(half-pixel) otherwise. ONNX Resize has no area mode, and TensorRT's IResizeLayer has no antialiasing, so both
filters are one separable resampling: per axis a (S, K) table of source indices and weights, computed in the
graph from the frame's size (area: each output pixel's box overlap with the input pixels, OpenCV's
`computeResizeAreaTab`; linear: the triangle 1 - |x - src|), applied as Gather + Mul + ReduceSum along H, then
along W. The result is rounded to whole grey levels, as OpenCV's uint8 resize is. Agreement with the host path:
within 1 grey level (OpenCV's bilinear rounds its 11-bit fixed-point weights), see tests/test_frame_graphs.py.

**semantic_map**: mask logits (1, Q, h, w), class logits (1, Q, V+1) and the frame (1, H, W, 3) (its shape
only) -> labels (1, H, W) (uint8 when V <= 256, else int32) and scores (V,), as `runtime.frames.semantic_map`:
scores_c = sum_q softmax(class)_qc sigmoid(mask)_q at mask resolution, bilinearly upsampled to the frame, argmax.
Upsampling all V maps to the frame (what the host does) costs V x H x W; here each mask cell (the 2 x 2 source
pixels a frame pixel interpolates) keeps its CANDIDATES best classes by their largest corner, and only those are
upsampled (CANDIDATES x H x W, whatever V is). A class outside a cell's candidates can win inside it only when it
is never the top-CANDIDATES at any corner yet wins between them: rare, and only on boundaries (measured in
tests/test_frame_graphs.py and benchmarks/bench_frame_path.py; 3 candidates were measured too: 15% faster on the CPU,
but up to 1.3% of labels differ on many-class random logits, against 0.15% with 4). Along W the candidates are
interpolated by one matmul with (w-1, W) interpolation matrices, along H by row gathers, so every frame-size tensor
is made with W innermost and nothing is transposed or gathered one element at a time at frame size; the argmax over
the candidates is a chain of comparisons that carries the winner's class id (upsampled the same way). Scores (the
mean of max/sum over the pixels a class wins) are two ScatterElements (reduction "add") into V bins. (Running sums
per cell and candidate, CumSum along W then H, avoid the scatter but cost 3x the whole graph on ONNX Runtime's CPU.)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.contract import (CLASS_AXIS, FRAME_HEIGHT_AXIS, FRAME_PREPROCESS, FRAME_WIDTH_AXIS, SEMANTIC_MAP,
                              VOCAB_AXIS, Preprocess)

OPSET = 18                 # ReduceSum/ReduceMax axes as inputs; TensorRT 10.3 parses opsets 9-20
CANDIDATES = 4             # classes kept per mask cell (semantic_map); see the module docstring
# The frames the graphs are built for (TensorRT profiles; ONNX Runtime takes any size): up to 4K UHD landscape.
# Bigger frames take the host path (runtime.pipeline). Opt: 720p.
FRAME_RANGE = {FRAME_HEIGHT_AXIS: (1, 2160), FRAME_WIDTH_AXIS: (1, 3840)}


class _Graph:
    """A graph under construction: `op(...)` adds a node and returns its output name(s)."""

    def __init__(self, name: str):
        self.name, self.nodes, self.inits, self._n = name, [], [], 0

    def _fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value, dtype=np.float32) -> str:
        name = self._fresh("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def i64(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def op(self, op_type: str, *inputs: str, outputs: int = 1, out: str | Sequence[str] | None = None, **attrs):
        names = ([out] if isinstance(out, str) else list(out)) if out is not None else \
            [self._fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self._fresh(op_type), **attrs))
        return names[0] if len(names) == 1 else names

    def model(self, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="llmformer-edge export/frame_graphs.py")
        model.ir_version = 9   # what ONNX Runtime >= 1.16 and TensorRT 10's parser read
        return model

    # small idioms
    def dim(self, shape: str, axis: int) -> str:
        """(1,) int64: one dimension of a Shape output."""
        return self.op("Slice", shape, self.i64(axis), self.i64(axis + 1))

    def f32(self, x: str) -> str:
        return self.op("Cast", x, to=TensorProto.FLOAT)

    def i64_of(self, x: str) -> str:
        return self.op("Cast", x, to=TensorProto.INT64)



# ------------------------------------------------------------------------------------------ preprocessing
def _taps(g: _Graph, n: str, size: int, area: str) -> tuple[str, str]:
    """Source indices (size, K) int64 and weights (size, K) float32 resampling an axis of n pixels ((1,) int64)
    to `size`, as OpenCV does: area (`area` true) or half-pixel bilinear clamped at the edges."""
    nf = g.f32(n)                                                   # (1,)
    scale = g.op("Div", nf, g.const([float(size)]))                 # source pixels per output pixel
    # Taps per output pixel: an area box spans at most ceil(scale) + 1 source pixels; bilinear needs 2.
    k = g.op("Max", g.op("Add", g.i64_of(g.op("Ceil", scale)), g.i64(1)), g.i64(2))
    t = g.f32(g.op("Range", g.const(0, np.int64), g.op("Squeeze", k, g.i64(0)), g.const(1, np.int64)))   # (K,)
    i = g.const(np.arange(size, dtype=np.float32)[:, None])         # (S, 1)
    last = g.op("Sub", nf, g.const([1.0]))                          # n - 1
    # Area: output pixel i covers [i*scale, (i+1)*scale); weight = overlap with [j, j+1) / scale.
    lo = g.op("Mul", i, scale)
    hi = g.op("Add", lo, scale)
    j = g.op("Add", g.op("Floor", lo), t)                          # (S, K)
    overlap = g.op("Sub", g.op("Min", hi, g.op("Add", j, g.const(1.0))), g.op("Max", lo, j))
    w_area = g.op("Div", g.op("Relu", overlap), scale)
    # Bilinear, half-pixel: src = (i + 0.5) * scale - 0.5 clamped to [0, n - 1]; weight = 1 - |j - src|.
    src = g.op("Sub", g.op("Mul", g.op("Add", i, g.const(0.5)), scale), g.const(0.5))
    src = g.op("Min", g.op("Max", src, g.const(0.0)), last)        # (S, 1)
    j_lin = g.op("Add", g.op("Floor", src), t)
    w_lin = g.op("Relu", g.op("Sub", g.const(1.0), g.op("Abs", g.op("Sub", j_lin, src))))
    index = g.i64_of(g.op("Min", g.op("Where", area, j, j_lin), last))   # taps past the edge weigh 0
    return index, g.op("Where", area, w_area, w_lin)


def _resample(g: _Graph, x: str, h: str, w: str, pre: Preprocess, out: str) -> None:
    """x (1, H, W, 3) float32 (0-255) -> `out` (1, 3, S, S), resized and normalized as `pre` says.

    Each pass gathers whole rows (blocks of W*3 or S*3 floats, plain copies) and weighs the K taps with a batched
    (1, K) @ (K, n) matmul: elementwise broadcasting over (.., K, 3) blocks is 10x slower on ONNX Runtime's CPU."""
    s = pre.size
    area = g.op("Greater", g.op("Min", h, w), g.i64(s))           # (1,) bool: OpenCV INTER_AREA when shrinking
    iy, wy = _taps(g, h, s, area)
    ix, wx = _taps(g, w, s, area)
    rows = g.op("Reshape", x, g.op("Concat", h, g.i64(-1), axis=0))                 # (H, W*3)
    y = g.op("MatMul", g.op("Unsqueeze", wy, g.i64(1)), g.op("Gather", rows, iy, axis=0))   # (S, 1, W*3)
    y = g.op("Transpose", g.op("Reshape", y, g.op("Concat", g.i64(s), w, g.i64(3), axis=0)), perm=[1, 0, 2])
    cols = g.op("Reshape", y, g.op("Concat", w, g.i64(-1), axis=0))                 # (W, S*3)
    z = g.op("MatMul", g.op("Unsqueeze", wx, g.i64(1)), g.op("Gather", cols, ix, axis=0))   # (S_x, 1, S_y*3)
    z = g.op("Round", g.op("Reshape", z, g.i64(s, s, 3)))   # OpenCV resizes uint8 to uint8: whole grey levels
    mean, std = np.asarray(pre.mean, np.float32), np.asarray(pre.std, np.float32)
    z = g.op("Add", g.op("Mul", z, g.const(1.0 / (255.0 * std))), g.const(-mean / std))   # (S_x, S_y, 3)
    g.op("Unsqueeze", g.op("Transpose", z, perm=[2, 1, 0]), g.i64(0), out=out)      # (1, 3, S_y, S_x)


def preprocess_graph(vision: Preprocess, segmenter: Preprocess) -> onnx.ModelProto:
    """The frame_preprocess graph for the tower's and the segmenter's (stretched) inputs."""
    for name, pre in (("vision", vision), ("segmenter", segmenter)):
        if pre.mode != "stretch":
            raise ValueError(f"the frame graph stretches frames; the {name} input is preprocessed as '{pre.mode}'")
    n = FRAME_PREPROCESS
    g = _Graph(n.component)
    x = g.f32(n.image)                  # TensorRT reads a UINT8 input only through a Cast
    shape = g.op("Shape", x)
    h, w = g.dim(shape, 1), g.dim(shape, 2)
    _resample(g, x, h, w, vision, n.pixel_values)
    _resample(g, x, h, w, segmenter, n.frame)
    frame = [1, FRAME_HEIGHT_AXIS, FRAME_WIDTH_AXIS, 3]
    return g.model([helper.make_tensor_value_info(n.image, TensorProto.UINT8, frame)],
                   [helper.make_tensor_value_info(n.pixel_values, TensorProto.FLOAT, [1, 3, vision.size, vision.size]),
                    helper.make_tensor_value_info(n.frame, TensorProto.FLOAT, [1, 3, segmenter.size, segmenter.size])])


# ------------------------------------------------------------------------------------------ semantic map
def _cell_table(g: _Graph, n_out: str, n_in: str) -> tuple[str, str]:
    """For each of n_out output pixels along an axis upsampled from n_in ((1,) int64 each): the mask cell it
    interpolates in, i0 in [0, n_in - 2] (int64), and the weight of the cell's far side, f in [0, 1] (half-pixel,
    clamped at the edges: ONNX Resize's and OpenCV's INTER_LINEAR)."""
    x = g.f32(g.op("Range", g.const(0, np.int64), g.op("Squeeze", n_out, g.i64(0)), g.const(1, np.int64)))
    src = g.op("Sub", g.op("Mul", g.op("Add", x, g.const(0.5)), g.op("Div", g.f32(n_in), g.f32(n_out))),
               g.const(0.5))
    src = g.op("Min", g.op("Max", src, g.const(0.0)), g.f32(g.op("Sub", n_in, g.i64(1))))
    i0 = g.op("Min", g.op("Floor", src), g.f32(g.op("Sub", n_in, g.i64(2))))
    return g.i64_of(i0), g.op("Sub", src, i0)


def semantic_graph(mask_shape: Sequence[int], max_vocab: int, candidates: int = CANDIDATES) -> onnx.ModelProto:
    """The semantic_map graph (module docstring) for the segmenter's mask logits (Q, h, w) = `mask_shape`.
    Labels are uint8 when `max_vocab` <= 256, else int32."""
    q, mh, mw = (int(d) for d in mask_shape)
    if mh < 2 or mw < 2:
        raise ValueError(f"semantic_map needs mask logits of at least 2 x 2, got {mh} x {mw}")
    n = SEMANTIC_MAP
    g = _Graph(n.component)
    kc = int(candidates)
    label_type = TensorProto.UINT8 if max_vocab <= 256 else TensorProto.INT32
    cshape, mshape, fshape = g.op("Shape", n.class_logits), g.op("Shape", n.mask_logits), g.op("Shape", g.f32(n.image))
    v = g.op("Sub", g.dim(cshape, 2), g.i64(1))                     # (1,) V
    h, w = g.dim(mshape, 2), g.dim(mshape, 3)
    H, W = g.dim(fshape, 1), g.dim(fshape, 2)
    probs = g.op("Slice", g.op("Softmax", n.class_logits, axis=-1), g.i64(0), v, g.i64(2))     # (1, Q, V)
    # Clipped as the host clips: a trained model's logits reach -100, where exp overflows float32.
    sig = g.op("Sigmoid", g.op("Clip", n.mask_logits, g.const(-60.0), g.const(60.0)))
    sig = g.op("Reshape", sig, g.i64(0, 0, -1))                     # (1, Q, h*w)
    scores = g.op("MatMul", g.op("Transpose", probs, perm=[0, 2, 1]), sig)                      # (1, V, h*w)
    scores = g.op("Reshape", scores, g.op("Concat", g.i64(1), v, h, w, axis=0))                # (1, V, h, w)
    total = g.op("ReduceSum", scores, g.i64(1), keepdims=1)        # (1, 1, h, w): upsampling is linear
    # Classes padded with -1 (every real score is >= 0) so that there are always `kc` candidates.
    padded = g.op("Pad", scores, g.i64(0, 0, 0, 0, 0, kc - 1, 0, 0), g.const(-1.0))
    upper = g.op("MaxPool", padded, kernel_shape=[2, 2], strides=[1, 1])                        # (1, V', h-1, w-1)
    _, cand = g.op("TopK", upper, g.i64(kc), axis=1, largest=1, sorted=1, outputs=2)            # (1, kc, h-1, w-1)
    corner = {}
    for a in (0, 1):
        for b in (0, 1):
            # the corner (y0 + a, x0 + b) of every cell: slice [a, a + h - 1) x [b, b + w - 1)
            s = g.op("Slice", padded, g.i64(a, b), g.op("Concat", g.op("Sub", h, g.i64(1 - a)),
                                                         g.op("Sub", w, g.i64(1 - b)), axis=0), g.i64(2, 3))
            corner[a, b] = g.op("GatherElements", s, cand, axis=1)                              # (1, kc, h-1, w-1)
    y0, fy = _cell_table(g, H, h)
    x0, fx = _cell_table(g, W, w)
    # Along W as matmuls with the (w-1, W) interpolation matrices (one-hot of each pixel's cell column, times 1 - fx
    # and fx): the result comes out with W innermost, (kc, h-1, W), so the gather along H copies rows of W values and
    # nothing is transposed at frame size. [left | right] corners @ [A; B]: row a of each cell, interpolated.
    onehot = g.f32(g.op("Equal", g.op("Unsqueeze", g.op("Range", g.const(0, np.int64),
                                                        g.op("Squeeze", g.op("Sub", w, g.i64(1)), g.i64(0)),
                                                        g.const(1, np.int64)), g.i64(1)),
                           g.op("Unsqueeze", x0, g.i64(0))))        # (w-1, W)
    interp = g.op("Concat", g.op("Mul", onehot, g.op("Sub", g.const(1.0), fx)), g.op("Mul", onehot, fx), axis=0)
    pair = {a: g.op("Concat", corner[a, 0], corner[a, 1], axis=3) for a in (0, 1)}           # (1, kc, h-1, 2(w-1))
    top = g.op("MatMul", pair[0], interp)                                                       # (1, kc, h-1, W)
    diff = g.op("MatMul", g.op("Sub", pair[1], pair[0]), interp)
    up = g.op("Add", g.op("Gather", top, y0, axis=2),
              g.op("Mul", g.op("Reshape", fy, g.i64(-1, 1)), g.op("Gather", diff, y0, axis=2)))  # (1, kc, H, W)
    # Each pixel's candidate classes, the same way (nearest cell: one-hot weights; exact for ids below 2^11 even where
    # TensorRT runs FP32 matmuls as TF32; the build's vocabulary is <= 256): a per-pixel Gather of one id from a
    # table moves one element at a time, ~3x the cost on the CPU.
    ids = g.op("Gather", g.op("MatMul", g.f32(cand), onehot), y0, axis=2)                     # (1, kc, H, W)
    # Argmax over the kc candidates as a chain of (H, 1, 1, W) comparisons, carrying the winner's id: ArgMax and
    # ReduceMax over a middle axis of length kc read with a stride of W and cost ~2x the chain on ONNX Runtime's
    # CPU. Strict ">" keeps the first maximum, as numpy's argmax.
    best = g.op("Slice", up, g.i64(0), g.i64(1), g.i64(1))
    label = g.op("Slice", ids, g.i64(0), g.i64(1), g.i64(1))
    for k in range(1, kc):
        u = g.op("Slice", up, g.i64(k), g.i64(k + 1), g.i64(1))
        won = g.op("Greater", u, best)
        label = g.op("Where", won, g.op("Slice", ids, g.i64(k), g.i64(k + 1), g.i64(1)), label)
        best = g.op("Max", best, u)                                 # (1, 1, H, W)
    g.op("Cast", g.op("Reshape", label, g.op("Concat", g.i64(1), H, W, axis=0)), to=label_type, out=n.labels)
    total_up = g.op("Resize", total, "", "", g.op("Concat", g.i64(1, 1), H, W, axis=0), mode="linear",
                    coordinate_transformation_mode="half_pixel")
    share = g.op("Div", g.op("Reshape", best, g.op("Concat", g.i64(1, 1), H, W, axis=0)),
                 g.op("Max", total_up, g.const(1e-12)))                                         # (1, 1, H, W)
    # Per class: the mean share over the pixels it wins (ScatterElements add: TensorRT's parser runs it with its own
    # scatterElements plugin, shipped in libnvinfer_plugin).
    flat = g.i64_of(g.op("Reshape", label, g.i64(-1)))             # the scatter plugin takes int64 indices only
    zeros = g.op("ConstantOfShape", v, value=numpy_helper.from_array(np.zeros(1, np.float32)))
    sums = g.op("ScatterElements", zeros, flat, g.op("Reshape", share, g.i64(-1)), axis=0, reduction="add")
    counts = g.op("ScatterElements", zeros, flat, g.op("Expand", g.const([1.0]), g.op("Shape", flat)), axis=0,
                  reduction="add")
    mean = g.op("Div", sums, g.op("Max", counts, g.const(1.0)))
    g.op("Where", g.op("Greater", counts, g.const(0.0)), mean, g.const(0.0), out=n.scores)
    return g.model([helper.make_tensor_value_info(n.mask_logits, TensorProto.FLOAT, [1, q, mh, mw]),
                    helper.make_tensor_value_info(n.class_logits, TensorProto.FLOAT, [1, q, CLASS_AXIS]),
                    helper.make_tensor_value_info(n.image, TensorProto.UINT8,
                                                  [1, FRAME_HEIGHT_AXIS, FRAME_WIDTH_AXIS, 3])],
                   [helper.make_tensor_value_info(n.labels, label_type, [1, FRAME_HEIGHT_AXIS, FRAME_WIDTH_AXIS]),
                    helper.make_tensor_value_info(n.scores, TensorProto.FLOAT, [VOCAB_AXIS])])


# ------------------------------------------------------------------------------------------ build
def validate(preprocess_file, semantic_file, vision: Preprocess, segmenter: Preprocess, mask_shape: Sequence[int],
             seed: int = 0) -> dict[str, float]:
    """Both graphs under ONNX Runtime against the host path (runtime.frames) on random smooth inputs: the largest
    difference of the normalized inputs in grey levels, and the share of pixels whose label differs."""
    import cv2
    import onnxruntime as ort

    from runtime.frames import semantic_map, to_tensor

    options = ort.SessionOptions()
    options.log_severity_level = 3
    pre = ort.InferenceSession(str(preprocess_file), options, providers=["CPUExecutionProvider"])
    sem = ort.InferenceSession(str(semantic_file), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    grey, differ, pixels = 0.0, 0, 0
    q, mh, mw = (int(d) for d in mask_shape)
    for h, w in ((480, 640), (97, 203)):      # shrinking (area) and growing (bilinear)
        frame = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
        got = pre.run(None, {FRAME_PREPROCESS.image: frame[None]})
        for out, p in zip(got, (vision, segmenter)):
            want = to_tensor(frame, p.size, p.mean, p.std)
            grey = max(grey, float((np.abs(out - want) * np.asarray(p.std, np.float32)[:, None, None]).max() * 255))
        masks = cv2.GaussianBlur(rng.standard_normal((mh, mw, q)).astype(np.float32), (0, 0), 3)
        masks = np.ascontiguousarray((masks.reshape(mh, mw, q) * 40).transpose(2, 0, 1))[None]
        classes = (rng.standard_normal((1, q, 9)) * 3).astype(np.float32)
        labels, _ = sem.run(None, {SEMANTIC_MAP.mask_logits: masks, SEMANTIC_MAP.class_logits: classes,
                                   SEMANTIC_MAP.image: frame[None]})
        want, _ = semantic_map(masks[0], classes[0], (h, w))
        differ += int((labels[0] != want).sum())
        pixels += h * w
    return {"max_grey_levels": grey, "label_mismatch": differ / pixels}
