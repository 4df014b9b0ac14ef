
import pytest
import torch

from conftest import tiny_preset
from export.components import segmenter_example
from llmformer.presets import PRESETS, Preset, SegmenterConfig, get_preset
from llmformer.segmenter import LLMFormerSegmenter, semantic_inference


def _model(preset, seed=0):
    torch.manual_seed(seed)
    return LLMFormerSegmenter(preset.segmenter).eval()


@pytest.mark.parametrize("name", list(PRESETS))
def test_forward_shapes_follow_each_presets_structure(name):
    p = tiny_preset(name)
    full = get_preset(name).segmenter
    m = _model(p)
    assert len(m.decoder.layers) == full.decoder_layers
    assert len(m.pixel_decoder.layers) == full.encoder_layers
    with torch.no_grad():
        masks, classes = m(*segmenter_example(p, priors=3, vocab=5))
    s = p.segmenter
    assert masks.shape == (1, full.queries, s.frame_size // full.mask_stride, s.frame_size // full.mask_stride)
    assert classes.shape == (1, full.queries, 5 + 1)


def test_paper_preset_has_the_papers_size():
    s = get_preset("paper").segmenter
    assert (s.dim, s.queries, s.encoder_layers, s.decoder_layers) == (256, 100, 6, 9)
    t = get_preset("paper").vision_tower
    assert (t.hidden_size, t.num_layers, t.patch_size, t.image_size) == (1024, 24, 14, 336)


def test_mask_stride_8_gives_eighth_resolution_masks():
    p = tiny_preset(mask_stride=8)
    with torch.no_grad():
        masks, _ = _model(p)(*segmenter_example(p))
    assert masks.shape[-2:] == (8, 8)


def test_zero_priors_and_one_class_run():
    p = tiny_preset()
    m = _model(p)
    frame, vit, *_ = segmenter_example(p)
    E = p.segmenter.text_dim
    empty = torch.zeros(1, 0, E)
    with torch.no_grad():
        masks, classes = m(frame, vit, empty, empty, torch.zeros(1, 0), torch.zeros(1, 0, 0), torch.randn(1, E))
    assert classes.shape[-1] == 2 and torch.isfinite(masks).all() and torch.isfinite(classes).all()


def test_padded_priors_change_nothing():
    """Padding slots (prior_valid = 0) are masked out, so padding is free to use for fixed shapes."""
    p = tiny_preset()
    m = _model(p)
    frame, vit, obj, attr, valid, rel, vocab = segmenter_example(p, priors=2)
    valid = torch.ones(1, 2)
    pad = lambda x, n: torch.cat([x, torch.randn(1, n, x.shape[-1])], 1)  # noqa: E731
    rel_padded = torch.zeros(1, 5, 5)
    rel_padded[:, :2, :2] = rel
    rel_padded[:, 2:, 2:] = 1.0  # garbage in the padding must not leak either
    with torch.no_grad():
        a = m(frame, vit, obj, attr, valid, rel, vocab)
        b = m(frame, vit, pad(obj, 3), pad(attr, 3), torch.cat([valid, torch.zeros(1, 3)], 1), rel_padded, vocab)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_priors_steer_the_prediction():
    p = tiny_preset()
    m = _model(p)
    frame, vit, obj, attr, valid, rel, vocab = segmenter_example(p, priors=3)
    with torch.no_grad():
        with_priors = m(frame, vit, obj, attr, torch.ones(1, 3), rel, vocab)[1]
        without = m(frame, vit, obj, attr, torch.zeros(1, 3), rel, vocab)[1]
    assert (with_priors - without).abs().max() > 1e-3


@pytest.mark.parametrize("switch", ["semantic_attention", "scaled_visual_attention", "relation_attention"])
def test_each_ablation_switch_removes_its_module(switch):
    on, off = tiny_preset(), tiny_preset(**{switch: False})
    m_on, m_off = _model(on), _model(off)
    # Give the ablated model every weight it shares with the full one, so only the module differs.
    missing, _ = m_off.load_state_dict(m_on.state_dict(), strict=False)
    assert not missing
    ex = segmenter_example(on, priors=3)
    with torch.no_grad():
        out_on, out_off = m_on(*ex), m_off(*ex)
    assert out_off[0].shape == out_on[0].shape
    layer = m_off.decoder.layers[0]
    if switch == "scaled_visual_attention":
        assert not hasattr(layer, "level_scores")
    if switch == "relation_attention":
        assert not hasattr(layer, "relation_scale")
    # Same seed, same weights where shared: the switched-off module is what makes the outputs differ.
    assert (out_on[1] - out_off[1]).abs().max() > 1e-4


def test_relation_graph_only_matters_with_relation_attention():
    for enabled in (True, False):
        p = tiny_preset(relation_attention=enabled)
        m = _model(p)
        frame, vit, obj, attr, valid, rel, vocab = segmenter_example(p, priors=3)
        valid = torch.ones(1, 3)
        full = torch.ones(1, 3, 3)
        with torch.no_grad():
            diff = (m(frame, vit, obj, attr, valid, rel, vocab)[1] - m(frame, vit, obj, attr, valid, full, vocab)[1])
        assert (diff.abs().max() > 1e-5) == enabled


def test_semantic_inference_label_map_at_input_size():
    torch.manual_seed(0)
    masks = torch.full((2, 4, 4), -10.0)
    masks[0, :, :2] = 10.0   # query 0 covers the left half
    masks[1, :, 2:] = 10.0   # query 1 the right half
    classes = torch.tensor([[5.0, 0.0, 0.0, -5.0], [0.0, 0.0, 5.0, -5.0]])  # class 0 left, class 2 right
    labels, scores = semantic_inference(masks, classes, (8, 12))
    assert labels.shape == (8, 12) and scores.shape == (3, 8, 12)
    assert (labels[:, :5] == 0).all() and (labels[:, 7:] == 2).all()


def test_preset_json_round_trip_and_bad_configs():
    for name in PRESETS:
        p = get_preset(name)
        assert Preset.from_json(p.to_json()) == p
    with pytest.raises(ValueError, match="unknown fields"):
        Preset.from_json({**get_preset("demo").to_json(), "segmenter": {"dim": 8, "bogus": 1}})
    with pytest.raises(ValueError, match="mask_stride"):
        SegmenterConfig(mask_stride=16)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


def test_runtime_numpy_semantic_map_matches_the_torch_reference():
    from runtime.frames import semantic_map

    g = torch.Generator().manual_seed(0)
    masks = torch.randn(16, 32, 32, generator=g) * 3
    classes = torch.randn(16, 7, generator=g) * 2
    ref, _ = semantic_inference(masks, classes, (90, 130))
    labels, scores = semantic_map(masks.numpy(), classes.numpy(), (90, 130))
    assert labels.shape == (90, 130) and labels.dtype.name == "int32"
    assert (labels == ref.numpy()).mean() > 0.999
    assert scores.shape == (6,) and ((scores >= 0) & (scores <= 1)).all()
