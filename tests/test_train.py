"""Training: the set loss, the config, and real runs of the entry point (2 gloo processes, resume, the
captioner, a COCO-Stuff-layout folder)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from runtime.evaluate import Confusion, object_f1
from llmformer.train.config import TrainConfig
from llmformer.train.losses import LossWeights, Target, match, semantic_targets, set_criterion


def run_train(config: dict, tmp_path, procs: int = 1, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"{config['task']}.json"
    path.write_text(json.dumps(config))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs)] if procs > 1 else [sys.executable]
    res = subprocess.run([*launcher, "-m", "llmformer.train", str(path), *extra], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def test_matching_pairs_each_target_with_the_query_that_predicts_it():
    masks = torch.zeros(2, 4, 4)
    masks[0, :2] = 1
    masks[1, 2:] = 1
    logits = torch.full((5, 4, 4), -8.0)
    logits[3] = masks[0] * 16 - 8          # query 3 draws target 0's mask, query 1 target 1's
    logits[1] = masks[1] * 16 - 8
    cls = torch.zeros(5, 4)
    cls[3, 2] = cls[1, 0] = 5.0
    q, t = match(logits, cls, Target(torch.tensor([2, 0]), masks), LossWeights())
    assert dict(zip(t.tolist(), q.tolist())) == {0: 3, 1: 1}


def test_set_loss_is_small_for_a_perfect_prediction_and_handles_an_image_without_segments():
    labels = torch.zeros(8, 8, dtype=torch.int64)
    labels[:, 4:] = 2
    target = semantic_targets(labels, 3, (4, 4))
    assert target.classes.tolist() == [0, 2] and target.masks.shape == (2, 4, 4)
    labels[0, 0] = 255                                        # ignored: soft (3/4) in the 2x2 cell, no class
    assert semantic_targets(labels, 3, (4, 4)).masks[0, 0, 0] == pytest.approx(0.75)
    good_masks = torch.full((1, 3, 4, 4), -20.0)
    good_masks[0, 0] = target.masks[0].round() * 40 - 20
    good_masks[0, 1] = target.masks[1].round() * 40 - 20
    good_cls = torch.full((1, 3, 4), -20.0)
    good_cls[0, 0, 0] = good_cls[0, 1, 2] = good_cls[0, 2, 3] = 20.0    # query 2: "no object"
    bad_cls = torch.zeros(1, 3, 4)
    good, _ = set_criterion([(good_masks, good_cls)], [target], LossWeights())
    bad, _ = set_criterion([(torch.zeros(1, 3, 4, 4), bad_cls)], [target], LossWeights())
    assert float(good) < 0.05 < float(bad)
    empty = semantic_targets(torch.full((8, 8), 255), 3, (4, 4))
    loss, parts = set_criterion([(torch.zeros(1, 3, 4, 4, requires_grad=True), bad_cls)], [empty], LossWeights())
    assert np.isfinite(float(loss)) and parts["mask"] == 0.0


def test_config_rejects_unknown_keys_and_missing_dataset_root(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"task": "segmenter", "stpes": 3}))
    with pytest.raises(ValueError, match="unknown keys.*stpes"):
        TrainConfig.load(bad)
    bad.write_text(json.dumps({"dataset": {"kind": "cocostuff"}}))
    with pytest.raises(ValueError, match="needs dataset.root"):
        TrainConfig.load(bad)
    with pytest.raises(ValueError, match="name_weight must be > 0"):
        TrainConfig(task="captioner", name_weight=0.0)
    from llmformer.train import tower
    from llmformer.train.config import DatasetConfig

    coco = DatasetConfig(kind="cocostuff", root=str(tmp_path))
    with pytest.raises(ValueError, match="color need the synthetic scenes' objects"):
        tower.main(TrainConfig(task="tower", dataset=coco, loss={"color": 1.0}))
    with pytest.raises(ValueError, match="unknown terms.*colour"):
        tower.main(TrainConfig(task="tower", loss={"colour": 1.0}))
    res = subprocess.run([sys.executable, "-m", "llmformer.train", str(tmp_path / "missing.json")], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "cannot read the training config" in res.stderr


def test_confusion_miou_and_object_f1():
    conf = Confusion(3)
    conf.add(np.array([0, 0, 1, 1, 2, -1]), np.array([0, 0, 1, 2, 255, 1]))
    s = conf.summary(["a", "b", "c"])
    # the ignored pixel drops out; a: 2/2; b: tp 1 / (gt 2 + predicted 2 - 1); c: 0 (its pixel is called b)
    assert s["iou"] == {"a": 100.0, "b": 33.33, "c": 0.0} and s["miou"] == pytest.approx(400 / 9)
    assert s["pixel_accuracy"] == pytest.approx(60.0)
    assert object_f1([["circle", "circle", "grass"]], [["circle", "grass"]]) == pytest.approx(80.0)


SEGMENTER_RUN = {"task": "segmenter", "preset": "demo", "dataset": {"train_length": 4, "val_length": 2},
                 "steps": 12, "batch_size": 2, "lr": 0.002, "warmup_steps": 2, "log_every": 1, "eval_every": 0,
                 "ckpt_every": 6}


@pytest.fixture(scope="module")
def segmenter_run(tmp_path_factory):
    """12 steps on 2 gloo processes over the same 4 scenes (one global batch): the loss must fall."""
    tmp = tmp_path_factory.mktemp("train")
    out = tmp / "seg"
    run_train({**SEGMENTER_RUN, "out": str(out)}, tmp, procs=2)
    return out


def test_two_gloo_processes_train_the_segmenter_and_the_loss_falls(segmenter_run):
    from llmformer.checkpoint import load_component
    from llmformer.segmenter import LLMFormerSegmenter
    from llmformer.vision_tower import VisionTower

    values = losses(segmenter_run)
    assert len(values) == 12 and values[-1] < 0.5 * values[0], values
    metrics = json.loads((segmenter_run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch"] == 4 and 0 <= metrics["val"]["miou"] <= 100
    assert isinstance(load_component(segmenter_run / "segmenter.safetensors"), LLMFormerSegmenter)
    assert isinstance(load_component(segmenter_run / "vision_tower.safetensors"), VisionTower)
    assert json.loads((segmenter_run / "config.json").read_text())["steps"] == 12


def test_a_run_resumes_from_its_folder(segmenter_run, tmp_path):
    res = run_train({**SEGMENTER_RUN, "out": str(segmenter_run)}, tmp_path, 1, "--steps", "14")
    assert "resuming" in res.stdout and "at step 12" in res.stdout
    records = [json.loads(r) for r in (segmenter_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"][-2:] == [13, 14]


def test_the_captioner_trains_on_the_segmenter_tower_and_loads_for_export(segmenter_run, tmp_path):
    from llmformer.captioner import load_captioner

    out = tmp_path / "cap"
    run_train({"task": "captioner", "preset": "demo", "out": str(out), "dataset": {"train_length": 4, "val_length": 1},
               "vision_tower": str(segmenter_run / "vision_tower.safetensors"), "train_tower": False, "steps": 25,
               "batch_size": 4,
               "lr": 0.01, "warmup_steps": 2, "log_every": 1, "eval_every": 0, "ckpt_every": 100,
               "tokenizer_vocab": 300, "captioner_text": {"hidden_size": 32, "intermediate_size": 64,
                                                          "num_hidden_layers": 1}, "max_new_tokens": 8}, tmp_path)
    values = losses(out)
    assert values[-1] < 0.7 * values[0], values
    cap = load_captioner(out / "captioner")
    tower = cap.model.model.vision_tower.state_dict()
    from llmformer.checkpoint import load_component

    trained = load_component(segmenter_run / "vision_tower.safetensors").model.state_dict()
    assert all(torch.equal(tower[k], trained[k]) for k in trained), "the captioner must keep the segmenter's tower"


def test_the_caption_loss_trains_the_tower_blocks_it_reaches(segmenter_run, tmp_path):
    """train_tower: the blocks up to LLaVA's feature layer (-2) learn from the caption; the last block and the
    pooled output's norm get no gradient and stay; the run writes the tower in the project's format too."""
    from llmformer.captioner import load_captioner
    from llmformer.checkpoint import load_component

    out = tmp_path / "cap"
    run_train({"task": "captioner", "preset": "demo", "out": str(out), "dataset": {"train_length": 4, "val_length": 1},
               "vision_tower": str(segmenter_run / "vision_tower.safetensors"), "train_tower": True, "steps": 3,
               "batch_size": 2, "lr": 0.01, "warmup_steps": 1, "log_every": 1, "eval_every": 0, "ckpt_every": 100,
               "tokenizer_vocab": 300, "captioner_text": {"hidden_size": 32, "intermediate_size": 64,
                                                          "num_hidden_layers": 1}, "max_new_tokens": 4}, tmp_path)
    before = load_component(segmenter_run / "vision_tower.safetensors").model.state_dict()
    after = load_captioner(out / "captioner").model.model.vision_tower.state_dict()
    last = f"encoder.layers.{len([k for k in before if k.endswith('self_attn.q_proj.weight')]) - 1}."
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("encoder.layers.0.") for k in changed) and "embeddings.patch_embedding.weight" in changed
    assert not any(k.startswith(last) or "post_layernorm" in k for k in changed), sorted(changed)
    written = load_component(out / "vision_tower.safetensors").model.state_dict()
    assert all(torch.equal(written[k], after[k]) for k in after)


def test_an_ablated_segmenter_trains_on_two_processes(tmp_path):
    """A module switched off leaves parameters without gradients; DistributedDataParallel must accept it."""
    out = tmp_path / "ablated"
    run_train({**SEGMENTER_RUN, "out": str(out), "steps": 2, "ckpt_every": 2,
               "segmenter_overrides": {"semantic_attention": False, "relation_attention": False}}, tmp_path, procs=2)
    from llmformer.checkpoint import load_component

    assert load_component(out / "segmenter.safetensors").cfg.semantic_attention is False


def test_the_tower_stage_learns_cell_class_mixes_on_two_processes_and_feeds_the_captioner(tmp_path):
    """llmformer.train.tower: the loss falls on a fixed batch (4 scenes, 2 x 2 per step), the tower comes out in the
    project's format, the cell targets are the label map's class mix per tower cell, and a captioner run starts
    from the tower."""
    from llmformer.checkpoint import load_component
    from llmformer.train.tower import cell_mix

    out = tmp_path / "tower"
    run_train({"task": "tower", "preset": "demo", "out": str(out), "dataset": {"train_length": 4, "val_length": 2},
               "steps": 30, "batch_size": 2, "lr": 0.005, "warmup_steps": 2, "log_every": 1, "eval_every": 0,
               "ckpt_every": 100, "loss": {"mix": 1.0, "objects": 1.0, "color": 0.5, "pattern": 0.5}}, tmp_path, 2)
    values = losses(out)
    assert values[-1] < 0.7 * values[0], values
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and 0 <= metrics["val"]["object_accuracy"] <= 100
    assert all(0 <= metrics["val"][k] <= 100 for k in ("scene_precision", "scene_recall", "scene_f1", "small_recall",
                                                        "color_accuracy", "pattern_accuracy"))
    tower = load_component(out / "vision_tower.safetensors")
    assert json.loads((out / "config.json").read_text())["task"] == "tower" and tower.layers == (2, 3, 4)
    # A label map of two halves: each tower cell holds the mix of the classes under it.
    labels = np.zeros((256, 256), np.uint8)
    labels[:, 128:] = 3
    labels[0, 0] = 255
    mix = cell_mix([labels], 8, 20)[0]
    assert mix.shape == (64, 20) and torch.allclose(mix.sum(-1), torch.ones(64))
    assert mix[0, 0] == 1 and mix[7, 3] == 1
    run_train({"task": "captioner", "preset": "demo", "out": str(tmp_path / "cap"),
               "dataset": {"train_length": 4, "val_length": 1}, "vision_tower": str(out / "vision_tower.safetensors"),
               "train_tower": False, "steps": 2, "batch_size": 2, "warmup_steps": 1, "log_every": 1, "eval_every": 0,
               "ckpt_every": 100, "tokenizer_vocab": 300, "name_weight": 3.0,
               "captioner_text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1},
               "max_new_tokens": 4}, tmp_path)



def test_the_tower_stage_starts_on_smaller_frames_through_the_interpolated_position_table(tmp_path):
    """low_res_size / low_res_steps: smaller frames give one head output per cell of their own grid, their loss
    reaches the 12 x 12 position table through the interpolation, a run switches to the tower's size and ends there;
    bad values are refused before anything runs."""
    from llmformer.presets import get_preset
    from llmformer.train import tower as stage
    from llmformer.train.common import start_tower, tower_pixels
    from llmformer.data.synthetic import make_scene

    preset = get_preset("demo")
    model = stage.TowerWithPatchHead(start_tower(TrainConfig(task="tower"), preset), 20, True)
    images = [make_scene("train", i).image for i in range(2)]
    small, full = tower_pixels(images, preset, 112), tower_pixels(images, preset)
    assert small.shape == (2, 3, 112, 112) and model(full).shape == (2, 144, 20)
    logits = model(small)
    assert logits.shape == (2, 64, 20)
    logits.square().mean().backward()
    table = model.tower.model.embeddings.position_embedding.weight
    assert table.shape == (145, 96) and float(table.grad[1:].abs().sum()) > 0
    out = tmp_path / "tower"
    run_train({"task": "tower", "preset": "demo", "out": str(out), "dataset": {"train_length": 4, "val_length": 2},
               "steps": 4, "batch_size": 2, "warmup_steps": 1, "log_every": 1, "eval_every": 0, "ckpt_every": 100,
               "low_res_size": 112, "low_res_steps": 2}, tmp_path)
    assert len(losses(out)) == 4 and json.loads((out / "metrics.json").read_text())["val"]["cells"] > 0
    for size, steps, what in [(112, 0, "go together"), (0, 5, "go together"), (100, 5, "low_res_size 100: a multiple"),
                              (168, 5, "low_res_size 168: a multiple"), (112, 1000, "leaves none")]:
        with pytest.raises(ValueError, match=what):
            stage.main(TrainConfig(task="tower", low_res_size=size, low_res_steps=steps))
    with pytest.raises(ValueError, match="for the tower task"):
        TrainConfig(task="segmenter", low_res_size=112, low_res_steps=5)


def test_the_tower_eval_names_an_object_where_object_classes_hold_a_cell_even_when_the_background_ranks_first():
    """llmformer.train.tower.named_objects: a small object rarely wins its cell against the background, so a cell
    names the object class it ranks first among the objects once the objects hold over PRESENT (0.2) of it."""
    from llmformer.train.tower import PRESENT, named_objects

    objects = torch.tensor([True, True, True, False])       # three object classes, one background
    probs = torch.tensor([[[0.05, 0.25, 0.00, 0.70],          # objects hold 0.30: names class 1
                           [0.10, 0.05, 0.00, 0.85],          # 0.15 < PRESENT: names nothing
                           [0.00, 0.00, 0.90, 0.10]],         # names class 2
                          [[0.00, 0.00, 0.00, 1.00]] * 3])    # all background: names nothing
    assert PRESENT == 0.2
    assert named_objects(probs.clamp_min(1e-6).log(), objects) == [{1, 2}, set()]


def test_the_tower_attribute_targets_are_the_colors_and_patterns_of_the_objects_drawn_in_each_cell():
    """llmformer.train.tower.attribute_mix: per cell, the mix of the colors (patterns) of the object pixels in it,
    read through the scene's instance map; cells without object pixels have no target (all zero)."""
    from llmformer.data.synthetic import make_scene
    from llmformer.train.tower import ATTRIBUTES, attribute_mix, cell_mix

    scene = next(s for s in (make_scene("train", i) for i in range(50)) if len({o.color for o in s.objects}) >= 2)
    grid = 8
    for name in ("color", "pattern"):
        target = attribute_mix([scene], grid, name)[0]
        assert target.shape == (grid * grid, len(ATTRIBUTES[name]))
        drawn = cell_mix([scene.instances], grid, len(scene.objects) + 1)[0]   # instance mix per cell (0: none)
        has_object = drawn[:, 1:].sum(-1) > 0
        assert torch.allclose(target.sum(-1)[has_object], torch.ones(int(has_object.sum())))
        assert torch.all(target[~has_object] == 0)
        for k, o in enumerate(scene.objects):                     # cells one object fills name its attribute
            alone = drawn[:, k + 1] == 1
            value = ATTRIBUTES[name].index(getattr(o, name))
            assert torch.all(target[alone, value] == 1)


