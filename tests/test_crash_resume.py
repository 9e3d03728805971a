"""`qsenn train` killed with SIGKILL inside every stage, then resumed: the same model as the
uninterrupted run, nothing half-written ever taken for a result, no stale temporaries left.

The kill chain and its reasoning are in kill_chain.py; `pytest -s` prints the kill points.
"""

import shutil

import pytest

import qsenn_bench.testing.kill_chain as kc

pytestmark = pytest.mark.slow

# Every stage of the issue, as a substring of its stage label.
REQUIRED_STAGES = (
    "dense training",
    "feature extraction",
    "feature selection",
    "regularisation path",
    "quantisation",
    "iter0: fine-tuning",
    "iter1: fine-tuning",
    "iter2: fine-tuning",
    "iter3: fine-tuning",
    "metrics",
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """The uninterrupted run, in counting mode: its events record every stage's call count."""
    out = tmp_path_factory.mktemp("reference")
    result = kc.run_train(data_root, out, kill_at=":0")
    assert result.returncode == 0, result.stderr
    return out / kc.RUN_SUBDIR


@pytest.fixture(scope="module")
def chain(reference, data_root, tmp_path_factory):
    return kc.run_chain(data_root, tmp_path_factory.mktemp("chain"), kc.stage_calls(reference), echo=print)


def test_every_stage_was_killed_inside_itself(chain):
    for kill in chain.kills:
        assert kill.returncode == -9, kill
        # at call n, or at the stage's end where this process made fewer calls than the reference
        assert kill.message.startswith(f"QSENN_KILL_AT: SIGKILL in {kill.stage!r} at "), kill
    for stage in REQUIRED_STAGES:
        assert any(stage in kill.stage for kill in chain.kills), stage
    assert {kill.where for kill in chain.kills if kill.stage.endswith(": dense training")} == {
        "random",
        "between epochs",
    }


def test_a_kill_never_leaves_a_result_that_looks_finished(chain):
    """Atomic writes: after every kill each manifest entry matches its file, so no resume ever
    finds a damaged result (a damaged one would be reported and recomputed, never loaded)."""
    assert [kill.manifest_problems for kill in chain.kills] == [[]] * len(chain.kills)
    assert chain.damaged_reports == 0


def test_resumes_delete_stale_temporaries(chain):
    left = sum(len(kill.temporaries) for kill in chain.kills)
    assert left > 0, "no kill landed inside a write; the chain tests less than it should"
    assert chain.temporaries_removed == left
    assert kc.temporaries(chain.run_dir) == []


def test_resumed_run_equals_the_uninterrupted_run(chain, reference):
    diff = kc.differences(chain.run_dir, reference)
    print("resumed vs uninterrupted:", diff)
    assert diff["selection_equal"] and all(diff["ternary_equal"])
    assert max(diff["head_max_diff"]) <= 1e-6 and max(diff["model_max_diff"]) <= 1e-5
    assert diff["logits_max_diff"] <= 1e-5


def test_a_kill_loses_at_most_the_epoch_being_checkpointed(chain):
    """A resume repeats no finished stage; it repeats a finished epoch only when the kill came
    before that epoch's checkpoint was renamed into place."""
    for kill in chain.kills:
        assert kill.redone_stages == [], kill
        assert len(kill.redone_epochs) <= 1, kill
    lost = [kill for kill in chain.kills if kill.redone_epochs]
    print(
        f"{len(chain.kills)} kills survived; {len(lost)} repeated one epoch:",
        [(kill.stage, kill.location) for kill in lost],
    )


def test_damaged_results_are_reported_in_one_line_and_recomputed(chain, reference, data_root, tmp_path):
    """Truncated or altered results (a model, a head, the selection, a feature memmap) are each
    reported once and recomputed to the same values; none of them is loaded."""
    out = tmp_path / "damaged"
    shutil.copytree(chain.run_dir.parents[2], out, symlinks=True)
    run_dir = out / kc.RUN_SUBDIR
    folder = kc.sparse_folder(run_dir)
    damaged = {
        "iter0/model.pt": "truncate",
        "iter0/selection.pt": "flip",
        "iter0/train_features.npy": "flip",
        "iter1/head.pt": "truncate",
        "iter1/model.pt": "append",
    }
    for name, how in damaged.items():
        path = folder / name
        data = bytearray(path.read_bytes())
        if how == "truncate":
            data = data[: len(data) // 2]
        elif how == "flip":
            data[len(data) // 2] ^= 0x01
        else:
            data += b"\0"
        path.write_bytes(bytes(data))
    result = kc.run_train(data_root, out)
    assert result.returncode == 0, result.stderr
    reports = [line for line in result.stdout.splitlines() if "is damaged" in line]
    assert sorted(line.split()[1] for line in reports) == sorted(str(folder / n) for n in damaged), reports
    assert all(line.endswith("recomputing it") for line in reports)
    diff = kc.differences(run_dir, reference)
    assert diff["selection_equal"] and all(diff["ternary_equal"]) and diff["logits_max_diff"] <= 1e-5
    assert max(diff["model_max_diff"]) <= 1e-5
