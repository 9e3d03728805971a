"""One picture of one prediction: the input, heat maps of the top contributing features, below
each the feature's prototypes from training (when the export carries an atlas: "this region
looks like these training examples"), and a waterfall of the signed contributions plus the bias
adding up to the logit.

Needs matplotlib (`pip install 'qsenn[plot]'`); only `qsenn explain` imports this module. It
draws on a figure of its own (Agg canvas), never touching pyplot's global state.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import QsennRuntimeError
from .heatmap import heat_map
from .results import Contribution, ExplainedImage

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError:
    raise QsennRuntimeError("drawing explanations needs matplotlib: pip install 'qsenn[plot]'") from None

POSITIVE, NEGATIVE, BIAS, TOTAL = "#1a7f37", "#c62828", "#757575", "#1f4e99"
MAX_BARS = 12  # further contributions are summed into one "other features" bar
TITLE_CHARS = 30  # a heat map's title wraps at this width (long class-based names)
BAR_LABEL_CHARS = 44  # a bar's feature name is shortened to this
MAX_PROTOTYPES = 4  # drawn per feature, two by two under its heat map
PROTOTYPE_ROW = 2.6  # inches of the prototypes' row
HEAT_ALPHA = 0.55


def save_explanation(
    explained: ExplainedImage,
    path: str | Path,
    top_k: int = 4,
    prototypes: Mapping[int, Sequence[np.ndarray]] | None = None,
) -> Path:
    """prototypes: per feature index its prototype images (Model.prototypes), drawn under its heat map."""
    path = Path(path)
    prediction, explanation = explained.prediction, explained.explanation
    shown = explanation.top(top_k)
    examples = {c.feature: list(prototypes.get(c.feature, ()))[:MAX_PROTOTYPES] for c in shown} if prototypes else {}
    with_examples = any(examples.values())
    columns = 1 + max(len(shown), 1)
    bar_rows = min(len(explanation.contributions), MAX_BARS + 1) + 2  # + bias and logit
    heights = (3.1, *((PROTOTYPE_ROW,) if with_examples else ()), 0.42 * bar_rows)
    figure = Figure(figsize=(2.9 * max(columns, 4), sum(heights)), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(len(heights), columns, height_ratios=heights)
    # The file name, not its whole path: a long path would run off the figure.
    title = f"{Path(prediction.source).name}: predicted {prediction.class_name} ({prediction.probability:.1%})"
    if explanation.class_index != prediction.class_index:
        logits = np.asarray(prediction.logits)
        probability = 1 / np.exp(logits - logits[explanation.class_index]).sum()
        title += f"; explained: {explanation.class_name} ({probability:.1%})"
    evidence = prediction.evidence
    if evidence is not None and evidence.weak:
        title += " — weak evidence"
    figure.suptitle(title, fontsize=13, fontweight="bold", color=NEGATIVE if evidence and evidence.weak else "black")
    if evidence is not None:
        # Below the bars, red when the prediction rests on weak evidence; wrapped to the figure.
        note = (
            f"WEAK EVIDENCE: the positive evidence for {prediction.class_name} is {evidence.score:.3f}, the "
            f"{evidence.rank} of the training images' predictions; the image may be unlike the training data"
            if evidence.weak
            else f"evidence: the positive evidence for {prediction.class_name} is {evidence.score:.3f}, the "
            f"{evidence.rank} of the training images' predictions"
        )
        size = 11 if evidence.weak else 9
        figure.supxlabel(
            textwrap.fill(note, int(figure.get_figwidth() * 72 / (0.62 * size))),
            fontsize=size,
            color=NEGATIVE if evidence.weak else BIAS,
            fontweight="bold" if evidence.weak else "normal",
        )

    image_axes = figure.add_subplot(grid[0, 0])
    image_axes.imshow(explained.image)
    image_axes.set_title(
        f"input as the model sees it\n({explained.image.shape[1]}×{explained.image.shape[0]} px)", fontsize=9
    )
    image_axes.set_xlabel(
        "heat maps: where each feature fires\n(bright = strong, scaled per map;\ncolour: sign of the contribution)",
        fontsize=8,
    )
    _bare(image_axes)
    for column, contribution in enumerate(shown, start=1):
        axes = figure.add_subplot(grid[0, column])
        axes.imshow(explained.image)
        axes.imshow(
            heat_map(explained.feature_maps[contribution.feature], explained.image.shape[:2]),
            cmap="inferno",
            alpha=HEAT_ALPHA,
            vmin=0,
            vmax=1,
        )
        colour = POSITIVE if contribution.value >= 0 else NEGATIVE
        axes.set_title(
            textwrap.fill(f"#{column} {contribution.name}", TITLE_CHARS, max_lines=2, placeholder=" …")
            + f"\n{contribution.value:+.3f} = "
            f"{contribution.weight_text} × {contribution.activation:.3f}\n"
            f"feature {contribution.feature} · channel {contribution.channel}",
            fontsize=9,
            color=colour,
        )
        _bare(axes, frame=colour)
    if not shown:
        figure.add_subplot(grid[0, 1]).text(0.5, 0.5, "this class reads no features", ha="center")
    if with_examples:
        caption = figure.add_subplot(grid[1, 0])
        caption.axis("off")
        caption.text(
            0.5,
            0.5,
            "this region looks like\nthese training examples\n(where each feature\nfires most) →",
            ha="center",
            va="center",
            fontsize=9,
        )
        for column, contribution in enumerate(shown, start=1):
            _prototype_strip(figure, grid[1, column], examples[contribution.feature])

    _waterfall(
        figure.add_subplot(grid[-1, :]),
        explanation.contributions,
        explanation.bias,
        explanation.logit,
        explanation.class_name,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _prototype_strip(figure, cell, images: list[np.ndarray]) -> None:
    """The prototypes side by side in one grid cell, two rows when there are more than two."""
    if not images:
        axes = figure.add_subplot(cell)
        axes.axis("off")
        axes.text(0.5, 0.5, "no prototypes", ha="center", va="center", fontsize=8, color=BIAS)
        return
    rows = 2 if len(images) > 2 else 1
    per_row = -(-len(images) // rows)
    inner = cell.subgridspec(rows, per_row, wspace=0.04, hspace=0.04)
    for n, image in enumerate(images):
        axes = figure.add_subplot(inner[n // per_row, n % per_row])
        axes.imshow(image)
        _bare(axes)


def _waterfall(axes, contributions: tuple[Contribution, ...], bias: float, logit: float, class_name: str) -> None:
    """Horizontal bars, each starting where the previous ended: contributions, bias, then the logit."""
    rows = [
        (
            f"{textwrap.shorten(c.name, BAR_LABEL_CHARS, placeholder=' …')} (#{c.feature}, weight {c.weight_text})",
            c.value,
        )
        for c in contributions[:MAX_BARS]
    ]
    rest = contributions[MAX_BARS:]
    if rest:
        rows.append((f"{len(rest)} other features", sum(c.value for c in rest)))
    rows.append(("bias", bias))
    start, bars = 0.0, []
    for label, value in rows:
        colour = BIAS if label == "bias" else POSITIVE if value >= 0 else NEGATIVE
        bars.append((label, start, value, colour))
        start += value
    bars.append((f"logit of {class_name}", 0.0, logit, TOTAL))
    positions = np.arange(len(bars))[::-1]
    for y, (_, left, width, colour) in zip(positions, bars):
        axes.barh(y, width, left=left, color=colour, height=0.62)
        axes.text(left + width, y, f" {width:+.3f} ", va="center", fontsize=8, ha="left" if width >= 0 else "right")
    axes.set_yticks(positions, [label for label, *_ in bars], fontsize=9)
    axes.axvline(0, color="black", linewidth=0.8)
    span = [edge for _, left, width, _ in bars for edge in (left, left + width)]
    margin = 0.18 * (max(span) - min(span) or 1)
    axes.set_xlim(min(span) - margin, max(span) + margin)
    total = sum(value for _, value in rows[:-1])
    axes.set_title(f"logit {logit:.3f} = Σ contributions {total:+.3f} + bias {bias:+.3f}", fontsize=11)
    axes.set_xlabel(f"contribution to the logit of {class_name} (weight × feature value c)")
    axes.spines[["top", "right"]].set_visible(False)


def _bare(axes, frame: str | None = None) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_color(frame)
            spine.set_linewidth(2.5)
