import math

import pytest
import torch

from qsenn_train import metrics
from qsenn_train.errors import QsennError
from qsenn_train.metrics import (
    alignment,
    dependence,
    diversity,
    locality,
    per_class,
    read_attribute_labels,
    reference_test_image_limit,
    summarize,
    used_features,
)

LN3, LN7 = math.log(3), math.log(7)


def two_position_maps(*channels):
    """One image's C×2×1 maps from per-channel [value at p0, value at p1]."""
    return torch.tensor([[[a], [b]] for a, b in channels])


def logits_for(classes, n_classes):
    return torch.nn.functional.one_hot(torch.tensor(classes), n_classes).float()


# ----------------------------------------------------------------------------- head summary
def test_used_features_and_per_class():
    weight = torch.tensor([[0.0, 1.0, 0.0, -2.0], [0.0, 0.0, 0.0, 3.0]])
    assert used_features(weight).tolist() == [1, 3]
    assert per_class(weight) == 1.5  # 3 non-zeros / 2 classes


def test_summarize_reports_the_six_keys():
    weight = torch.tensor([[0.0, 1.0, 0.0, -2.0], [0.0, 0.0, 0.0, 3.0]])
    report = summarize(accuracy=0.75, weight=weight, diversity=0.5, dependence=0.25, alignment=None)
    assert report == {
        "Accuracy": 0.75,
        "NFfeatures": 2,
        "PerClass": 1.5,
        "diversity": 0.5,
        "Dependence": 0.25,
        "Alignment": 0.0,
    }
    assert summarize(accuracy=1, weight=weight, diversity=0, dependence=0, alignment=0.3)["Alignment"] == 0.3


# ----------------------------------------------------------------------------- locality / diversity
def test_locality_of_two_position_maps_by_hand():
    # c0 = [0, ln3] → softmax [1/4, 3/4]; c1 = [ln3, 0] → [3/4, 1/4].
    # k = 2, class 0 uses both: per-position max [3/4, 3/4], sum 3/2, /2 → 3/4.
    # Class 1 has one non-zero: skipped at k = 2. At k = 1 every map's softmax sums to 1 → 1.
    maps = torch.stack([two_position_maps([0, LN3], [LN3, 0])] * 2)
    weight = torch.tensor([[1.0, 2.0], [0.0, 5.0]])
    logits = logits_for([0, 1], 2)
    at_two = locality(maps, logits, weight, k=2)
    assert at_two[0].item() == pytest.approx(0.75)
    assert math.isnan(at_two[1].item())
    assert locality(maps, logits, weight, k=1).tolist() == pytest.approx([1.0, 1.0])
    assert torch.isnan(locality(maps, logits, weight, k=3)).all()  # k > |U|: nothing eligible


def test_signed_top_k_differs_from_corrected_magnitude_top_k():
    # Maps: c0 [0, ln3] → [1/4, 3/4]; c1 [ln3, 0] → [3/4, 1/4]; c2 [ln7, 0] → [7/8, 1/8].
    one_image = two_position_maps([0, LN3], [LN3, 0], [LN7, 0])
    maps = torch.stack([one_image] * 3)
    weight = torch.tensor(
        [
            [1.0, -4.0, 2.0],  # signed top-2 {c2, c0}; by |w| {c1, c2}
            [2.0, 0.0, -3.0],  # signed top-2 {c0, c1} picks the zero weight; by |w| {c2, c0}
            [2.0, 0.0, 0.0],
        ]
    )  # one non-zero: skipped at k = 2 in both modes
    logits = logits_for([0, 1, 2], 3)
    reference = locality(maps, logits, weight, k=2)
    corrected = locality(maps, logits, weight, k=2, corrected=True)
    # row 0 signed: max [7/8, 3/4] → (13/8)/2 = 13/16; by |w|: max [7/8, 1/4] → (9/8)/2 = 9/16
    # row 1 signed: max [3/4, 3/4] → 3/4;               by |w|: max [7/8, 3/4] → 13/16
    assert reference[:2].tolist() == pytest.approx([13 / 16, 3 / 4])
    assert corrected[:2].tolist() == pytest.approx([9 / 16, 13 / 16])
    assert math.isnan(reference[2].item()) and math.isnan(corrected[2].item())


