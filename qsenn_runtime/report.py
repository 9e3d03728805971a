"""Text for people: the global explanation — every class with the features that raise and lower
its logit — for `qsenn inspect` (table, JSON, Markdown, HTML), and the `qsenn predict` table.

Imports nothing heavy (the CLI reads FORMATS when it starts)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from .metadata import Feature, ModelMetadata
    from .results import Prediction, PredictionError

FORMATS = ("table", "json", "markdown", "html")


@dataclass(frozen=True)
class ClassRule:
    """Class k's logit = Σ_j W[k, j]·c_j + bias over the features that raise it (`positive`,
    W > 0) and lower it (`negative`, W < 0); `*_weights` are those W[k, j] (±1 for Q-SENN)."""

    class_index: int
    class_name: str
    bias: float
    positive: tuple[Feature, ...]
    negative: tuple[Feature, ...]
    positive_weights: tuple[float, ...]
    negative_weights: tuple[float, ...]

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "positive": [feature_summary(f) for f in self.positive],
            "negative": [feature_summary(f) for f in self.negative],
        }


def feature_summary(feature: Feature) -> dict:
    """A feature for JSON reports: its prototype images counted, not inlined."""
    return {**asdict(feature), "prototypes": len(feature.prototypes)}


def class_rules(metadata: ModelMetadata) -> tuple[ClassRule, ...]:
    features = metadata.features
    rules = []
    for k, (name, row) in enumerate(zip(metadata.class_names, metadata.weights)):
        raising = [j for j in range(metadata.num_features) if row[j] > 0]
        lowering = [j for j in range(metadata.num_features) if row[j] < 0]
        rules.append(
            ClassRule(
                k,
                name,
                float(metadata.bias[k]),
                positive=tuple(features[j] for j in raising),
                negative=tuple(features[j] for j in lowering),
                positive_weights=tuple(float(row[j]) for j in raising),
                negative_weights=tuple(float(row[j]) for j in lowering),
            )
        )
    return tuple(rules)


def render(metadata: ModelMetadata, fmt: str, source: str = "model") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    rules = class_rules(metadata)
    usage = _feature_usage(metadata)
    if fmt == "json":
        return json.dumps(
            {
                "model": _summary(metadata, source),
                "classes": [rule.to_dict() for rule in rules],
                "features": [
                    {**feature_summary(f), "classes_positive": usage[f.index][0], "classes_negative": usage[f.index][1]}
                    for f in metadata.features
                ],
            },
            indent=2,
        )
    header = _header(metadata, source)
    class_rows = [
        (
            f"{r.class_index}",
            r.class_name,
            f"{r.bias:+.3f}",
            _names(r.positive, r.positive_weights, metadata.is_ternary),
            _names(r.negative, r.negative_weights, metadata.is_ternary),
        )
        for r in rules
    ]
    feature_rows = [
        (f"{f.index}", f"{f.channel}", f.name, f"{usage[f.index][0]}", f"{usage[f.index][1]}")
        for f in metadata.features
    ]
    signs = ("(+1)", "(−1)") if metadata.is_ternary else ("(W > 0)", "(W < 0)")
    class_head = ("#", "class", "bias", f"raised by {signs[0]}", f"lowered by {signs[1]}")
    feature_head = ("#", "channel", "feature", "classes raised", "classes lowered")
    if fmt == "table":
        return "\n".join([header, "", _text_table(class_head, class_rows), "", _text_table(feature_head, feature_rows)])
    if fmt == "markdown":
        return (
            "\n".join(
                [
                    f"**{header}**",
                    "",
                    _markdown_table(class_head, class_rows),
                    "",
                    _markdown_table(feature_head, feature_rows),
                ]
            )
            + "\n"
        )
    return _html_page(header, [(class_head, class_rows), (feature_head, feature_rows)])


WEAK_EVIDENCE_NOTE = (
    "weak evidence: the predicted class's positive evidence (the sum of its positive contributions) is "
    "lower than that of {share} of the training images' predictions; the image may be unlike the training data"
)


def weak_evidence_note(weak_below: float) -> str:
    """`weak_below`: the flag's percentile."""
    return WEAK_EVIDENCE_NOTE.format(share=f"{100 - weak_below:g}%")


