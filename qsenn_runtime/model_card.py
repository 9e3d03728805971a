"""`qsenn report MODEL --out card.html`: the model card, one self-contained HTML page (inline CSS,
JS and images; nothing is fetched) that people open in a browser.

It shows every class with the features that raise and lower its logit (names, prototypes,
weights, bias), a feature index (feature → classes, prototypes, attributes with scores,
importance), a search box over class and feature names (also `card.html#q=TEXT`), the model's
provenance and metrics, and the local explanation of each image given.

Every prototype is stored once, as a CSS class whose background is the JPEG, however many
classes show it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .heatmap import overlay
from .metadata import Feature, ModelMetadata
from .report import class_rules
from .results import ExplainedImage

CLASS_PROTOTYPES = 2  # shown per feature in a class's card (the feature index shows them all)
EXPLAINED_FEATURES = 4  # heat maps per explained image
HEAT_PIXELS = 160  # side of an explained image and its heat maps on the page

_STYLE = """
:root { --pos: #1a7f37; --neg: #c62828; --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #fff; }
header { padding: 20px 32px 14px; border-bottom: 1px solid var(--line); background: var(--bg); }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .facts { color: var(--muted); }
nav { position: sticky; top: 0; z-index: 2; display: flex; gap: 18px; align-items: center; padding: 10px 32px;
  background: #fff; border-bottom: 1px solid var(--line); }
nav a { color: var(--ink); text-decoration: none; font-weight: 600; }
nav input { margin-left: auto; width: 320px; padding: 6px 10px; border: 1px solid var(--line); border-radius: 6px; font: inherit; }
nav .count { color: var(--muted); min-width: 170px; text-align: right; }
main { padding: 8px 32px 40px; }
h2 { margin: 28px 0 10px; font-size: 18px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; background: #fff; }
.card h3 { margin: 0 0 6px; font-size: 15px; display: flex; flex-wrap: wrap; justify-content: space-between; gap: 2px 8px; overflow-wrap: anywhere; }
.card h3 .meta { color: var(--muted); font-weight: 400; font-size: 12px; }
.term { display: flex; align-items: center; gap: 8px; padding: 3px 0; }
.term .w { font-variant-numeric: tabular-nums; font-weight: 700; width: 48px; text-align: right; }
.term.pos .w { color: var(--pos); } .term.neg .w { color: var(--neg); }
.term .name { flex: 1; overflow-wrap: anywhere; }
.term .idx { color: var(--muted); font-size: 12px; }
.proto { display: inline-block; width: 40px; height: 40px; border-radius: 4px; background-size: cover;
  border: 1px solid var(--line); flex: none; }
.protos { display: flex; gap: 4px; flex-wrap: wrap; }
.feature .protos .proto { width: 64px; height: 64px; }
.desc { color: var(--muted); font-size: 12.5px; margin: 2px 0 6px; }
.pill { display: inline-block; padding: 0 7px; margin: 2px 3px 2px 0; border-radius: 10px; font-size: 12px; }
.pill.pos { background: #dafbe1; color: #116329; } .pill.neg { background: #ffebe9; color: #a40e26; }
.pill.attr { background: #ddf4ff; color: #0a3069; }
.none { color: var(--muted); font-style: italic; }
table.facts { border-collapse: collapse; }
table.facts td { padding: 3px 14px 3px 0; vertical-align: top; }
table.facts td:first-child { color: var(--muted); white-space: nowrap; }
.explained { display: flex; gap: 14px; align-items: flex-start; flex-wrap: wrap; }
.explained figure { margin: 0; width: 170px; }
.explained img { width: 160px; height: 160px; image-rendering: pixelated; border-radius: 4px; border: 2px solid var(--line); }
.explained figure.pos img { border-color: var(--pos); } .explained figure.neg img { border-color: var(--neg); }
.explained figcaption { font-size: 12px; }
.bars { margin-top: 8px; width: 100%; }
.bar { display: flex; align-items: center; gap: 8px; font-size: 12.5px; }
.bar .label { width: 320px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bar .track { flex: 1; position: relative; height: 12px; }
.bar .fill { position: absolute; top: 0; height: 12px; border-radius: 2px; }
.bar .v { width: 64px; text-align: right; font-variant-numeric: tabular-nums; }
[hidden] { display: none !important; }
"""

# The search: hides the class and feature cards whose names do not contain the text; `#q=TEXT`
# in the address fills it in (a link to one class or feature).
_SCRIPT = """
(function () {
  const box = document.getElementById("search");
  const count = document.getElementById("count");
  const cards = Array.from(document.querySelectorAll("[data-search]"));
  function apply() {
    const text = box.value.trim().toLowerCase();
    let shown = 0;
    for (const card of cards) {
      const match = !text || card.dataset.search.includes(text);
      card.hidden = !match;
      shown += match;
    }
    count.textContent = text ? shown + " of " + cards.length + " cards match" : cards.length + " cards";
  }
  box.addEventListener("input", apply);
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has("q")) box.value = hash.get("q");
  apply();
})();
"""


def render_card(metadata: ModelMetadata, source: str, explained: Sequence[ExplainedImage] = ()) -> str:
    """The whole page; `explained`: images to show the local explanation of (Model.explain)."""
    sections = [
        _classes(metadata),
        _features(metadata),
        _provenance(metadata, source),
        *([_explanations(metadata, explained)] if explained else []),
    ]
    title = f"{metadata.model_type} model card: {metadata.provenance.get('dataset', source)}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{_STYLE}{_prototype_classes(metadata)}</style></head><body>",
            _header(metadata, source),
            '<nav><a href="#classes">Classes</a><a href="#features">Features</a><a href="#provenance">Provenance</a>'
            + ('<a href="#explanations">Explanations</a>' if explained else "")
            + '<input id="search" type="search" placeholder="Search classes and features by name…" '
            'aria-label="search"><span id="count" class="count"></span></nav>',
            "<main>",
            *sections,
            "</main>",
            f"<script>{_SCRIPT}</script>",
            "</body></html>",
        ]
    )


# ---- sections -------------------------------------------------------------------------------


def _header(metadata: ModelMetadata, source: str) -> str:
    provenance = metadata.provenance
    kind = "Q-SENN (ternary head)" if metadata.is_ternary else "SLDD (sparse head)"
    facts = [
        kind,
        f"{metadata.num_classes} classes",
        f"{metadata.num_features} features",
        f"{provenance.get('arch', '?')} at {metadata.input.size} px",
        f"dataset {provenance.get('dataset', '?')}",
    ]
    accuracy = (provenance.get("metrics") or {}).get("Accuracy")
    if isinstance(accuracy, int | float):
        facts.append(f"test accuracy {accuracy:.1%}")
    return (
        f"<header><h1>{_e(source)}</h1><div class='facts'>{_e(' · '.join(facts))}</div>"
        "<div class='facts'>Each class's logit is the sum of its features' contributions plus its bias; "
        "a feature's prototypes are the training crops where it fires most (its heat map over them).</div></header>"
    )


def _classes(metadata: ModelMetadata) -> str:
    cards = []
    for rule in class_rules(metadata):
        terms = [_term(f, w, "pos", metadata.is_ternary) for f, w in zip(rule.positive, rule.positive_weights)] + [
            _term(f, w, "neg", metadata.is_ternary) for f, w in zip(rule.negative, rule.negative_weights)
        ]
        searchable = " ".join([rule.class_name, *(f.name for f in (*rule.positive, *rule.negative))])
        cards.append(
            f"<div class='card class' id='class-{rule.class_index}' data-search='{_e(searchable.lower())}'>"
            f"<h3><span>{_e(rule.class_name)}</span><span class='meta'>class {rule.class_index} · "
            f"bias {rule.bias:+.3f}</span></h3>"
            + ("".join(terms) or "<div class='none'>reads no features</div>")
            + "</div>"
        )
    return f"<section id='classes'><h2>Classes ({metadata.num_classes})</h2><div class='grid'>{''.join(cards)}</div></section>"


def _term(feature: Feature, weight: float, sign: str, ternary: bool) -> str:
    shown = f"{weight:+.0f}" if ternary else f"{weight:+.3f}"
    protos = "".join(_proto(feature.index, n) for n in range(min(CLASS_PROTOTYPES, len(feature.prototypes))))
    return (
        f"<div class='term {sign}'><span class='w'>{shown}</span><span class='protos'>{protos}</span>"
        f"<a class='name' href='#feature-{feature.index}' title='{_e(feature.description)}'>{_e(feature.name)}</a>"
        f"<span class='idx'>#{feature.index}</span></div>"
    )


def _features(metadata: ModelMetadata) -> str:
    weights = metadata.weights
    cards = []
    order = sorted(metadata.features, key=lambda f: -(f.importance or 0.0))
    for feature in order:
        column = weights[:, feature.index]
        raised = [metadata.class_names[k] for k in np.flatnonzero(column > 0)]
        lowered = [metadata.class_names[k] for k in np.flatnonzero(column < 0)]
        pills = "".join(f"<span class='pill pos'>+{_e(c)}</span>" for c in raised) + "".join(
            f"<span class='pill neg'>−{_e(c)}</span>" for c in lowered
        )
        attributes = "".join(f"<span class='pill attr'>{_e(a)} {s:.2f}</span>" for a, s in feature.attributes)
        protos = "".join(_proto(feature.index, n) for n in range(len(feature.prototypes)))
        importance = "" if feature.importance is None else f" · importance {feature.importance:.1%}"
        searchable = " ".join([feature.name, *raised, *lowered])
        cards.append(
            f"<div class='card feature' id='feature-{feature.index}' data-search='{_e(searchable.lower())}'>"
            f"<h3><span>{_e(feature.name)}</span><span class='meta'>feature {feature.index} · channel "
            f"{feature.channel}{importance}</span></h3>"
            + (f"<div class='desc'>{_e(feature.description)}</div>" if feature.description else "")
            + f"<div>{pills or '<span class=none>no class reads it</span>'}</div>"
            + (f"<div>attributes (A<sub>j,a</sub>): {attributes}</div>" if attributes else "")
            + (f"<div class='protos'>{protos}</div>" if protos else "")
            + "</div>"
        )
    return (
        f"<section id='features'><h2>Features ({metadata.num_features}, most important first)</h2>"
        f"<div class='grid'>{''.join(cards)}</div></section>"
    )


def _provenance(metadata: ModelMetadata, source: str) -> str:
    provenance = dict(metadata.provenance)
    metrics = provenance.pop("metrics", None) or {}
    recipe = provenance.pop("recipe", None)
    rows = [("model file", source), ("model type", metadata.model_type), ("head", metadata.head_kind)]
    rows += [(key, _value(value)) for key, value in sorted(provenance.items())]
    if isinstance(recipe, dict):
        rows.append(("recipe", recipe.get("name", json.dumps(recipe)[:200])))
    elif recipe is not None:
        rows.append(("recipe", str(recipe)))
    rows += [("exported by", _value(metadata.exporter))]
    if metadata.engine:
        rows.append(("engine", _value(metadata.engine)))
    if metadata.quantization:
        rows.append(("quantization", _value(metadata.quantization)))
    metric_rows = [(key, _value(value)) for key, value in sorted(metrics.items()) if not isinstance(value, dict)]
    table = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    metric_table = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in metric_rows)
    return (
        "<section id='provenance'><h2>Provenance and metrics</h2><div class='grid'>"
        f"<div class='card'><h3>Provenance</h3><table class='facts'>{table}</table></div>"
        f"<div class='card'><h3>Metrics (spec §10)</h3><table class='facts'>"
        f"{metric_table or '<tr><td>none recorded</td></tr>'}</table></div></div></section>"
    )


def _explanations(metadata: ModelMetadata, explained: Sequence[ExplainedImage]) -> str:
    blocks = []
    for item in explained:
        prediction, explanation = item.prediction, item.explanation
        figures = [
            f"<figure><img alt='input' src='{_png(item.image)}'><figcaption>the input as the model sees it</figcaption></figure>"
        ]
        for c in explanation.top(EXPLAINED_FEATURES):
            sign = "pos" if c.value >= 0 else "neg"
            feature = metadata.features[c.feature]
            protos = "".join(_proto(c.feature, n) for n in range(len(feature.prototypes)))
            figures.append(
                f"<figure class='{sign}'><img alt='heat map of {_e(c.name)}' "
                f"src='{_png(overlay(item.image, item.feature_maps[c.feature]))}'>"
                f"<figcaption><b>{_e(c.name)}</b> (#{c.feature})<br>{c.value:+.3f} = {c.weight_text} × "
                f"{c.activation:.3f}<div class='protos'>{protos}</div></figcaption></figure>"
            )
        blocks.append(
            f"<div class='card'><h3><span title='{_e(prediction.source)}'>{_e(Path(prediction.source).name)}: "
            f"predicted {_e(prediction.class_name)} "
            f"({prediction.probability:.1%})</span><span class='meta'>logit {explanation.logit:.3f}</span></h3>"
            f"<div class='explained'>{''.join(figures)}</div>{_bars(explanation)}</div>"
        )
    return f"<section id='explanations'><h2>Local explanations ({len(explained)})</h2>{''.join(blocks)}</section>"


def _bars(explanation) -> str:
    """The contributions and the bias as bars on one scale, the logit their sum."""
    rows = [(f"{c.name} (#{c.feature})", c.value) for c in explanation.contributions] + [("bias", explanation.bias)]
    largest = max((abs(v) for _, v in rows), default=1.0) or 1.0
    bars = []
    for label, value in rows:
        width = 50 * abs(value) / largest
        left = 50 if value >= 0 else 50 - width
        colour = "#757575" if label == "bias" else "var(--pos)" if value >= 0 else "var(--neg)"
        bars.append(
            f"<div class='bar'><span class='label' title='{_e(label)}'>{_e(label)}</span><span class='track'>"
            f"<span class='fill' style='left:{left:.2f}%;width:{width:.2f}%;background:{colour}'></span></span>"
            f"<span class='v'>{value:+.3f}</span></div>"
        )
    total = f"<div class='bar'><b class='label'>logit = sum</b><span class='track'></span><b class='v'>{explanation.logit:+.3f}</b></div>"
    return f"<div class='bars'>{''.join(bars)}{total}</div>"


def save_card(path: str | Path, page: str) -> Path:
    """Write the page atomically: a reader never sees half a card."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---- helpers --------------------------------------------------------------------------------


def _prototype_classes(metadata: ModelMetadata) -> str:
    return "".join(
        f".p{f.index}_{n}{{background-image:url(data:image/jpeg;base64,{text})}}"
        for f in metadata.features
        for n, text in enumerate(f.prototypes)
    )


def _proto(feature: int, n: int) -> str:
    return f"<span class='proto p{feature}_{n}'></span>"


def _png(pixels: np.ndarray) -> str:
    # Small inputs are enlarged pixel for pixel (their pixels are what the model saw), large ones smoothed.
    smaller = max(pixels.shape[:2]) <= HEAT_PIXELS
    resampling = Image.Resampling.NEAREST if smaller else Image.Resampling.LANCZOS
    image = Image.fromarray(pixels).resize((HEAT_PIXELS, HEAT_PIXELS), resampling)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items() if not isinstance(v, dict | list))
    return str(value)


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
