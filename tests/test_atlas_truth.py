"""The naming figures of the atlas against the synthetic dataset's known class attributes, on a
planted atlas whose answers are worked out by hand."""

from __future__ import annotations

import pytest

from qsenn_train.atlas.truth import naming_figures, synth_class_attributes
from qsenn_train.data.synth import SynthSpec, class_table, generate
from qsenn_train.errors import QsennError

TRUTH = {
    "A": {"has_shape::circle", "has_primary_color::red"},
    "B": {"has_shape::circle", "has_primary_color::blue"},
    "C": {"has_shape::star", "has_primary_color::red"},
}


def feature(index, raises, name, score=2.0, used=True):
    return {
        "index": index,
        "used": used,
        "raises": [{"class": c, "weight": 1.0} for c in raises],
        "attributes": [{"attribute": name, "score": score}] if name else [],
    }


def test_figures_of_a_planted_atlas():
    atlas = {
        "classes": ["A", "B", "C"],
        "features": [
            feature(0, ["A", "B"], "has_shape::circle", 3.0),  # shared and right
            feature(1, ["A", "C"], "has_shape::circle", 1.0),  # shared, wrong for C
            feature(2, ["C"], "has_primary_color::red", 2.0),  # right
            feature(3, [], "has_background::plain", 0.5),  # raises nothing: not in the precisions
            feature(4, ["B"], "has_shape::star", 9.0, used=False),  # unused: ignored
        ],
    }
    figures = naming_figures(atlas, TRUTH)
    assert (figures.used_features, figures.raising_features, figures.shared_features) == (4, 3, 2)
    assert figures.precision == pytest.approx(2 / 3) and figures.shared_precision == pytest.approx(1 / 2)
    assert figures.mean_best_alignment == pytest.approx((3 + 1 + 2 + 0.5) / 4)
    # A: circle (0, 1) of {circle, red} → 1/2; B: circle (0) → 1/2; C: red (2) of {star, red}
    # (feature 1's circle is not C's) → 1/2.
    assert figures.recall_per_class == {"A": 0.5, "B": 0.5, "C": 0.5}
    assert figures.class_recall == pytest.approx(0.5)
    assert figures.name_groups == {"has_shape": 2, "has_primary_color": 1, "has_background": 1}


def test_a_class_outside_the_truth_is_refused():
    with pytest.raises(QsennError, match="'Z'"):
        naming_figures({"classes": ["Z"], "features": [feature(0, ["Z"], "has_shape::circle")]}, TRUTH)


def test_class_attributes_of_a_generated_dataset(tmp_path):
    spec = SynthSpec(n_classes=4, train_per_class=1, test_per_class=1, image_size=32)
    truth = synth_class_attributes(generate(spec, tmp_path))
    classes = class_table(spec)
    assert sorted(truth) == sorted(c.folder for c in classes)
    for c in classes:
        assert len(truth[c.folder]) == 5 and f"has_shape::{c.shape}" in truth[c.folder]