def test_training_towers_use_fused_attention_with_the_same_features_and_save_eager(tmp_path):
    """start_tower switches the tower to sdpa for training; its features equal the eager tower's and what it saves
    loads eager again (the attention ONNX export needs)."""
    from llmformer.checkpoint import load_component, save_component
    from llmformer.presets import get_preset
    from llmformer.train.common import start_tower

    preset = get_preset("demo")
    tower = start_tower(TrainConfig(task="tower", preset="demo"), preset)
    assert tower.model.config._attn_implementation == "sdpa"
    save_component(tower, tmp_path / "vision_tower.safetensors")
    eager = load_component(tmp_path / "vision_tower.safetensors")
    assert eager.model.config._attn_implementation == "eager"
    pixels = torch.randn(2, 3, preset.vision_tower.image_size, preset.vision_tower.image_size)
    with torch.no_grad():
        fused = tower.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        plain = eager.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cell_mix_is_the_label_maps_class_mix_per_tower_cell():
    """The bincount version equals average pooling of the one-hot label map where the grid divides the frame,
    and on any grid every labelled pixel counts in exactly one cell."""
    from llmformer.data.synthetic import make_scene
    from llmformer.train.tower import cell_mix

    labels = [make_scene("train", i).labels for i in range(3)]
    labels[0][:5, :5] = 255
    for lab in labels:
        onehot = torch.nn.functional.one_hot(torch.as_tensor(lab.astype(np.int64)).clamp(0, 20), 21)[..., :20]
        pooled = torch.nn.functional.avg_pool2d(onehot.permute(2, 0, 1).float()[None], 32)[0].flatten(1).T
        expected = pooled / pooled.sum(-1, keepdim=True).clamp_min(1e-6)
        assert torch.allclose(cell_mix([lab], 8, 20)[0], expected, atol=1e-6)
    mix = cell_mix(labels, 12, 20)
    assert mix.shape == (3, 144, 20) and torch.allclose(mix.sum(-1), torch.ones(3, 144))


