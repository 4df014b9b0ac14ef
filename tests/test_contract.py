"""The artifact contract (engines/contract.py): the typed manifest round-trips, and every missing or
malformed key is a ManifestError that names it."""
import copy
import json
import shutil

import numpy as np
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
    model = onnx.load(str(tiny_artifacts / read_manifest(tiny_artifacts).components["segmenter"].onnx.file),
                      load_external_data=False)
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
    segmenter = folder / read_manifest(folder).components["segmenter"].onnx.file
    shutil.copyfile(segmenter, outside)
    segmenter.unlink()
    segmenter.symlink_to(outside)
    with pytest.raises(ManifestError, match="points outside the artifact folder"):
        read_manifest(folder)


# ------------------------------------------------------------------------------------------- verify levels
def test_fingerprint_reads_a_bounded_sample_of_a_large_file(tmp_path):
    from engines.files import FINGERPRINT_BLOCK, fingerprint_file, sha256_file

    path = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 20 * FINGERPRINT_BLOCK, dtype=np.uint8).tobytes())
    path.write_bytes(data)
    before = fingerprint_file(path), sha256_file(path)
    data[FINGERPRINT_BLOCK + 123] ^= 0xFF              # inside a stretch the fingerprint does not read
    path.write_bytes(data)
    assert fingerprint_file(path) == before[0] and sha256_file(path) != before[1]
    data[-1] ^= 0xFF                                    # the tail is always read
    path.write_bytes(data)
    assert fingerprint_file(path) != before[0]


def test_load_checks_fingerprints_and_full_checks_every_byte(folder):
    data = json.loads((folder / MANIFEST_NAME).read_text())
    assert all(len(e["fingerprint"]) == 64 for e in [data["tokenizer"], data["components"]["segmenter"]["onnx"]])
    assert read_manifest(folder, verify="full").preset_name == "demo"
    path = folder / read_manifest(folder).components["segmenter"].onnx.file   # small: the fingerprint reads it all
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(raw)
    with pytest.raises(ManifestError, match="segmenter.onnx .*fingerprint mismatch"):
        read_manifest(folder)
    with pytest.raises(ManifestError, match="segmenter.onnx .*sha256 mismatch"):
        read_manifest(folder, verify="full")
    assert folder / read_manifest(folder, verify="off").components["segmenter"].onnx.file == path
    path.write_bytes(bytes(raw[:-10]))
    with pytest.raises(ManifestError, match="segmenter.onnx .* bytes, the build wrote"):
        read_manifest(folder)
    with pytest.raises(ManifestError, match="verify must be one of off, fast, full"):
        read_manifest(folder, verify=True)


def test_a_folder_without_fingerprints_is_hashed_in_full(folder):
    def drop(m):
        for entry in [m["tokenizer"], *(c["onnx"] for c in m["components"].values())]:
            entry.pop("fingerprint")

    rewrite(folder, drop)
    manifest = read_manifest(folder)
    assert manifest.tokenizer.fingerprint is None and "fingerprint" not in manifest.tokenizer.to_json()


def test_the_captioner_checkpoint_is_listed_once(tiny_artifacts):
    data = json.loads((tiny_artifacts / MANIFEST_NAME).read_text())
    listed = [e["file"] for e in data["captioner"]["checkpoint"]]
    checkpoint = data["components"][CAPTIONER_DECODER.component]["torch"]["captioner"]   # the folder's path
    assert listed and all(f.startswith(f"{checkpoint}/") for f in listed)
    assert f"{checkpoint}/" not in json.dumps(data["components"])


def test_verify_command_checks_every_byte(folder, capsys):
    from export.build_engines import main

    assert main(["--verify", str(folder)]) == 0
    assert "match their sha256" in capsys.readouterr().out
    (folder / read_manifest(folder).tokenizer.file).write_text("{}")
    assert main(["--verify", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "tokenizer.json" in err[0]


def test_a_corrupt_tokenizer_whose_hash_matches_is_named(folder):
    """A file that passes the integrity check but does not parse (written so by a broken build) is named."""
    from engines.contract import file_entry

    import runtime

    manifest = read_manifest(folder)
    path = folder / manifest.tokenizer.file
    path.write_text('{"version": "1.0", "truncation": nu')
    entry = file_entry(folder, manifest.tokenizer.file)
    rewrite(folder, lambda m: m["tokenizer"].update(sha256=entry.sha256, size=entry.size,
                                                     fingerprint=entry.fingerprint))
    with pytest.raises(ManifestError, match=r"tokenizer\.json cannot be read as a tokenizer .*rebuild"):
        runtime.load(folder, warmup=False)
