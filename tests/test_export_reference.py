"""`qsenn import-reference`: checkpoints in the original code's state-dict layout (spec §12.3)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torchvision.models import resnet50

from qsenn_bench.testing.toy_models import MAGNITUDE, random_ternary, ternary_model
from qsenn_export.errors import ExportError
from qsenn_export.formats import make_options
from qsenn_export.onnx_export import export_onnx
from qsenn_export.reference_import import import_reference, save_record
from qsenn_train.checkpoint import SPARSE_KEYS, load_checkpoint
from qsenn_train.data.layouts import CUB_MEAN, CUB_STD
from qsenn_train.model import build_model

NUM_CLASSES, N_FEATURES = 5, 8


def reference_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """What the original code saves: torchvision ResNet-50 keys plus the five linear.* tensors."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    state = {k: v for k, v in resnet50().state_dict().items() if not k.startswith("fc.")}
    for key, value in state.items():  # non-trivial BN statistics
        if key.endswith("running_var"):
            value.copy_(0.5 + torch.rand(value.shape, generator=generator))
        elif key.endswith("running_mean"):
            value.copy_(0.1 * torch.randn(value.shape, generator=generator))
    state["linear.selection"] = torch.randperm(2048, generator=generator)[:N_FEATURES].sort().values
    state["linear.mean"] = torch.rand(N_FEATURES, generator=generator)
    state["linear.std"] = 0.2 + torch.rand(N_FEATURES, generator=generator)
    state["linear.layer.weight"] = MAGNITUDE * random_ternary(NUM_CLASSES, N_FEATURES, 3, generator)
    state["linear.layer.bias"] = torch.randn(NUM_CLASSES, generator=generator)
    return state


def _import(path, tmp_path, dataset="CUB2011", **kwargs):
    return import_reference(path, dataset, data_root=tmp_path / "no-data", **kwargs)


def test_round_trip_reference_to_onnx_matches_torch(tmp_path):
    state = reference_state_dict()
    torch.save(state, tmp_path / "reference.pth")
    record = _import(tmp_path / "reference.pth", tmp_path, img_size=64)
    assert record["arch"] == "resnet50" and record["dataset"]["mean"] == list(CUB_MEAN)
    assert record["model_type"] == "qsenn"
    save_record(record, tmp_path / "imported.pt")
    lines = []
    onnx_path = export_onnx(tmp_path / "imported.pt", make_options("onnx", verify_count=4), echo=lines.append)
    assert any(line.startswith("verified on 4 random images") and line.endswith("OK") for line in lines)

    # The same state dict loaded independently, fed the same normalised images.
    model = build_model("resnet50", NUM_CLASSES)
    model.install_sparse_head(*(state[k] for k in SPARSE_KEYS))
    model.load_state_dict(state)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval()(
            (images - torch.tensor(CUB_MEAN).view(1, 3, 1, 1)) / torch.tensor(CUB_STD).view(1, 3, 1, 1)
        ).logits.numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": images.numpy()})[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.fixture
def small_state():
    return ternary_model("resnet10", num_classes=3, n_features=4).state_dict()


@pytest.mark.parametrize("wrap", [lambda s: {"state_dict": s}, lambda s: {f"module.{k}": v for k, v in s.items()}])
def test_wrapped_state_dicts_are_accepted(small_state, tmp_path, wrap):
    torch.save(wrap(small_state), tmp_path / "ref.pth")
    record = _import(tmp_path / "ref.pth", tmp_path, img_size=32)
    save_record(record, tmp_path / "out.pt")
    model, loaded = load_checkpoint(tmp_path / "out.pt")
    assert loaded["arch"] == "resnet10" and loaded["imported_from"] == "ref.pth"
    assert torch.equal(model.linear.selection, small_state["linear.selection"])
    assert loaded["dataset"]["class_names"] == ["class 0", "class 1", "class 2"]


def test_pickled_model_is_refused(tmp_path):
    torch.save(ternary_model(), tmp_path / "whole.pth")
    with pytest.raises(ExportError, match="pickled model object.*state_dict"):
        _import(tmp_path / "whole.pth", tmp_path)


def test_sldd_checkpoint_is_imported_as_an_sldd_model(small_state, tmp_path):
    small_state["linear.layer.weight"] = small_state["linear.layer.weight"] * (0.5 + torch.rand(3, 4))
    torch.save(small_state, tmp_path / "sldd.pth")
    record = _import(tmp_path / "sldd.pth", tmp_path)
    assert record["model_type"] == "sldd"
    assert torch.equal(record["state_dict"]["linear.layer.weight"], small_state["linear.layer.weight"])


def test_dense_checkpoint_is_refused(tmp_path):
    torch.save(build_model("resnet10", 3).state_dict(), tmp_path / "dense.pth")
    with pytest.raises(ExportError, match="no sparse head.*dense"):
        _import(tmp_path / "dense.pth", tmp_path)


def test_class_names_file(small_state, tmp_path):
    torch.save(small_state, tmp_path / "ref.pth")
    (tmp_path / "names.txt").write_text("Albatross\nCardinal\n\nWren\n")
    record = _import(tmp_path / "ref.pth", tmp_path, class_names=tmp_path / "names.txt")
    assert record["dataset"]["class_names"] == ["Albatross", "Cardinal", "Wren"]
    (tmp_path / "names.txt").write_text("Albatross\nCardinal\n")
    with pytest.raises(ExportError, match="2 class names but the checkpoint has 3"):
        _import(tmp_path / "ref.pth", tmp_path, class_names=tmp_path / "names.txt")


@pytest.mark.parametrize(
    "dataset, crop_gt, mean, resize_mode",
    [
        ("CUB2011", False, list(CUB_MEAN), "shorter"),
        ("CUB2011", True, list(CUB_MEAN), "square"),
        ("ImageNet", False, None, "imagenet"),  # the original applies no normalisation (odd-L)
    ],
)
def test_dataset_constants(small_state, tmp_path, dataset, crop_gt, mean, resize_mode):
    torch.save(small_state, tmp_path / "ref.pth")
    info = _import(tmp_path / "ref.pth", tmp_path, dataset=dataset, crop_gt=crop_gt)["dataset"]
    assert (info["mean"], info["resize_mode"], info["crop_gt"]) == (mean, resize_mode, crop_gt)


@pytest.mark.parametrize(
    "dataset, crop_gt, message",
    [("synth", False, "the original code trains"), ("StanfordCars", True, "--crop-gt applies only")],
)
def test_unsupported_dataset_options(small_state, tmp_path, dataset, crop_gt, message):
    torch.save(small_state, tmp_path / "ref.pth")
    with pytest.raises(ExportError, match=message):
        _import(tmp_path / "ref.pth", tmp_path, dataset=dataset, crop_gt=crop_gt)


def test_mismatched_weights_are_refused(small_state, tmp_path):
    small_state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(small_state, tmp_path / "bad.pth")
    with pytest.raises(ExportError, match="does not match resnet10"):
        _import(tmp_path / "bad.pth", tmp_path)