def test_prior_noise_withholds_captions_and_renames_objects_only():
    from runtime.priors import Priors, PriorObject, Relation
    from llmformer.train.text import PriorNoise

    names = ["circle", "star", "heart"]
    priors = Priors("a red star on a circle, on grass",
                    [PriorObject("star", "red star", ["red"]), PriorObject("circle", "circle"),
                     PriorObject("grass", "grass")], [Relation(0, "on", 1)])
    rng = np.random.default_rng(0)
    assert PriorNoise(0.0, 0.0, names, rng)(priors) == priors
    assert PriorNoise(1.0, 0.0, names, rng)(priors).objects == []
    swapped = PriorNoise(0.0, 1.0, names, rng)(priors)
    assert [o.name != p.name for o, p in zip(swapped.objects, priors.objects)] == [True, True, False]
    assert all(o.name in names for o in swapped.objects[:2]) and swapped.objects[0].attributes == ["red"]
    assert swapped.relations == priors.relations and priors.objects[0].name == "star"   # the input is left alone
    noise = PriorNoise(0.5, 0.0, names, np.random.default_rng(1))
    withheld = sum(noise(priors).objects == [] for _ in range(400))
    assert 150 < withheld < 250
    with pytest.raises(ValueError, match="caption_dropout is a probability"):
        TrainConfig(task="segmenter", caption_dropout=1.5)