def test_diversity_reference_cap_counts_test_images_from_train_size():
    values = torch.cat([torch.full((600,), 0.5), torch.ones(100)])
    values[[10, 20]] = math.nan  # skipped images
    assert reference_test_image_limit(5994) == 5700
    assert reference_test_image_limit(899) == 600
    # n_train = 899 → 300·floor(899/300) = 600 images: the 1.0 tail is not seen → 0.5.
    assert diversity(values, n_train=899) == pytest.approx(0.5)
    # corrected variant, all 700: (598·0.5 + 100·1) / 698 = 399/698
    assert diversity(values) == pytest.approx(399 / 698)
    assert diversity(values, n_train=299) == 0.0  # no batch at all → 0
    assert diversity(torch.full((4,), math.nan)) == 0.0


def locality_by_loops(maps, logits, weight, k, corrected):
    """Spec §10.1 one image and one position at a time."""
    n_images, n_features = maps.shape[:2]
    out = []
    for b in range(n_images):
        row = [float(w) for w in weight[int(torch.argmax(logits[b]))]]
        if sum(w != 0 for w in row) < k:
            out.append(math.nan)
            continue
        scores = [abs(row[j]) if corrected else row[j] for j in range(n_features)]
        chosen = sorted(range(n_features), key=scores.__getitem__, reverse=True)[:k]
        flat = [[float(v) for v in maps[b, c].flatten()] for c in range(n_features)]
        total = 0.0
        for p in range(len(flat[0])):
            total += max(math.exp(flat[c][p]) / sum(math.exp(x) for x in flat[c]) for c in chosen)
        out.append(total / k)
    return out


@pytest.mark.parametrize("corrected", [False, True])
def test_locality_matches_loop_implementation_on_random_batch(corrected):
    g = torch.Generator().manual_seed(1)
    maps = torch.relu(torch.randn(12, 7, 3, 2, generator=g) * 2)
    weight = torch.randn(4, 7, generator=g)
    weight[1, 3] = 0.0  # one zero: signed top-k may pick it
    weight[2] = weight[2].abs()
    weight[2, [0, 4, 6]] = 0.0  # 4 non-zeros, all positive (no ties at 0)
    logits = logits_for([i % 4 for i in range(12)], 4) + 0.1 * torch.randn(12, 4, generator=g).clamp(-1, 1)
    for k in range(1, 6):
        got = locality(maps, logits, weight, k, corrected=corrected)
        expected = locality_by_loops(maps, logits, weight, k, corrected)
        assert [math.isnan(v) for v in got.tolist()] == [math.isnan(v) for v in expected]
        assert got.tolist() == pytest.approx(expected, rel=1e-5, nan_ok=True)
        in_batches = torch.cat(
            [locality(maps[i : i + 5], logits[i : i + 5], weight, k, corrected=corrected) for i in range(0, 12, 5)]
        )
        assert diversity(in_batches) == pytest.approx(diversity(got))
    assert math.isnan(expected[2]) and not math.isnan(expected[1])  # k = 5: row 2 skipped, row 1 kept


# ----------------------------------------------------------------------------- Dependence
def test_dependence_by_hand_with_unused_feature_and_zero_row():
    # Feature 1 is selected but has no weight (the reference crashed there, odd-N).
    weight = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, -1.0]])
    pooled = torch.tensor(
        [
            [1.0, 5.0, 1.0],  # class 0: q = [1·1, 1·2] → 2/3
            [3.0, 5.0, 0.0],  # class 1: q = [3·0, 0·(−1)] → Σ|q| = 0, dropped
            [2.0, 9.0, 1.0],
        ]
    )  # class 1: q = [0, −1] → 1
    logits = logits_for([0, 1, 1], 2)
    shares = metrics.top_feature_shares(pooled, logits, weight)
    assert shares[[0, 2]].tolist() == pytest.approx([2 / 3, 1.0]) and math.isnan(shares[1].item())
    assert dependence(pooled, logits, weight) == pytest.approx(5 / 6)  # (2/3 + 1)/2
    per_batch = torch.cat([metrics.top_feature_shares(pooled[i : i + 2], logits[i : i + 2], weight) for i in (0, 2)])
    assert metrics.dependence_from_shares(per_batch) == pytest.approx(5 / 6)
    assert dependence(pooled, logits, torch.zeros(2, 3)) == 0.0  # nothing used


