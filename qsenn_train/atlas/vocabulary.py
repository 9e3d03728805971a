"""Vocabularies of phrases that can name a feature: a concept file the user writes, or a
default one built from a dataset's attribute names.

A concept file holds one phrase per line; blank lines and lines starting with `#` are
skipped, and a repeated phrase counts once.

The default vocabularies turn each attribute name `has_<group>::<value>` into a phrase an
image–text model can score, by one rule per attribute group:

CUB-200-2011 and TravelingBirds (28 groups, 312 attributes):
* `has_<part>_color::<c>`: "a bird with <c> <part>", with the article a singular part needs
  (`has_wing_color::blue` → "a bird with blue wings", `has_back_color::olive` → "a bird with
  an olive back"); `has_primary_color::<c>` → "a <c> bird".
* `has_<part>_pattern::<p>` (breast, back, tail, belly, wing): "a bird with <p> <part>", where
  `solid` reads "solid-colored". The head pattern names markings instead (malar stripe, eye
  ring, crest, …): a table of its 11 values.
* `has_bill_shape`: "a bird with a <shape> bill"; the nouns dagger, needle and cone read
  "dagger-shaped" etc. `has_tail_shape` and `has_wing_shape`: the value without its part
  word ("forked_tail" → "a bird with a forked tail", "pointed-wings" → "a bird with pointed
  wings").
* `has_bill_length`: "a bird with a bill longer than its head" (`about_the_same_as_head`:
  "about as long as"). `has_size`: "a <size> bird" without the
  inch range. `has_shape`: "a <shape> bird" ("duck-like" → "a duck-like bird"), with a table
  for the six field-guide names that do not read as an adjective ("perching-like" → "a
  perching bird").
Everywhere, a parenthesised aside is dropped and underscores become spaces.

The embedded synthetic dataset (its shapes, colours, patterns, counts, outlines and
backgrounds; see `qsenn_train.data.synth`): "a circle", "a red shape", "a striped shape",
"two shapes", "a shape with a dark outline", "a shape on a gradient background".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..data import synth
from ..errors import QsennError

COMMENT_PREFIX = "#"
BIRD_DATASETS = ("CUB2011", "TravelingBirds")
SYNTH_DATASET = "synth"

_ASIDE = re.compile(r"_?\([^)]*\)")  # "curved_(up_or_down)" → "curved"


def read_concepts(path: str | Path) -> list[str]:
    """The phrases of a concept file, in file order, each once."""
    path = Path(path)
    if not path.exists():
        raise QsennError(f"concept file {path} does not exist; pass a text file with one phrase per line")
    if path.is_dir():
        raise QsennError(f"concept file {path} is a folder; pass a text file with one phrase per line")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise QsennError(f"cannot read the concept file {path} ({exc.strerror}); check its permissions") from None
    except UnicodeDecodeError:
        raise QsennError(f"concept file {path} is not UTF-8 text; save it as UTF-8, one phrase per line") from None
    phrases = [line.strip() for line in text.splitlines()]
    phrases = [p for p in phrases if p and not p.startswith(COMMENT_PREFIX)]
    if not phrases:
        raise QsennError(
            f"concept file {path} has no phrases (only blank lines or {COMMENT_PREFIX} comments); "
            "write one phrase per line"
        )
    return list(dict.fromkeys(phrases))


def attribute_vocabulary(dataset: str, attribute_names: Sequence[str]) -> dict[str, str]:
    """One phrase per attribute name (`has_<group>::<value>`), keyed by the name.

    dataset: the dataset's name as `qsenn train --dataset` spells it; only the bird datasets
    and the embedded synthetic one have rules.
    """
    if dataset in BIRD_DATASETS:
        rules = _BIRD_RULES
    elif dataset == SYNTH_DATASET:
        rules = _SYNTH_RULES
    else:
        raise QsennError(
            f"there is no default vocabulary for the {dataset} dataset (only for "
            f"{', '.join((*BIRD_DATASETS, SYNTH_DATASET))}); pass a concept file with one phrase per line"
        )
    vocabulary: dict[str, str] = {}
    for name in attribute_names:
        group, separator, value = name.partition("::")
        rule = rules.get(group) or (_bird_part_rule(group) if rules is _BIRD_RULES else None)
        if not separator or not value or rule is None:
            raise QsennError(
                f"no phrase rule for the {dataset} attribute {name!r}; pass a concept file with one phrase per line"
            )
        vocabulary[name] = rule(value)
    return vocabulary


# ----------------------------------------------------------------------------- wording helpers


def _words(value: str) -> str:
    """An attribute value as words: the aside dropped, underscores as spaces."""
    return _ASIDE.sub("", value).replace("_", " ").strip()


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _with_part(adjective: str, part: str, plural: bool) -> str:
    """ "a bird with blue wings", "a bird with a blue back"."""
    described = f"{adjective} {part}"
    return f"a bird with {described if plural else _article(described)}"


# ----------------------------------------------------------------------------- CUB rules

# The body part of a colour or pattern group, as it follows "a bird with", and whether it is plural.
_BIRD_PARTS = {
    "wing": ("wings", True),
    "upperparts": ("upperparts", True),
    "underparts": ("underparts", True),
    "back": ("back", False),
    "upper_tail": ("upper tail", False),
    "under_tail": ("under tail", False),
    "tail": ("tail", False),
    "breast": ("breast", False),
    "throat": ("throat", False),
    "eye": ("eyes", True),
    "forehead": ("forehead", False),
    "nape": ("nape", False),
    "belly": ("belly", False),
    "leg": ("legs", True),
    "bill": ("bill", False),
    "crown": ("crown", False),
}
_PART_GROUP = re.compile(r"has_(?P<part>\w+?)_(?P<kind>color|pattern)")
_PATTERN_WORDS = {"solid": "solid-colored"}
# Head patterns are markings, not a look of the whole head: each names its marking.
_HEAD_MARKINGS = {
    "spotted": "a spotted head",
    "malar": "a malar stripe",
    "crested": "a crest",
    "masked": "a face mask",
    "unique_pattern": "a uniquely patterned head",
    "eyebrow": "an eyebrow stripe",
    "eyering": "an eye ring",
    "plain": "a plain head",
    "eyeline": "an eye line",
    "striped": "a striped head",
    "capped": "a cap",
}
_SHAPE_NOUNS = {"dagger", "needle", "cone"}  # bill shapes named by a thing: "dagger-shaped"
_BILL_LENGTHS = {"about_the_same_as_head": "about as long as"}  # "longer_than_head" reads as it is
_SIZE_WORDS = {"medium": "medium-sized"}
# Body shapes whose CUB name does not read as "<name> bird".
_BODY_SHAPES = {
    "upright-perching_water-like": "an upright-perching water bird",
    "chicken-like-marsh": "a chicken-like marsh bird",
    "long-legged-like": "a long-legged bird",
    "tree-clinging-like": "a tree-clinging bird",
    "upland-ground-like": "an upland ground bird",
    "perching-like": "a perching bird",
}


def _bird_part_rule(group: str) -> Callable[[str], str] | None:
    """The rule of a `has_<part>_color` or `has_<part>_pattern` group, None for other groups."""
    match = _PART_GROUP.fullmatch(group)
    if match is None or match["part"] not in _BIRD_PARTS:
        return None
    noun, plural = _BIRD_PARTS[match["part"]]
    words = _PATTERN_WORDS if match["kind"] == "pattern" else {}

    def rule(value: str) -> str:
        return _with_part(words.get(value, _words(value)), noun, plural)

    return rule


def _bill_shape(value: str) -> str:
    shape = _words(value)
    return f"a bird with {_article(f'{shape}-shaped' if shape in _SHAPE_NOUNS else shape)} bill"


def _bill_length(value: str) -> str:
    comparison = _BILL_LENGTHS.get(value, _words(value).removesuffix(" head"))
    return f"a bird with a bill {comparison} its head"


_BIRD_RULES: dict[str, Callable[[str], str]] = {
    "has_primary_color": lambda value: f"{_article(_words(value))} bird",
    "has_head_pattern": lambda value: f"a bird with {_HEAD_MARKINGS.get(value, _article(_words(value) + ' head'))}",
    "has_bill_shape": _bill_shape,
    "has_tail_shape": lambda value: _with_part(_words(value.removesuffix("_tail")), "tail", plural=False),
    "has_wing_shape": lambda value: _with_part(_words(value.removesuffix("-wings")), "wings", plural=True),
    "has_bill_length": _bill_length,
    "has_size": lambda value: f"{_article(_SIZE_WORDS.get(_words(value), _words(value)))} bird",
    "has_shape": lambda value: _BODY_SHAPES.get(value, f"{_article(_words(value))} bird"),
}


# ----------------------------------------------------------------------------- synthetic rules

_BACKGROUND_WORDS = {"noise": "blotchy"}  # the "noise" background is smooth colour blotches


def _count(value: str) -> str:
    return f"{value} shape{'' if value == 'one' else 's'}"


def _outline(value: str) -> str:
    return "a shape without an outline" if value == "none" else f"a shape with {_article(value)} outline"


_SYNTH_RULES: dict[str, Callable[[str], str]] = {
    "has_shape": lambda value: _article(value),
    "has_primary_color": lambda value: f"{_article(value)} shape",
    "has_pattern": lambda value: f"{_article(_PATTERN_WORDS.get(value, value))} shape",
    "has_count": _count,
    "has_outline": _outline,
    synth.BACKGROUND_GROUP: lambda value: f"a shape on {_article(_BACKGROUND_WORDS.get(value, value))} background",
}