def test_prior_noise_leaves_objects_out_with_their_relations():
    from runtime.priors import Priors, PriorObject, Relation
    from llmformer.train.text import PriorNoise

    names = ["circle", "star", "heart"]
    priors = Priors("a red star on a circle, above a heart, on grass",
                    [PriorObject("star", "red star", ["red"]), PriorObject("circle", "circle"),
                     PriorObject("heart", "heart"), PriorObject("grass", "grass")],
                    [Relation(0, "on", 1), Relation(2, "above", 0), Relation(0, "on", 3)])
    assert PriorNoise(0.0, 0.0, names, np.random.default_rng(0), drop=1.0)(priors).names == ["grass"]
    noise = PriorNoise(0.0, 0.0, names, np.random.default_rng(0), drop=0.5)
    seen = set()
    for _ in range(200):
        out = noise(priors)
        seen.add(tuple(out.names))
        index = {n: i for i, n in enumerate(out.names)}
        expected = [(s, p, o) for s, p, o in priors.triples if s in index and o in index]
        assert out.triples == expected and out.names[-1] == "grass"
    assert len(seen) == 8 and priors.names == ["star", "circle", "heart", "grass"]   # every subset; input untouched
    left = sum(len(noise(priors).objects) for _ in range(400))
    assert 400 * 2.5 - 120 < left < 400 * 2.5 + 120     # 1 + 3 * (1 - 0.5) objects on average
    with pytest.raises(ValueError, match="prior_drop is a probability"):
        TrainConfig(task="segmenter", prior_drop=-0.1)