# ----------------------------------------------------------------------------- alignment
# Train ids 2, 5, 9 → positions 0, 1, 2; image 3 is a test image.
LABELS = """\
2 1 1 4 1.5
5 1 0 3 2.0
9 1 0 4 0.5
2 2 0 3 1
5 2 1 3 1
9 2 1 2 1
9 2 0 1 1
3 2 1 1 1
5 3 0 4 7.1 extra
9 3 0 4

2 3 1 4 1
"""
# Kept: line 1, 2, 3 (a0: present at 0, absent at 1, 2), 4, 5 (a1: absent at 0, present at 1),
# 12 (a2: present at 0 only). Line 6 (certainty 2) and 7 (certainty 1) are dropped; line 8 is a
# test image (its certainty-1 "present" is not checked); lines 9, 10 have 6 and 4 fields.


def test_read_attribute_labels_filters_and_maps(tmp_path):
    path = tmp_path / "image_attribute_labels.txt"
    path.write_text(LABELS)
    positions, attributes, present = read_attribute_labels(path, [2, 5, 9], n_attributes=3)
    assert positions.tolist() == [0, 1, 2, 0, 1, 0]
    assert attributes.tolist() == [0, 0, 0, 1, 1, 2]
    assert present.tolist() == [True, False, False, False, True, True]


