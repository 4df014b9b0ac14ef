"""The artifact contract (engines/contract.py): the typed manifest round-trips, and every missing or
malformed key is a ManifestError that names it."""
import copy
import json
import shutil

import onnx
import pytest

from engines.contract import (CAPTIONER_DECODER, CAPTIONER_VISION, MANIFEST_NAME, SEGMENTER, TEXT_ENCODER,
                              VISION_TOWER, Manifest, read_manifest)
from engines.errors import LLMFormerError, ManifestError


@pytest.fixture
def folder(tiny_artifacts, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(tiny_artifacts, dst)
    return dst


def rewrite(folder, edit):
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_manifest_round_trips_through_the_dataclasses(tiny_artifacts):
    data = json.loads((tiny_artifacts / MANIFEST_NAME).read_text())
    manifest = read_manifest(tiny_artifacts)
    assert manifest.to_json() == data
    assert Manifest.from_json(copy.deepcopy(data)).to_json() == data
    assert manifest.preset_name == "demo" and manifest.vision_component == CAPTIONER_VISION.component
    assert manifest.samples and all((tiny_artifacts / s.frame.file).is_file() for s in manifest.samples)


def test_graph_names_are_fields_in_graph_order(tiny_artifacts):
    model = onnx.load(str(tiny_artifacts / "segmenter.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == list(SEGMENTER.inputs)
    assert [o.name for o in model.graph.output] == list(SEGMENTER.outputs)
    assert SEGMENTER.object_embeddings == "object_embeddings" != SEGMENTER.attribute_embeddings
    for graph in (VISION_TOWER, TEXT_ENCODER, SEGMENTER, CAPTIONER_VISION):
        names = graph.inputs + graph.outputs
        assert len(set(graph.inputs)) == len(graph.inputs) and len(set(graph.outputs)) == len(graph.outputs), names
    decoder = CAPTIONER_DECODER.for_layers(2)
    assert decoder.inputs[3:] == ("past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key",
                                  "past_key_values.1.value")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["components"]["segmenter"]["onnx"].pop("sha256"), r"components\.segmenter\.onnx\.sha256 is missing"),
    (lambda m: m.pop("components"), r"components is missing"),
    (lambda m: m["components"].pop("text_encoder"), r"components\.text_encoder is missing"),
    (lambda m: m.update(format_version="1"), r"format_version must be a positive int, got '1'"),
    (lambda m: m.update(format_version=99), r"format version 99, newer than this runtime reads"),
    (lambda m: m["tokenizer"].update(max_length="8"), r"tokenizer\.max_length must be a positive int"),
    (lambda m: m["preprocess"]["segmenter"].update(std=[1, 0, 1]), r"preprocess\.segmenter\.std must be 3 positive"),
    (lambda m: m["components"]["segmenter"]["inputs"][0].update(dtype="float99"), r"not a numpy dtype"),
    (lambda m: m["components"]["segmenter"]["inputs"][2].update(name="objects"),
     r"components\.segmenter\.inputs lacks \['object_embeddings'\]"),
    (lambda m: m["components"]["segmenter"]["onnx"].update(file="../../x.onnx"), r"relative path inside"),
    (lambda m: m["components"]["segmenter"]["onnx"].update(file="/etc/passwd"), r"relative path inside"),
    (lambda m: m["components"]["segmenter"].update(inputs="frame"), r"components\.segmenter\.inputs must be list"),
    (lambda m: m["samples"][0].update(vocabulary=[]), r"samples\[0\]\.vocabulary must be a non-empty list"),
])
def test_a_malformed_manifest_names_the_key(folder, edit, message):
    rewrite(folder, edit)
    with pytest.raises(ManifestError, match=message) as err:
        read_manifest(folder)
    assert isinstance(err.value, LLMFormerError) and "rebuild with" in str(err.value)


def test_a_symlink_out_of_the_folder_is_refused(folder, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copyfile(folder / "segmenter.onnx", outside)
    (folder / "segmenter.onnx").unlink()
    (folder / "segmenter.onnx").symlink_to(outside)
    with pytest.raises(ManifestError, match="points outside the artifact folder"):
        read_manifest(folder)
