"""The CLIP-Dissect-style concept score on a fake encoder whose images are known mixtures of
phrase directions: planted concepts must come back exactly, a shuffled control must not."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from qsenn_train.atlas import concepts
from qsenn_train.atlas.concepts import ConceptScoring, score_concepts, top_activating_images
from qsenn_train.errors import QsennError

EMBED_DIM = 24


def code_image(index: int) -> np.ndarray:
    """A 2×2 uint8 image whose first pixel spells its index (what the fake encoder reads)."""
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    pixels[0, 0] = (index >> 16) & 255, (index >> 8) & 255, index & 255
    return pixels


class FakeEncoder:
    """Images → a table row picked by the index spelled in the pixels; phrases → fixed directions.
    Records what each call was given, to check the streaming."""

    def __init__(self, image_embeddings: np.ndarray, phrase_directions: dict[str, np.ndarray]):
        self.image_embeddings = image_embeddings
        self.phrase_directions = phrase_directions
        self.image_batches: list[list[int]] = []

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        indices = [int(p[0, 0, 0]) << 16 | int(p[0, 0, 1]) << 8 | int(p[0, 0, 2]) for p in images]
        self.image_batches.append(indices)
        return self.image_embeddings[indices]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.phrase_directions[t] for t in texts])


def image_stream(n: int):
    return (code_image(i) for i in range(n))


def planted_world(seed: int, n_images: int = 400, n_phrases: int = 10, n_features: int = 6):
    """Images that each show a random subset of the phrases (phrase 0 in most of them, like a
    generic "a bird"), embedded as the sum of their phrases' directions plus an offset every image
    shares plus noise; feature j fires, with random strength, on the images that show phrase
    planted[j]."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(EMBED_DIM, EMBED_DIM)))[0]
    phrases = [f"phrase {m}" for m in range(n_phrases)]
    directions = {p: basis[m] for m, p in enumerate(phrases)}
    frequency = np.full(n_phrases, 0.2)
    frequency[0] = 0.7
    shows = rng.random((n_images, n_phrases)) < frequency
    shared_offset = 2.0 * basis[n_phrases]
    embeddings = shows @ basis[:n_phrases] + shared_offset + 0.15 * rng.normal(size=(n_images, EMBED_DIM))
    planted = rng.choice(np.arange(1, n_phrases), size=n_features, replace=False)
    strength = rng.uniform(0.5, 1.5, (n_images, n_features))
    activations = shows[:, planted] * strength + 0.05 * np.abs(rng.normal(size=(n_images, n_features)))
    return activations.astype(np.float32), FakeEncoder(embeddings, directions), phrases, planted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_concepts_are_recovered_exactly(seed):
    activations, encoder, phrases, planted = planted_world(seed)
    result = score_concepts(activations, image_stream(len(activations)), encoder, phrases, batch_size=32)
    best = result.best(top=3)
    assert [names[0][0] for names in best] == [phrases[m] for m in planted]
    # Clearly ahead: the planted phrase shows in every top image, the runner-up in a fifth or so.
    for j, names in enumerate(best):
        assert names[0][1] > 1.0 and names[0][1] - names[1][1] > 0.4, (j, names)
    # The generic phrase (in 70 % of all images) never names a feature.
    assert all(phrases[0] not in [p for p, _ in names[:1]] for names in best)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffled_control_names_nothing(seed):
    activations, encoder, phrases, planted = planted_world(seed)
    shuffled = activations[np.random.default_rng(100 + seed).permutation(len(activations))]
    result = score_concepts(shuffled, image_stream(len(activations)), encoder, phrases, batch_size=32)
    best = result.best(top=1)
    hits = sum(names[0][0] == phrases[m] for names, m in zip(best, planted))
    assert hits <= 1, best  # chance: 6 features × 1/10
    # Without the link between activations and images, no pair scores like a planted one.
    planted_scores = score_concepts(activations, image_stream(len(activations)), encoder, phrases).best(top=1)
    assert np.nanmax(result.scores) < min(names[0][1] for names in planted_scores) - 0.2


def reference_scores(activations, embeddings, texts, scoring: ConceptScoring) -> np.ndarray:
    """The module docstring's formula, written out loop by loop."""
    n, f = activations.shape
    unit_images = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit_texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    p = np.zeros((n, len(texts)))
    for i in range(n):
        logits = [scoring.softmax_scale * float(unit_images[i] @ t) for t in unit_texts]
        total = sum(np.exp(v) for v in logits)
        p[i] = [np.exp(v) / total for v in logits]
    prior = p.mean(axis=0)
    out = np.full((f, len(texts)), np.nan)
    k = scoring.top_images
    for j in range(f):
        column = activations[:, j]
        ranked = sorted(range(n), key=lambda i: (-column[i], i))
        top = [i for i in ranked[:k] if column[i] > column.min()]
        if not top:
            continue
        w = [1 - (1 - scoring.last_image_weight) * r / (k - 1) for r in range(len(top))]
        for m in range(len(texts)):
            expected = sum(w_r * p[i, m] for w_r, i in zip(w, top)) / sum(w)
            out[j, m] = np.log(expected) - scoring.prior_weight * np.log(prior[m])
    return out