def test_alignment_by_hand(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text(LABELS)
    labels = read_attribute_labels(path, [2, 5, 9], n_attributes=3)
    features = torch.tensor([[1.0, 4.0, 2.0], [3.0, 4.0, 1.0], [5.0, 4.0, 5.0]])
    # f0 = [1, 3, 5]: Δ_a0 = 1 − (3+5)/2 = −3, Δ_a1 = 3 − 1 = 2 → max 2; m = mean[0, 2, 4] = 2 → 1.
    # f1 constant (dead, m = 0) → 0.
    # f2 = [2, 1, 5]: Δ_a0 = 2 − 3 = −1, Δ_a1 = 1 − 2 = −1 → max −1; m = mean[1, 0, 4] = 5/3 → −3/5.
    # a2 is never absent → left out (as a 0 column it would lift f2 to 0; as NaN poison everything).
    # Alignment = (1 + 0 − 3/5)/3 = 2/15. Had the 6-field line counted, a2 would be defined and
    # lift f2 to (2 − 1)/(5/3) = 3/5.
    assert alignment(features, *labels, n_attributes=3) == pytest.approx(2 / 15)


def test_image_ids_map_to_their_row_in_train_ids(tmp_path):
    # Train image 7 has no annotation rows: image 9 is still feature row 3, not rank 2 among ids present.
    path = tmp_path / "labels.txt"
    path.write_text("9 1 1 4 1\n2 1 0 4 1\n5 2 1 3 1\n")
    positions, attributes, _ = read_attribute_labels(path, [2, 5, 7, 9])
    assert positions.tolist() == [3, 0, 1]
    assert attributes.tolist() == [0, 0, 1]


def test_certainty_one_marked_present_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("2 1 0 1 1.0\n5 1 0 4 2.0\n5 2 1 1 2.0\n")
    with pytest.raises(QsennError, match=r"labels\.txt line 3: attribute 2 is marked present with certainty 1"):
        read_attribute_labels(path, [2, 5])


@pytest.mark.parametrize(
    "line, problem",
    [
        ("2 x 1 4 1.0", "attribute id 'x' is not"),
        ("2 1 2 4 1.0", "is_present is 2"),
        ("2 4 1 4 1.0", r"attribute id 4 is invalid \(1..3\)"),
    ],
)
def test_bad_values_are_errors_naming_the_line(tmp_path, line, problem):
    path = tmp_path / "labels.txt"
    path.write_text(f"2 1 1 4 1.0\n{line}\n")
    with pytest.raises(QsennError, match=f"line 2: {problem}"):
        read_attribute_labels(path, [2], n_attributes=3)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(QsennError, match="cannot read the attribute annotations"):
        read_attribute_labels(tmp_path / "nope.txt", [1])


def test_no_attribute_seen_both_ways_is_a_user_error():
    labels = (torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([True, False]))
    with pytest.raises(QsennError, match="no attribute is both present and absent"):
        alignment(torch.rand(2, 3), *labels, n_attributes=2)


def read_by_loops(text, train_ids):
    """Spec §10.3 steps 1–4 one line at a time (no sanity check)."""
    position_of = {image_id: p for p, image_id in enumerate(train_ids)}
    rows = []
    for line in text.split("\n"):
        fields = line.split()
        if len(fields) != 5 or int(fields[0]) not in position_of or int(fields[3]) < 3:
            continue
        rows.append((position_of[int(fields[0])], int(fields[1]) - 1, fields[2] == "1"))
    return [list(column) for column in zip(*rows)]


def test_parser_matches_line_loop_across_chunks(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(3)
    lines = []
    for _ in range(400):
        image, attribute, certainty = (
            int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((1, 30), (1, 13), (1, 5))
        )
        present = 0 if certainty == 1 else int(torch.randint(0, 2, (), generator=g))
        line = f"{image} {attribute}\t{present}  {certainty} {float(torch.rand((), generator=g)) * 20:.3f}"
        # 6 fields, 4 fields, blank, CRLF, padded; plain otherwise
        variants = {0: line + " 7", 1: line.rsplit(" ", 1)[0], 2: "", 3: line + "\r", 4: f" {line} "}
        lines.append(variants.get(int(torch.randint(0, 8, (), generator=g)), line))
    text = "\n".join(lines)  # no newline after the last line
    path = tmp_path / "labels.txt"
    path.write_bytes(text.encode())
    train_ids = list(range(1, 30, 2)) + [4, 28]
    expected = read_by_loops(text, train_ids)
    for chunk_bytes in (1 << 23, 64, 7):  # many chunks: lines and numbers carry over
        monkeypatch.setattr(metrics, "_CHUNK_BYTES", chunk_bytes)
        got = read_attribute_labels(path, train_ids, n_attributes=12)
        assert [t.tolist() for t in got] == expected
    path.write_bytes((text + "\n3 1 1 1 0.5\n").encode())
    with pytest.raises(QsennError, match=f"line {len(lines) + 1}: attribute 1 is marked present"):
        read_attribute_labels(path, train_ids)


def alignment_by_loops(features, positions, attributes, present, n_attributes):
    """Spec §10.3 steps 5–7 one feature and one attribute at a time."""
    n_images, n_features = features.shape
    total = 0.0
    for j in range(n_features):
        column = [float(features[i, j]) for i in range(n_images)]
        normaliser = sum(x - min(column) for x in column) / n_images
        deltas = []
        for a in range(n_attributes):
            rows = [r for r in range(len(positions)) if int(attributes[r]) == a]
            yes = [column[int(positions[r])] for r in rows if present[r]]
            no = [column[int(positions[r])] for r in rows if not present[r]]
            if yes and no:
                deltas.append(sum(yes) / len(yes) - sum(no) / len(no))
        total += max(deltas) / normaliser if normaliser > 0 else 0.0
    return total / n_features


def test_alignment_matches_loop_implementation_on_random_data():
    g = torch.Generator().manual_seed(2)
    features = torch.relu(torch.randn(9, 6, generator=g))
    features[:, 4] = 2.0  # dead feature
    n_rows = 80
    positions = torch.randint(0, 9, (n_rows,), generator=g)  # repeated (image, attribute) rows too
    attributes = torch.randint(0, 5, (n_rows,), generator=g)
    present = torch.rand(n_rows, generator=g) < 0.4
    present[attributes == 3] = True  # attribute 3 never absent
    got = alignment(features, positions, attributes, present, n_attributes=6)  # attribute 5: no rows
    assert got == pytest.approx(alignment_by_loops(features, positions, attributes, present, 6), rel=1e-9)
