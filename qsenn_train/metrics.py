"""The six evaluation metrics (spec §10), as pure computations on collected tensors.

The caller runs the model in eval mode and collects, for the training images (test
transform) the logits and the raw pooled features of all the model's features, and for the
test images the logits and the feature maps of the *used* features only
(`maps[:, used_features(weight)]`). Nothing here runs a model or reads an image, and every
tensor may live on any device (the reference hard-codes CUDA, odd-W).

diversity@5 is split into a per-batch part (`locality`, one value per image) and a final
mean (`diversity`), so test feature maps never have to be held all at once; Dependence
likewise (`top_feature_shares` per batch, `dependence_from_shares` at the end).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import QsennError

METRIC_KEYS = ("Accuracy", "NFfeatures", "PerClass", "diversity", "Dependence", "Alignment")  # spec §10
DIVERSITY_K = 5
# The reference evaluates test batches of 300 but counts them from the *training* set size (odd-P).
REFERENCE_TEST_BATCH = 300
MIN_CERTAINTY = 3  # keep "probably" (3) and "definitely" (4) annotations (odd-Q)
NOT_VISIBLE = 1  # certainty of an attribute that cannot be seen
LABEL_FIELDS = ("image id", "attribute id", "is_present", "certainty", "time")


# ----------------------------------------------------------------------------- head summary
@torch.no_grad()
def used_features(weight: Tensor) -> Tensor:
    """Indices of the head-weight columns (features) with at least one non-zero entry."""
    return weight.ne(0).any(dim=0).nonzero().flatten()


@torch.no_grad()
def per_class(weight: Tensor) -> float:
    """nnz(W_U)/K: the average number of features a class uses (unused columns hold no non-zeros)."""
    return torch.count_nonzero(weight).item() / weight.shape[0]


# ----------------------------------------------------------------------------- diversity@5
@torch.no_grad()
def locality(
    maps_used: Tensor, logits: Tensor, weight_used: Tensor, k: int = DIVERSITY_K, *, corrected: bool = False
) -> Tensor:
    """loc_b of one test batch (spec §10.1): NaN for an image whose predicted class uses < k features.

    maps_used: B×|U|×H×W maps of the used features; logits: B×K; weight_used: W_U (K×|U|).
    J = the k largest *signed* weights of the predicted class's row (reference, odd-P; may pick
    zero-weight columns, ties among them broken by torch.topk as in the reference), or with
    `corrected` the k largest |w| (all non-zero, since the row has ≥ k non-zeros).
    loc_b = (1/k) Σ_p max_{c∈J} softmax_p(M_c), in [1/k, 1].
    """
    if maps_used.shape[1] != weight_used.shape[1]:
        raise ValueError(f"maps of {maps_used.shape[1]} features but W_U has {weight_used.shape[1]} columns")
    device = maps_used.device
    rows = weight_used.to(device)[logits.to(device).argmax(dim=1)]
    values = torch.full((maps_used.shape[0],), math.nan, device=device)
    eligible = (rows.ne(0).sum(dim=1) >= k).nonzero().flatten()
    if len(eligible) == 0:
        return values
    ranking = rows[eligible].abs() if corrected else rows[eligible]
    top = ranking.topk(k, dim=1).indices  # B'×k
    chosen = maps_used.flatten(2)[eligible[:, None], top].float()  # B'×k×P, only the maps needed
    values[eligible] = chosen.softmax(dim=2).max(dim=1).values.sum(dim=1) / k
    return values


def reference_test_image_limit(n_train: int) -> int:
    """How many test images the reference evaluates: 300·floor(N_train/300) (CUB: 5700 of 5794)."""
    return REFERENCE_TEST_BATCH * (n_train // REFERENCE_TEST_BATCH)


def diversity(loc_values: Tensor, *, n_train: int | None = None) -> float:
    """Mean loc_b over the non-skipped images (0 if none), from `locality` values in test order.

    With `n_train` (reference mode, odd-P) only the first `reference_test_image_limit(n_train)`
    test images count; without it (the corrected variant) all of them do.
    """
    if n_train is not None:
        loc_values = loc_values[: reference_test_image_limit(n_train)]
    return _mean_ignoring_nan(loc_values)


# ----------------------------------------------------------------------------- Dependence
@torch.no_grad()
def top_feature_shares(pooled: Tensor, logits: Tensor, weight: Tensor) -> Tensor:
    """max_j |q_j| / Σ_j |q_j| per image, q_j = f_j·W_U[ĉ, j] (NaN where Σ|q| = 0), spec §10.2.

    pooled: N×C raw pooled features (odd-O: not the standardised values the sparse head
    multiplies); weight: the full K×C head weight. Features and weight are both restricted to
    the used columns (fix of odd-N, where a selected but unused feature crashed the reference).
    """
    if pooled.shape[1] != weight.shape[1]:
        raise ValueError(f"{pooled.shape[1]} pooled features but the head weight has {weight.shape[1]} columns")
    used = used_features(weight)
    if len(used) == 0:
        return torch.full((pooled.shape[0],), math.nan, device=pooled.device)
    weight_used = weight.to(pooled.device)[:, used]
    magnitude = (pooled[:, used].float() * weight_used[logits.to(pooled.device).argmax(dim=1)]).abs()
    return magnitude.max(dim=1).values / magnitude.sum(dim=1)


def dependence_from_shares(shares: Tensor) -> float:
    """Mean of `top_feature_shares` collected per batch, NaN rows (Σ|q| = 0) dropped (0 if none)."""
    return _mean_ignoring_nan(shares)


def dependence(pooled: Tensor, logits: Tensor, weight: Tensor) -> float:
    """Dependence of one collected set of training images."""
    return dependence_from_shares(top_feature_shares(pooled, logits, weight))


# ----------------------------------------------------------------------------- CUB alignment
def read_attribute_labels(
    path: Path | str, train_ids: Sequence[int], n_attributes: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Spec §10.3 steps 1–4 on `image_attribute_labels.txt`.

    Rows `<image_id> <attribute_id> <is_present> <certainty> <time>`; rows with another field
    count are skipped (odd-Q). Keeps the rows of `train_ids`, checks that no certainty-1 row is
    marked present, keeps certainty ≥ 3. Returns, one entry per kept row: the image's position
    among `train_ids` (the row order of the train features; for CUB's ascending ids this is the
    reference's rank among the train ids present), the 0-based attribute index and is_present.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QsennError(
            f"cannot read the attribute annotations {path} ({exc.strerror}); re-extract the dataset"
        ) from None
    image_id, attribute_id, is_present, certainty, line_no = _parse_label_rows(path, raw)

    ids = np.asarray(train_ids, dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("train_ids contains duplicates")
    order = np.argsort(ids)
    slot = np.searchsorted(ids[order], image_id)
    is_train = slot < len(ids)
    is_train[is_train] = ids[order][slot[is_train]] == image_id[is_train]
    position = order[slot[is_train]]
    attribute_id, is_present, certainty, line_no = (a[is_train] for a in (attribute_id, is_present, certainty, line_no))

    def fail_at(row: int, problem: str) -> QsennError:
        return QsennError(f"{path} line {line_no[row]}: {problem}; fix that line or re-extract the dataset")

    if (bad := np.flatnonzero(is_present > 1)).size:
        raise fail_at(bad[0], f"is_present is {is_present[bad[0]]}, not 0 or 1")
    top_id = n_attributes if n_attributes is not None else np.iinfo(np.int64).max
    if (bad := np.flatnonzero((attribute_id < 1) | (attribute_id > top_id))).size:
        valid = f"1..{n_attributes}" if n_attributes is not None else "ids start at 1"
        raise fail_at(bad[0], f"attribute id {attribute_id[bad[0]]} is invalid ({valid})")
    if (bad := np.flatnonzero((certainty == NOT_VISIBLE) & (is_present == 1))).size:
        raise fail_at(bad[0], f"attribute {attribute_id[bad[0]]} is marked present with certainty 1 (not visible)")

    certain = certainty >= MIN_CERTAINTY
    return (
        torch.from_numpy(position[certain]),
        torch.from_numpy(attribute_id[certain] - 1),
        torch.from_numpy(is_present[certain] == 1),
    )


@torch.no_grad()
def attribute_alignment(
    features: Tensor, positions: Tensor, attributes: Tensor, present: Tensor, n_attributes: int
) -> Tensor:
    """Spec §10.3 steps 5–6 per pair: A_{j,a} = Δ_{j,a}/m_j, an n_attributes×C float64 matrix.

    features: N×C raw pooled train features in train-id order; the other three come from
    `read_attribute_labels`. Means are over annotation rows (a repeated row counts twice, as in
    the reference). Δ_{j,a} is feature j's mean over the rows where attribute a is present minus
    its mean where it is absent, m_j its mean excursion above its minimum.

    Degenerate cases, decided where the reference gives NaN or an artefact (on CUB, whose
    attributes should all occur both ways, only a dead feature is plausible, and there the
    reference reports NaN):
    * an attribute that is never present or never absent among the kept rows has no Δ: its row
      is NaN (`alignment` leaves it out of the max). The reference's empty mean is NaN there,
      which poisons the max and the whole metric; an attribute without any kept row becomes a
      0 column there, which would floor every feature's max at 0. Leaving both out treats them
      alike and keeps small or synthetic annotation sets from reporting NaN.
    * a dead feature (constant over the training images: m_j = 0 and Δ = 0) scores 0 with
      every attribute, as it aligns with nothing; the reference divides 0/0 (NaN).
    """
    n_images, n_features = features.shape
    if len(positions) and int(positions.max()) >= n_images:
        raise ValueError(f"annotation position {int(positions.max())} but only {n_images} feature rows")
    if len(attributes) and int(attributes.max()) >= n_attributes:
        raise ValueError(f"attribute index {int(attributes.max())} but n_attributes = {n_attributes}")
    f = features.double()
    device = f.device
    positions, attributes, present = positions.to(device), attributes.to(device), present.to(device, torch.bool)

    def row_counts(mask: Tensor) -> Tensor:  # n_attributes×N: how often each (attribute, image) row occurs
        cells = attributes[mask] * n_images + positions[mask]
        return torch.bincount(cells, minlength=n_attributes * n_images).reshape(n_attributes, n_images).double()

    present_counts, absent_counts = row_counts(present), row_counts(~present)
    n_present, n_absent = present_counts.sum(dim=1), absent_counts.sum(dim=1)
    defined = (n_present > 0) & (n_absent > 0)
    if not defined.any():
        raise QsennError(
            "no attribute is both present and absent among the training images' "
            f"annotations with certainty ≥ {MIN_CERTAINTY}; the alignment metric "
            "needs such attributes: check image_attribute_labels.txt"
        )
    delta = (
        present_counts[defined] @ f / n_present[defined, None] - absent_counts[defined] @ f / n_absent[defined, None]
    )  # A'×C
    normaliser = (f - f.min(dim=0).values).mean(dim=0)
    alive = normaliser > 0
    scores = torch.full((n_attributes, n_features), math.nan, dtype=torch.float64, device=device)
    scores[defined] = torch.where(alive, delta / torch.where(alive, normaliser, 1.0), 0.0)
    return scores


@torch.no_grad()
def alignment(features: Tensor, positions: Tensor, attributes: Tensor, present: Tensor, n_attributes: int) -> float:
    """Spec §10.3 step 7: (1/C) Σ_j max_a A_{j,a} over the C = features.shape[1] features and
    the attributes that have a Δ (`attribute_alignment`)."""
    scores = attribute_alignment(features, positions, attributes, present, n_attributes)
    best = scores.nan_to_num(nan=-math.inf).max(dim=0).values
    return best.sum().item() / features.shape[1]


# ----------------------------------------------------------------------------- the report
def summarize(
    *, accuracy: float, weight: Tensor, diversity: float, dependence: float, alignment: float | None
) -> dict[str, float | int]:
    """The metrics JSON of spec §10; `alignment` None (not CUB-like) is reported as 0."""
    return {
        "Accuracy": float(accuracy),
        "NFfeatures": len(used_features(weight)),
        "PerClass": per_class(weight),
        "diversity": float(diversity),
        "Dependence": float(dependence),
        "Alignment": 0.0 if alignment is None else float(alignment),
    }


# ----------------------------------------------------------------------------- helpers
def _mean_ignoring_nan(values: Tensor) -> float:
    kept = values[~values.isnan()]
    return kept.double().mean().item() if len(kept) else 0.0


_CHUNK_BYTES = 1 << 23  # parse whole lines in ~8 MiB pieces: bounded scratch memory


def _parse_label_rows(path: Path, raw: bytes) -> tuple[np.ndarray, ...]:
    """The four integer fields and the 1-based line number of every row with exactly 5 fields."""
    pieces = []
    begin, first_line = 0, 1
    while begin < len(raw):
        newline = raw.find(b"\n", begin + _CHUNK_BYTES - 1)
        end = len(raw) if newline < 0 else newline + 1
        pieces.append(_parse_label_chunk(path, memoryview(raw)[begin:end], first_line))
        first_line += raw.count(b"\n", begin, end)
        begin = end
    if not pieces:
        return tuple(np.zeros(0, dtype=np.int64) for _ in range(5))
    return tuple(np.concatenate(column) for column in zip(*pieces))


def _parse_label_chunk(path: Path, chunk: memoryview, first_line: int) -> tuple[np.ndarray, ...]:
    """`_parse_label_rows` on whole lines, vectorised over the bytes.

    CUB has 3.7 M rows, where np.loadtxt or float parsing take seconds: tokens are runs of
    bytes > 32, a line's fields are the tokens before its newline, and the integers are
    assembled from their digits. The time field is never parsed.
    """
    buf = np.frombuffer(chunk, dtype=np.uint8)
    blank = buf <= 32  # space, tab, CR, LF separate fields
    starts = np.flatnonzero(blank[:-1] & ~blank[1:]) + 1
    ends = np.flatnonzero(~blank[:-1] & blank[1:]) + 1
    if not blank[0]:
        starts = np.concatenate(([0], starts))
    if not blank[-1]:
        ends = np.append(ends, buf.size)
    line_ends = np.flatnonzero(buf == 10)
    if buf[-1] != 10:
        line_ends = np.append(line_ends, buf.size)
    tokens_before = np.searchsorted(starts, line_ends)  # tokens up to each line's end
    fields_per_line = np.diff(tokens_before, prepend=0)
    whole = np.flatnonzero(fields_per_line == len(LABEL_FIELDS))
    first = tokens_before[whole] - len(LABEL_FIELDS)
    columns = []
    for field in range(4):
        token = first + field
        value, ok = _parse_unsigned(buf, starts[token], ends[token])
        if not ok.all():
            row = np.flatnonzero(~ok)[0]
            text = bytes(chunk[starts[token[row]] : ends[token[row]]]).decode(errors="replace")
            raise QsennError(
                f"{path} line {first_line + whole[row]}: {LABEL_FIELDS[field]} {text!r} "
                f"is not a non-negative integer; fix that line or re-extract the dataset"
            )
        columns.append(value)
    return (*columns, first_line + whole)


_MAX_DIGITS = 18  # fits int64


def _parse_unsigned(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal digit strings buf[starts:ends] → int64 values, and which tokens were all digits."""
    length = ends - starts
    ok = length <= _MAX_DIGITS
    value = np.zeros(len(starts), dtype=np.int64)
    # One pass per digit place, from the right, over short vectors (no token×digit matrix).
    for place in range(min(int(length.max()), _MAX_DIGITS) if length.size else 0):
        inside = place < length
        digit = buf[np.where(inside, ends - 1 - place, 0)] - np.uint8(48)  # non-digits wrap to ≥ 10
        ok &= ~inside | (digit < 10)
        value += np.where(inside, digit, 0).astype(np.int64) * 10**place
    return value, ok