def prediction_table(results: Sequence[Prediction | PredictionError], top_k: int | None) -> str:
    """One row per explained class of each image: image, class, probability, evidence (when the
    model is calibrated), top contributions; a note below when any evidence is weak."""
    predictions = [cast("Prediction", r) for r in results if r.ok]
    with_evidence = any(p.evidence is not None for p in predictions)
    rows = []
    for result in results:
        if not result.ok:
            failed = cast("PredictionError", result)
            message = failed.error.removeprefix(f"{failed.source}: ")
            rows.append((failed.source, "ERROR", *([""] if with_evidence else []), "", message))
            continue
        prediction = cast("Prediction", result)
        for n, explanation in enumerate(prediction.explanations):
            terms = [f"{c.value:+.3f} {c.name}" for c in explanation.top(top_k)]
            hidden = len(explanation.contributions) - len(terms)
            terms += [f"… {hidden} more"] if hidden else []
            evidence = prediction.evidence.text if n == 0 and prediction.evidence is not None else ""
            rows.append(
                (
                    prediction.source if n == 0 else "",
                    explanation.class_name if n == 0 else f"  {explanation.class_name} (asked)",
                    f"{prediction.probability:.3f}" if n == 0 else "",
                    *([evidence] if with_evidence else []),
                    f"logit {explanation.logit:.3f} = " + ", ".join(terms + [f"bias {explanation.bias:+.3f}"]),
                )
            )
    head = ("image", "class", "probability", *(["evidence"] if with_evidence else []), "contributions")
    table = _text_table(head, rows)
    weak = [p.evidence for p in predictions if p.evidence is not None and p.evidence.weak]
    if weak:
        table += "\n\n" + weak_evidence_note(weak[0].weak_below)
    return table


def _summary(metadata: ModelMetadata, source: str) -> dict:
    return {
        "source": source,
        "model_type": metadata.model_type,
        "head_kind": metadata.head_kind,
        "classes": metadata.num_classes,
        "features": metadata.num_features,
        "scale": metadata.scale,
        "input": asdict(metadata.input),
        "provenance": metadata.provenance,
        "exporter": metadata.exporter,
        "engine": metadata.engine,
        "quantization": metadata.quantization,
    }


def _header(metadata: ModelMetadata, source: str) -> str:
    facts = [
        f"{metadata.model_type} ({metadata.head_kind} head)",
        f"{metadata.num_classes} classes",
        f"{metadata.num_features} features",
        f"input {metadata.input.size} px ({metadata.input.resize_mode})",
    ]
    facts += [
        f"{key} {value}"
        for key, value in sorted(metadata.provenance.items())
        if isinstance(value, (str, int, float, bool))
    ]
    if metadata.engine:
        facts += [f"engine {', '.join(f'{k} {v}' for k, v in sorted(metadata.engine.items()))}"]
    if metadata.quantization:
        facts += [
            f"{metadata.quantization.get('precision', 'quantised')} backbone "
            f"({metadata.quantization.get('format', '?')}), exact float head"
        ]
    return f"{source}: " + ", ".join(facts)


def _feature_usage(metadata: ModelMetadata) -> dict[int, tuple[int, int]]:
    column = metadata.weights.T
    return {j: (int((column[j] > 0).sum()), int((column[j] < 0).sum())) for j in range(metadata.num_features)}


def _names(features: tuple[Feature, ...], weights: tuple[float, ...], ternary: bool) -> str:
    """ "name (#j)" for a ternary head (every weight is ±1), "name (#j, +0.83)" for a sparse one."""
    if ternary:
        return ", ".join(f"{f.name} (#{f.index})" for f in features) or "—"
    return ", ".join(f"{f.name} (#{f.index}, {w:+.3g})" for f, w in zip(features, weights)) or "—"


def _text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(head, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    return "\n".join([line(head), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


def _markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(head), "|" + "---|" * len(head)] + [line(r) for r in rows])


def _html_page(title: str, tables: Sequence[tuple[Sequence[str], Sequence[Sequence[str]]]]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
        "td:nth-child(4){color:#1a7f37}td:nth-child(5){color:#c62828}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for head, rows in tables:
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
