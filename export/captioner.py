"""Export the LLaVA-Phi captioner as three ONNX graphs, plus its tokenizer and prompt format.

    captioner_vision.onnx    pixel_values (B, 3, S, S) -> image_embeds (B, N, E), vision_hidden_states (L, B, T, C)
    captioner_embed.onnx     input_ids (1, S) -> inputs_embeds (1, S, E)
    captioner_decoder.onnx   inputs_embeds, attention_mask, position_ids, past_key_values.{i}.key/value
                             -> logits (1, 1, V), present.{i}.key/value (the S new tokens only)

The decoder is one graph for prefill and decode (no `If` node, which TensorRT cannot build): prefill is
S = prompt length with one masked past slot, decode is S = 1 with the whole cache buffer as past. Its two
TensorRT optimization profiles come with the export (`ExportedGraph.profiles`), both with past length >= 1.

Why not optimum: its Phi export takes `input_ids` (LLaVA must splice image features into `inputs_embeds`),
its decoder returns the whole concatenated cache every step, and its attention cannot be told to keep
scores in float32. The tensor names follow optimum's all the same.

This module imports torch only inside its functions, so the runtime can read the names below without it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engines.contract import TensorSpec
from engines.contract import BATCH_AXIS, CAPTIONER_DECODER, CAPTIONER_EMBED, CAPTIONER_VISION, ComponentNames

if TYPE_CHECKING:
    from llmformer.captioner import Captioner

# Tensor names live in engines/contract.py with every other component's.


@dataclass(frozen=True)
class CaptionerFiles:
    """File names in the artifact folder (the text encoder has its own tokenizer.json there)."""

    vision: str = "captioner_vision.onnx"
    embed: str = "captioner_embed.onnx"
    decoder: str = "captioner_decoder.onnx"
    tokenizer: str = "captioner_tokenizer.json"
    prompt: str = "captioner_prompt.json"


CAPTIONER_FILES = CaptionerFiles()

# Graphs whose weights exceed this are written with their tensors in one `<file>.data` beside the .onnx
# (protobuf cannot hold 2 GB; Phi-2's decoder is 11 GB in fp32).
EXTERNAL_DATA_BYTES = 1 << 30

# --------------------------------------------------------------------------------------------- export


@dataclass
class ExportedGraph:
    """One written graph: its files (relative to the folder), tensor specs with the ranges it was built for,
    and the TensorRT optimization profiles ({input: (min, opt, max)}) an engine build should use."""

    names: ComponentNames
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    data_files: list[str] = field(default_factory=list)
    profiles: list[dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return [self.file, *self.data_files]


@dataclass
class CaptionerExport:
    vision: ExportedGraph
    embed: ExportedGraph
    decoder: ExportedGraph
    tokenizer_file: str
    prompt_file: str
    max_context: int           # prompt + generated tokens the decoder takes
    image_tokens: int          # N: image embeddings per frame (each replaces one <image> token)

    @property
    def graphs(self) -> dict[str, ExportedGraph]:
        return {g.names.component: g for g in (self.vision, self.embed, self.decoder)}

    @property
    def files(self) -> list[str]:
        return [f for g in self.graphs.values() for f in g.files] + [self.tokenizer_file, self.prompt_file]


def export_captioner(captioner: Captioner, folder: str | Path, segmenter_layers: Sequence[int],
                     opset: int | None = None, max_context: int | None = None,
                     files: CaptionerFiles = CAPTIONER_FILES, max_batch: int | None = None) -> CaptionerExport:
    """Write the three captioner graphs, its tokenizer and prompt format into `folder`; every graph is
    checked with onnx.checker and full shape inference. `segmenter_layers` are the tower hidden states the
    segmenter reads (the preset's `vision_tower.feature_layers`); `max_context` defaults to the model's
    max_position_embeddings; `max_batch` is the vision graph's batch range 1..B (export.components.DEFAULT_MAX_BATCH
    by default; 1: no batch axis)."""
    from engines.files import atomic_write_bytes
    from export.onnx_utils import DEFAULT_OPSET
    from llmformer.captioner import TOKENIZER_FILE

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    opset = opset or DEFAULT_OPSET
    vision = export_vision(captioner, folder / files.vision, segmenter_layers, opset, max_batch)
    embed = export_embed(captioner, folder / files.embed, opset, max_context)
    decoder = export_decoder(captioner, folder / files.decoder, opset, max_context)
    atomic_write_bytes(folder / files.tokenizer, (captioner.folder / TOKENIZER_FILE).read_bytes())
    atomic_write_bytes(folder / files.prompt, (json.dumps(captioner.prompt, indent=2) + "\n").encode())
    return CaptionerExport(vision, embed, decoder, files.tokenizer, files.prompt,
                           max_context=_max_context(captioner, max_context),
                           image_tokens=int(next(s for s in vision.outputs
                                                 if s.name == CAPTIONER_VISION.image_embeds).shape[1]))


def export_vision(captioner: Captioner, path: str | Path, segmenter_layers: Sequence[int],
                  opset: int | None = None, max_batch: int | None = None) -> ExportedGraph:
    import torch

    import onnx

    from export.components import DEFAULT_MAX_BATCH, traced_batch
    from export.onnx_utils import graph_specs, infer_shapes
    from llmformer.captioner import CaptionerVision

    max_batch = DEFAULT_MAX_BATCH if max_batch is None else max_batch
    size = captioner.config.vision_config.image_size
    module = CaptionerVision(captioner.model, segmenter_layers)
    example = (torch.randn(traced_batch(max_batch), 3, size, size, generator=torch.Generator().manual_seed(0)),)
    v = CAPTIONER_VISION
    axes = {v.pixel_values: {0: BATCH_AXIS}, v.image_embeds: {0: BATCH_AXIS}, v.vision_hidden_states: {1: BATCH_AXIS}}
    ranges = {BATCH_AXIS: (1, max_batch)}
    graph = _export(module, example, Path(path), v.names, axes if max_batch > 1 else {}, ranges, opset)
    # With a batch axis the exporter declares the token axes of the outputs symbolic too; shape inference knows them
    # (the file of a large tower keeps the exporter's names: TensorRT and ONNX Runtime infer the sizes themselves).
    inferred = infer_shapes(onnx.load(str(path), load_external_data=False))
    graph.inputs, graph.outputs = graph_specs(inferred, "inputs", ranges), graph_specs(inferred, "outputs", ranges)
    return graph


def export_embed(captioner: Captioner, path: str | Path, opset: int | None = None,
                 max_context: int | None = None) -> ExportedGraph:
    import torch

    from llmformer.captioner import CaptionerEmbed

    n = _max_context(captioner, max_context)
    ids = torch.arange(3, dtype=torch.int64)[None] % captioner.config.text_config.vocab_size
    axes = {CAPTIONER_EMBED.input_ids: {1: "sequence_length"}, CAPTIONER_EMBED.inputs_embeds: {1: "sequence_length"}}
    return _export(CaptionerEmbed(captioner.model), (ids,), Path(path), CAPTIONER_EMBED.names, axes,
                   {"sequence_length": (1, n)}, opset)


def export_decoder(captioner: Captioner, path: str | Path, opset: int | None = None,
                   max_context: int | None = None) -> ExportedGraph:
    """The Phi decoder over a fixed-size cache (see llmformer.captioner.CaptionerDecoder). Past and new
    lengths are dynamic: P in [1, max_context - 1], S in [1, max_context - 1], P + S <= max_context."""
    import torch

    from llmformer.captioner import CaptionerDecoder

    module = CaptionerDecoder(captioner.model)
    n = _max_context(captioner, max_context)
    layers = len(module.layers)
    names = CAPTIONER_DECODER.for_layers(layers)
    E = captioner.config.text_config.hidden_size
    g = torch.Generator().manual_seed(0)
    S, P = 3, 5  # distinct and > 1, so tracing keeps both axes symbolic
    example = (torch.randn(1, S, E, generator=g), torch.ones(1, P + S, dtype=torch.int64),
               torch.arange(P, P + S)[None],
               *[torch.randn(1, module.num_kv_heads, P, module.head_dim, generator=g) for _ in range(2 * layers)])
    d = CAPTIONER_DECODER
    axes = {d.inputs_embeds: {1: "sequence_length"}, d.attention_mask: {1: "total_sequence_length"},
            d.position_ids: {1: "sequence_length"}}
    axes.update({name: {2: "past_sequence_length"} for name in d.past(layers)})
    axes.update({name: {2: "sequence_length"} for name in d.present(layers)})
    ranges = {"sequence_length": (1, n - 1), "past_sequence_length": (1, n - 1), "total_sequence_length": (2, n)}
    graph = _export(module, example, Path(path), names, axes, ranges, opset)
    graph.profiles = decoder_profiles(graph.inputs, n, prompt_tokens=min(n - 1, 64 + _image_tokens(captioner)))
    return graph


def decoder_profiles(inputs: Sequence[TensorSpec], max_context: int, prompt_tokens: int) -> list[dict]:
    """Two TensorRT optimization profiles over the one decoder graph: prefill (S = 1..n-1, P = 1) and
    decode (S = 1, P = 1..n-1), as {input name: (min, opt, max) shape}."""
    n = max_context
    past = min(n - 1, prompt_tokens + 32)  # opt: a caption half-way through
    dims = {"prefill": {"sequence_length": (1, prompt_tokens, n - 1), "past_sequence_length": (1, 1, 1),
                        "total_sequence_length": (2, prompt_tokens + 1, n)},
            "decode": {"sequence_length": (1, 1, 1), "past_sequence_length": (1, past, n - 1),
                       "total_sequence_length": (2, past + 1, n)}}
    profiles = []
    for ranges in dims.values():
        profile = {}
        for spec in inputs:
            shapes = [tuple(d if isinstance(d, int) else ranges[d][k] for d in spec.shape) for k in range(3)]
            profile[spec.name] = tuple(shapes)
        profiles.append(profile)
    return profiles


def attention_precision_problems(model) -> list[str]:
    """Where the decoder graph would not keep attention in float32 under a float16 build: each Softmax
    must run on float32 scores made by MatMuls whose operands are explicitly Cast to float32, and its
    probabilities must be Cast back explicitly. Returns one line per problem (empty when all is well)."""
    import onnx

    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def is_fp32_cast(node) -> bool:
        return node is not None and node.op_type == "Cast" and any(
            a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)

    def score_matmuls(name: str, depth: int = 0) -> list:
        node = producer.get(name)
        if node is None or depth > 6:
            return []
        if node.op_type == "MatMul":
            return [node]
        return [m for i in node.input for m in score_matmuls(i, depth + 1)]

    problems = []
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    if not softmaxes:
        problems.append("no Softmax node: not an attention graph")
    for sm in softmaxes:
        matmuls = score_matmuls(sm.input[0])
        if not matmuls:
            problems.append(f"{sm.name}: no score MatMul found before it")
        for mm in matmuls:
            for operand in mm.input:
                node = producer.get(operand)
                while node is not None and node.op_type in ("Transpose", "Reshape", "Unsqueeze", "Squeeze"):
                    node = producer.get(node.input[0])
                if not is_fp32_cast(node):
                    problems.append(f"{mm.name}: operand {operand} of the scores is not Cast to float32")
        users = consumers.get(sm.output[0], [])
        if not users or not all(c.op_type == "Cast" for c in users):
            problems.append(f"{sm.name}: its probabilities are used without an explicit Cast")
    return problems


def _max_context(captioner: Captioner, max_context: int | None) -> int:
    n = int(max_context or captioner.max_context)
    if not 2 <= n <= captioner.max_context:
        raise ValueError(f"max_context must be in [2, {captioner.max_context}] (the model's "
                         f"max_position_embeddings), got {n}")
    return n


def _image_tokens(captioner: Captioner) -> int:
    v = captioner.config.vision_config
    return (v.image_size // v.patch_size) ** 2


def _export(module, example: tuple, path: Path, names: ComponentNames, axes: dict, ranges: dict,
            opset: int | None) -> ExportedGraph:
    """Trace, write (atomically: a temporary folder, then renames), check; return the graph's specs."""
    import onnx
    import torch

    from export.onnx_utils import DEFAULT_OPSET, export_onnx, graph_specs

    opset = opset or DEFAULT_OPSET
    module = module.eval()
    size = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    if size < EXTERNAL_DATA_BYTES:
        model = export_onnx(module, example, path, names.inputs, names.outputs, axes, opset)
        return ExportedGraph(names, path.name, graph_specs(model, "inputs", ranges),
                             graph_specs(model, "outputs", ranges))

    # Large graph: the weights go in as graph inputs (swapped into the module while tracing, so torch holds
    # no copy of them: its exporter otherwise serializes every weight for its own shape inference, about
    # three copies at peak), then each is streamed from the module into one `<name>.data` and its input
    # turned into an external initializer. Peak memory stays the module plus one tensor.
    data_name = path.name + ".data"
    weights = {**dict(module.named_parameters(remove_duplicate=False)),
               **dict(module.named_buffers(remove_duplicate=False))}
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        with torch.no_grad():
            torch.onnx.export(_WeightsAsInputs(module, list(weights)), (*example, *weights.values()),
                              str(tmp / path.name), input_names=[*names.inputs, *weights],
                              output_names=list(names.outputs), dynamic_axes=axes, opset_version=opset,
                              do_constant_folding=False, dynamo=False)
        _stream_weights(tmp / path.name, data_name, weights, names.inputs)
        onnx.checker.check_model(str(tmp / path.name), full_check=True)
        model = onnx.load(str(tmp / path.name), load_external_data=False)
        os.replace(tmp / data_name, path.parent / data_name)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportedGraph(names, path.name, graph_specs(model, "inputs", ranges), graph_specs(model, "outputs", ranges),
                         data_files=[data_name])


