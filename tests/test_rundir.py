import json
import os

import pytest
import torch

from qsenn_train.errors import QsennError
from qsenn_train.rundir import RunDir, atomic_write, stage_key


def test_save_and_load_roundtrip_with_manifest(tmp_path):
    run = RunDir(tmp_path)
    run.save_torch("a.pt", {"w": torch.arange(3)})
    run.save_json("m.json", {"Accuracy": 0.5})
    assert torch.equal(run.load_torch("a.pt")["w"], torch.arange(3))
    assert run.load_json("m.json") == {"Accuracy": 0.5}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest) == {"a.pt", "m.json"} and len(manifest["a.pt"]["sha256"]) == 64
    assert RunDir(tmp_path).intact("a.pt")  # a fresh handle reads the manifest back


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_result_is_reported_and_not_loaded(tmp_path, damage):
    messages = []
    run = RunDir(tmp_path, echo=messages.append)
    path = run.save_torch("a.pt", {"w": torch.ones(100)})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert run.load_torch("a.pt") is None
    assert len(messages) == 1 and "damaged" in messages[0] and "a.pt" in messages[0]
    assert any(json.loads(l)["event"] == "damaged_result" for l in (tmp_path / "events.jsonl").open())


def test_unrecorded_file_counts_as_absent(tmp_path):
    run = RunDir(tmp_path)
    torch.save({"x": 1}, tmp_path / "stray.pt")
    assert run.load_torch("stray.pt") is None


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.txt", boom)
    assert os.listdir(tmp_path) == []


def test_pickle_payload_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    run = RunDir(tmp_path)
    run.save_torch("evil.pt", {"x": Evil()})
    with pytest.raises(QsennError, match="refusing to load .*evil.pt"):
        run.load_torch("evil.pt")


def test_stage_key_depends_on_every_input():
    assert stage_key("dense", 1, {"a": 1}) == stage_key("dense", 1, {"a": 1})
    assert stage_key("dense", 1, {"a": 1}) != stage_key("dense", 2, {"a": 1})
    assert stage_key("dense", 1, {"a": 1}) != stage_key("dense", 1, {"a": 2})


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    run = RunDir(tmp_path)
    run.save_torch("iter0/model.partial.pt", {"w": torch.ones(1)})  # a resume point, not a temporary
    stale = [tmp_path / f".a.pt.tmp{dead}", tmp_path / "iter0" / f".train_features.npy.partial{dead}"]
    live = tmp_path / f".b.pt.tmp{os.getpid()}"
    for path in stale + [live]:
        path.write_bytes(b"half")
    assert run.remove_stale_temporaries() == 2
    assert not any(path.exists() for path in stale)
    assert live.exists() and run.intact("iter0/model.partial.pt")