def test_scores_follow_the_documented_formula():
    rng = np.random.default_rng(3)
    n, e = 30, 5
    embeddings = rng.normal(size=(n, e))
    texts = rng.normal(size=(4, e))
    phrases = [f"t{m}" for m in range(4)]
    activations = np.maximum(rng.normal(size=(n, 3)), 0)
    activations[:, 2] = np.round(activations[:, 2])  # ties and a floor shared by many images
    scoring = ConceptScoring(top_images=7, softmax_scale=4.0, prior_weight=0.7, last_image_weight=0.3)
    encoder = FakeEncoder(embeddings, dict(zip(phrases, texts)))
    result = score_concepts(activations, image_stream(n), encoder, phrases, scoring=scoring, batch_size=4)
    np.testing.assert_allclose(result.scores, reference_scores(activations, embeddings, texts, scoring), rtol=1e-10)


def test_batch_size_and_memory_map_change_nothing(tmp_path):
    activations, encoder, phrases, _ = planted_world(4, n_images=90)
    np.save(tmp_path / "acts.npy", activations)
    mapped = np.load(tmp_path / "acts.npy", mmap_mode="r")
    results = [
        score_concepts(acts, image_stream(90), encoder, phrases, batch_size=b).scores
        for acts, b in ((activations, 1), (activations, 7), (mapped, 90), (mapped, 1000))
    ]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-12)


def test_images_are_streamed_in_batches():
    activations, encoder, phrases, _ = planted_world(5, n_images=50)
    pulled = 0

    def counting_stream():
        nonlocal pulled
        for i in range(50):
            pulled += 1
            yield code_image(i)

    class WatchingEncoder(FakeEncoder):
        def encode_images(self, images):
            # Only the batch being encoded has been taken from the stream, never more.
            assert pulled == sum(map(len, self.image_batches)) + len(images)
            return super().encode_images(images)

    watching = WatchingEncoder(encoder.image_embeddings, encoder.phrase_directions)
    score_concepts(activations, counting_stream(), watching, phrases, batch_size=8)
    assert [len(b) for b in watching.image_batches] == [8] * 6 + [2]
    assert [i for batch in watching.image_batches for i in batch] == list(range(50))


def test_top_images_in_chunks_match_a_plain_sort(monkeypatch):
    rng = np.random.default_rng(6)
    activations = rng.integers(0, 4, size=(57, 5)).astype(np.float32)  # many ties
    activations[:, 4] = 0  # dead
    activations[:3, 3] = 9  # only three above the floor... and the floor is shared
    activations[3:, 3] = 1
    monkeypatch.setattr(concepts, "ACTIVATION_CHUNK_BYTES", 8 * 5 * 4)  # 4 rows a chunk
    found = top_activating_images(activations, 10)
    for j in range(5):
        column = activations[:, j]
        expected = [i for i in sorted(range(57), key=lambda i: (-column[i], i))[:10] if column[i] > column.min()]
        assert found[j].tolist() == expected
    assert found[3].tolist() == [0, 1, 2] and found[4].tolist() == []


def test_a_dead_feature_gets_no_names_and_identical_images_score_zero():
    n = 12
    activations = np.zeros((n, 2))
    activations[:, 0] = np.arange(n)
    same = np.tile([1.0, 2.0, 0.5], (n, 1))  # every image alike: no phrase can stand out
    encoder = FakeEncoder(same, {"a": np.array([1.0, 0, 0]), "b": np.array([0, 1.0, 0])})
    result = score_concepts(activations, image_stream(n), encoder, ["a", "b"])
    np.testing.assert_allclose(result.scores[0], 0, atol=1e-12)
    assert np.isnan(result.scores[1]).all()
    assert result.best(2)[1] == []


def test_image_count_must_match_the_activations():
    activations, encoder, phrases, _ = planted_world(7, n_images=20)
    with pytest.raises(QsennError, match="19 images for the 20 rows"):
        score_concepts(activations, image_stream(19), encoder, phrases)
    with pytest.raises(QsennError, match="more images than the 20 rows"):
        score_concepts(activations, image_stream(21), encoder, phrases, batch_size=3)


def test_bad_encoder_output_is_one_line():
    activations, encoder, phrases, _ = planted_world(8, n_images=10)
    encoder.image_embeddings = encoder.image_embeddings.copy()
    encoder.image_embeddings[4, 0] = np.nan
    with pytest.raises(QsennError, match="image encoder returned non-finite"):
        score_concepts(activations, image_stream(10), encoder, phrases)
    encoder.image_embeddings = encoder.image_embeddings[:, :5]
    with pytest.raises(QsennError, match=r"image encoder returned an array of shape \(10, 5\), not 10×24"):
        score_concepts(activations, image_stream(10), encoder, phrases, batch_size=10)


def test_non_finite_activations_are_refused():
    activations, encoder, phrases, _ = planted_world(9, n_images=10)
    activations[6, 2] = np.inf
    with pytest.raises(QsennError, match="activations of image 6 are not finite"):
        score_concepts(activations, image_stream(10), encoder, phrases)


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"top_images": 0}, "top_images"),
        ({"softmax_scale": 0.0}, "softmax_scale"),
        ({"prior_weight": -1.0}, "prior_weight"),
        ({"last_image_weight": 0.0}, "last_image_weight"),
        ({"last_image_weight": 1.5}, "last_image_weight"),
    ],
)
def test_scoring_parameters_are_checked(kwargs, problem):
    with pytest.raises(QsennError, match=problem):
        ConceptScoring(**kwargs)


def test_no_phrases_is_an_error():
    activations, encoder, _, _ = planted_world(10, n_images=10)
    with pytest.raises(QsennError, match="no phrases"):
        score_concepts(activations, image_stream(10), encoder, [])