def _WeightsAsInputs(module, names: Sequence[str]):
    """A module whose forward(*inputs, *weights) runs `module(*inputs)` with its parameters and buffers
    (`names`, in order) replaced by the given tensors, so that tracing sees the weights as inputs."""
    import torch

    class WeightsAsInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            object.__setattr__(self, "inner", module)  # not a submodule: the wrapper owns no parameters

        def forward(self, *args):
            n = len(args) - len(names)
            saved = []
            try:
                for name, tensor in zip(names, args[n:]):
                    owner_name, _, attr = name.rpartition(".")
                    owner = module.get_submodule(owner_name)
                    store = owner._parameters if attr in owner._parameters else owner._buffers
                    saved.append((store, attr, store[attr]))
                    store[attr] = tensor  # nn.Module.__getattr__ hands out whatever the dict holds
                return module(*args[:n])
            finally:
                for store, attr, original in reversed(saved):
                    store[attr] = original

    return WeightsAsInputs()


def _stream_weights(onnx_path: Path, data_name: str, tensors: dict, keep_inputs: Sequence[str]) -> None:
    """Turn every graph input that is one of `tensors` into an initializer stored in `data_name` (4 KiB
    aligned, so it can be memory-mapped), writing one tensor at a time."""
    import onnx
    from onnx.helper import np_dtype_to_tensor_dtype

    from calibration.graphs import DATA_ALIGNMENT, point_at

    model = onnx.load(str(onnx_path))
    with open(onnx_path.parent / data_name, "wb") as out:
        for value in list(model.graph.input):
            if value.name in keep_inputs:
                continue
            if value.name not in tensors:
                raise RuntimeError(f"exported graph input '{value.name}' is neither a declared input nor a weight")
            array = tensors[value.name].detach().contiguous().numpy()
            out.write(b"\0" * (-out.tell() % DATA_ALIGNMENT))
            offset = out.tell()
            out.write(memoryview(array).cast("B"))
            tensor = onnx.TensorProto(name=value.name, data_type=np_dtype_to_tensor_dtype(array.dtype),
                                      dims=array.shape)
            point_at(tensor, data_name, offset, array.nbytes)
            model.graph.initializer.append(tensor)
            model.graph.input.remove(value)
    onnx.save(model, str(onnx_path))
