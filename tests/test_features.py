"""Feature files (spec §4): the seeded 90/10 split and the chunked gather that writes it."""

from __future__ import annotations

import numpy as np

from qsenn_train import features
from qsenn_train.features import validation_split, write_rows
from qsenn_train.rundir import RunDir


def test_validation_split_is_a_seeded_partition():
    train, val = validation_split(103, 0.1, seed=7)
    assert len(val) == 10 and len(train) == 93
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(103))
    again, _ = validation_split(103, 0.1, seed=7)
    other, _ = validation_split(103, 0.1, seed=8)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_write_rows_gathers_in_position_order_across_chunks(tmp_path, monkeypatch):
    # Three rows of 4 float32 per chunk: the 10 positions take four chunks.
    monkeypatch.setattr(features, "CHUNK_BYTES", 3 * 4 * 4)
    run = RunDir(tmp_path, echo=lambda line: None)
    source = np.arange(40, dtype=np.float32).reshape(10, 4)
    labels = np.arange(10, dtype=np.int64) * 3
    positions = np.array([9, 2, 5, 0, 7, 1, 8, 3, 6, 4])
    write_rows(run, source, positions, "f.npy")
    write_rows(run, labels, positions, "l.npy")
    assert np.array_equal(np.load(tmp_path / "f.npy"), source[positions])
    assert np.array_equal(np.load(tmp_path / "l.npy"), labels[positions])
    assert not list(tmp_path.glob("*.partial*"))
