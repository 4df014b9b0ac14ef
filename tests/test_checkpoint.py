import pytest
import torch

from conftest import tiny_preset
from export.components import segmenter_example
from llmformer.checkpoint import (CheckpointError, load_component, load_segmenter, read_checkpoint, save_checkpoint,
                               save_component, save_segmenter)
from llmformer.segmenter import LLMFormerSegmenter
from llmformer.text_encoder import build_text_encoder
from llmformer.vision_tower import VisionTower, build_vision_model


def _trained_looking(preset):
    torch.manual_seed(0)
    m = LLMFormerSegmenter(preset.segmenter)
    with torch.no_grad():  # non-default BatchNorm statistics, so the round trip must carry buffers too
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    return m.eval()


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    p = tiny_preset()
    m = _trained_looking(p)
    path = save_segmenter(m, tmp_path / "seg.safetensors")
    loaded = load_segmenter(path)
    assert loaded.cfg == m.cfg
    ex = segmenter_example(p)
    with torch.no_grad():
        for a, b in zip(m(*ex), loaded(*ex)):
            assert torch.equal(a, b)


def test_vision_tower_and_text_encoder_round_trip(tmp_path):
    p = tiny_preset()
    tower = VisionTower(build_vision_model(p.vision_tower), p.vision_tower.feature_layers).eval()
    text = build_text_encoder(p.text_encoder)
    pix = torch.randn(1, 3, 56, 56)
    ids = torch.randint(0, 1000, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.int64)
    with torch.no_grad():
        assert torch.equal(tower(pix), load_component(save_component(tower, tmp_path / "v.safetensors"))(pix))
        assert torch.equal(text(ids, mask), load_component(save_component(text, tmp_path / "t.safetensors"))(ids, mask))


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_segmenter(_trained_looking(tiny_preset()), tmp_path / "seg.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_segmenter(path)
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_segmenter(path)


def test_missing_extra_and_misshaped_keys_are_named(tmp_path):
    m = _trained_looking(tiny_preset())
    path = save_segmenter(m, tmp_path / "seg.safetensors")
    state, cfg, _ = read_checkpoint(path)

    class Holder(torch.nn.Module):
        pass

    def rewrite(new_state):
        holder = Holder()
        for i, (k, v) in enumerate(new_state.items()):
            holder.register_buffer(f"b{i}", v)
        # save_checkpoint writes a module's state dict, so rebuild one with the wanted key names.
        holder.state_dict = lambda: new_state  # noqa: E731
        save_checkpoint(holder, path, cfg, kind="segmenter")

    key = "decoder.query_feat"
    rewrite({k: v for k, v in state.items() if k != key})
    with pytest.raises(CheckpointError, match=r"missing keys \['decoder.query_feat'\]"):
        load_segmenter(path)
    rewrite({**state, "decoder.bogus": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected keys.*decoder.bogus"):
        load_segmenter(path)
    rewrite({**state, key: torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match="mis-shaped keys.*decoder.query_feat"):
        load_segmenter(path)


def test_missing_checkpoint_and_foreign_safetensors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_segmenter(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="not written by llmformer-edge"):
        load_segmenter(tmp_path / "foreign.safetensors")


def test_saving_never_leaves_a_partial_file(tmp_path, monkeypatch):
    import safetensors.torch

    m = _trained_looking(tiny_preset())
    path = save_segmenter(m, tmp_path / "seg.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        save_segmenter(m, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["seg.safetensors"]