def test_caption_loss_weights_the_tokens_that_spell_class_names():
    """Every token of a class name or its plural carries name_weight, the rest 1 and padding 0; with every
    weight 1 the loss is transformers' own LLaVA loss."""
    from llmformer.captioner import LLAVA_PHI_PROMPT, build_random_llava, build_tiny_tokenizer, tiny_phi_config
    from llmformer.presets import demo
    from llmformer.train.captioner import PromptBuilder, caption_loss

    captions = ["Two small checkered red pentagons, on a carpet.",
                "A large dotted blue crescent left of a small white star, on grass. A red cross is above the star."]
    tokenizer = build_tiny_tokenizer(512, corpus=captions * 20)
    tok = tokenizer.backend_tokenizer
    # The prompt's words are merged like the corpus's: its system line is not spelled one byte per token.
    assert len(tok.encode(LLAVA_PHI_PROMPT["system"]).ids) < 0.5 * len(LLAVA_PHI_PROMPT["system"])
    names = ["pentagon", "carpet", "crescent", "star", "cross", "grass"]
    builder = PromptBuilder(tokenizer, demo().vision_tower.grid ** 2, names, 3.0)
    ids, weights = builder.answer(captions[0])
    spelled = {}
    for i, w in zip(ids, weights):
        spelled[w] = spelled.get(w, "") + tok.decode([i])
    assert spelled[3.0].split() == ["pentagons", "carpet"] and "red" in spelled[1.0] and ids[-1] == builder.eos_id
    input_ids, mask, labels, w = builder.batch(captions)
    assert torch.equal(w > 0, labels != -100)
    assert tok.decode(input_ids[1][w[1] == 3.0].tolist()).split() == ["crescent", "star", "grass", "cross", "star"]
    llava = build_random_llava(demo().vision_tower, tiny_phi_config(len(tokenizer.get_vocab())), tokenizer)
    pixels = torch.randn(2, 3, demo().vision_tower.image_size, demo().vision_tower.image_size)
    out = llava(input_ids=input_ids, pixel_values=pixels, attention_mask=mask, labels=labels)
    assert torch.allclose(caption_loss(out.logits, labels, (w > 0).float()), out.loss, atol=1e-5)
    heavier = caption_loss(out.logits, labels, w)
    assert not torch.allclose(heavier, out.loss)
