"""Concept files and the default vocabularies built from CUB's and the synthetic dataset's
attribute names."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from qsenn_train import names
from qsenn_train.atlas.vocabulary import BIRD_DATASETS, SYNTH_DATASET, attribute_vocabulary, read_concepts
from qsenn_train.data import synth
from qsenn_train.errors import QsennError

# CUB-200-2011's attributes.txt as shipped (312 lines `<id> has_<group>::<value>`).
CUB_ATTRIBUTES_FILE = Path(__file__).parent / "data" / "cub_attributes.txt"


def cub_attribute_names() -> list[str]:
    return [line.split(" ", 1)[1] for line in CUB_ATTRIBUTES_FILE.read_text().splitlines()]


def test_the_cub_file_is_the_real_one():
    names_ = cub_attribute_names()
    assert len(names_) == 312
    assert len({name.split("::")[0] for name in names_}) == 28
    assert names_[0] == "has_bill_shape::curved_(up_or_down)" and names_[-1] == "has_wing_pattern::multi-colored"


@pytest.mark.parametrize("dataset", BIRD_DATASETS)
def test_every_cub_attribute_reads_as_a_distinct_phrase(dataset):
    vocabulary = attribute_vocabulary(dataset, cub_attribute_names())
    assert list(vocabulary) == cub_attribute_names()
    phrases = list(vocabulary.values())
    assert len(set(phrases)) == 312
    for phrase in phrases:
        assert not any(mark in phrase for mark in ("_", "::", "(", ")", "  ")), phrase
        assert phrase.startswith(("a bird with ", "a ", "an ")) and "bird" in phrase, phrase
        words = phrase.split()
        for article, following in itertools.pairwise(words):
            if article in ("a", "an"):
                vowel_sound = following[0] in "aeiou" and not following.startswith("uni")
                assert (article == "an") == vowel_sound, phrase


@pytest.mark.parametrize(
    "name, phrase",
    [
        ("has_wing_color::blue", "a bird with blue wings"),
        ("has_back_color::olive", "a bird with an olive back"),
        ("has_upper_tail_color::grey", "a bird with a grey upper tail"),
        ("has_eye_color::red", "a bird with red eyes"),
        ("has_primary_color::iridescent", "an iridescent bird"),
        ("has_breast_pattern::solid", "a bird with a solid-colored breast"),
        ("has_wing_pattern::spotted", "a bird with spotted wings"),
        ("has_head_pattern::eyering", "a bird with an eye ring"),
        ("has_head_pattern::striped", "a bird with a striped head"),
        ("has_bill_shape::curved_(up_or_down)", "a bird with a curved bill"),
        ("has_bill_shape::dagger", "a bird with a dagger-shaped bill"),
        ("has_bill_shape::all-purpose", "a bird with an all-purpose bill"),
        ("has_tail_shape::fan-shaped_tail", "a bird with a fan-shaped tail"),
        ("has_wing_shape::pointed-wings", "a bird with pointed wings"),
        ("has_bill_length::about_the_same_as_head", "a bird with a bill about as long as its head"),
        ("has_bill_length::shorter_than_head", "a bird with a bill shorter than its head"),
        ("has_size::very_small_(3_-_5_in)", "a very small bird"),
        ("has_size::medium_(9_-_16_in)", "a medium-sized bird"),
        ("has_shape::duck-like", "a duck-like bird"),
        ("has_shape::owl-like", "an owl-like bird"),
        ("has_shape::perching-like", "a perching bird"),
        ("has_shape::upright-perching_water-like", "an upright-perching water bird"),
    ],
)
def test_cub_rules(name, phrase):
    assert name in cub_attribute_names()
    assert attribute_vocabulary("CUB2011", [name]) == {name: phrase}


def test_every_synthetic_attribute_reads_as_a_distinct_phrase():
    vocabulary = attribute_vocabulary(SYNTH_DATASET, synth.ATTRIBUTE_NAMES)
    assert len(set(vocabulary.values())) == len(synth.ATTRIBUTE_NAMES)
    assert vocabulary["has_shape::circle"] == "a circle"
    assert vocabulary["has_primary_color::orange"] == "an orange shape"
    assert vocabulary["has_pattern::solid"] == "a solid-colored shape"
    assert vocabulary["has_pattern::checkered"] == "a checkered shape"
    assert vocabulary["has_count::one"] == "one shape"
    assert vocabulary["has_count::three"] == "three shapes"
    assert vocabulary["has_outline::none"] == "a shape without an outline"
    assert vocabulary["has_outline::dark"] == "a shape with a dark outline"
    assert vocabulary["has_background::noise"] == "a shape on a blotchy background"


def test_dataset_names_are_the_cli_names():
    assert set(BIRD_DATASETS) | {SYNTH_DATASET} <= set(names.DATASETS)


def test_unknown_attributes_and_datasets_are_one_line_errors():
    with pytest.raises(
        QsennError, match=r"no phrase rule for the CUB2011 attribute 'has_tail_smell::odd'; pass a concept file"
    ):
        attribute_vocabulary("CUB2011", ["has_wing_color::blue", "has_tail_smell::odd"])
    with pytest.raises(QsennError, match="no phrase rule for the synth attribute 'has_wing_color::blue'"):
        attribute_vocabulary("synth", ["has_wing_color::blue"])
    with pytest.raises(QsennError, match="no phrase rule .* 'has_size'"):
        attribute_vocabulary("CUB2011", ["has_size"])
    with pytest.raises(QsennError, match="no default vocabulary for the ImageNet dataset .*concept file"):
        attribute_vocabulary("ImageNet", [])


def test_concept_file_skips_blanks_and_comments_and_repeats(tmp_path):
    path = tmp_path / "concepts.txt"
    path.write_text("\ufeff# birds\n\na bird with blue wings\n  a red crown  \n# another\na bird with blue wings\n")
    assert read_concepts(path) == ["a bird with blue wings", "a red crown"]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("", "has no phrases"),
        ("\n  \n# only a comment\n", "has no phrases"),
        (b"a bird \xff\xfe\n", "is not UTF-8 text"),
    ],
)
def test_bad_concept_files_are_one_line_errors(tmp_path, content, problem):
    path = tmp_path / "concepts.txt"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(QsennError, match=problem) as error:
        read_concepts(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_missing_concept_file_and_folder(tmp_path):
    with pytest.raises(QsennError, match="does not exist"):
        read_concepts(tmp_path / "nope.txt")
    with pytest.raises(QsennError, match="is a folder"):
        read_concepts(tmp_path)
