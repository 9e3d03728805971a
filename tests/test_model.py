import pytest
import torch

from qsenn_train import names
from qsenn_train.checkpoint import load_checkpoint, model_from_record, model_record
from qsenn_train.data.base import RESIZE_SHORTER, DatasetInfo
from qsenn_train.errors import QsennError
from qsenn_train.model import ARCHS, build_model, load_pretrained

INFO = DatasetInfo(
    name="toy",
    root="/nowhere",
    class_names=("a", "b", "c"),
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    resize_mode=RESIZE_SHORTER,
)


def sparse_model(n_classes=3, seed=0):
    torch.manual_seed(seed)
    model = build_model("resnet10", n_classes)
    selection = torch.tensor([3, 17, 200, 511])
    weight = torch.tensor([[1.0, 0, -1, 0], [0, 1, 0, 1], [-1, 0, 0, 1]]) * 0.7
    model.install_sparse_head(selection, torch.rand(4), torch.rand(4) + 0.5, weight, torch.tensor([0.1, -0.2, 0.3]))
    return model.eval()


def test_arch_registry_matches_cli_names():
    assert tuple(ARCHS) == names.ARCHS


@pytest.mark.parametrize("arch,dim", [("resnet10", 512), ("resnet18", 512), ("resnet50", 2048)])
def test_dense_forward_shapes(arch, dim):
    model = build_model(arch, 5).eval()
    out = model(torch.rand(2, 3, 64, 64))
    assert out.logits.shape == (2, 5)
    assert out.feature_maps.shape == (2, dim, 2, 2)  # total stride 32
    assert out.pooled.shape == (2, dim)
    assert (out.feature_maps >= 0).all()  # after the last ReLU
    assert torch.allclose(out.pooled, out.feature_maps.mean((2, 3)))


def test_small_image_stem_gives_2x2_maps_at_28_px_and_round_trips(tmp_path):
    model = build_model("resnet18s", 10).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        out = model(x)
    assert out.feature_maps.shape == (2, 512, 2, 2)  # total stride 16: 28 → 14 → 7 → 4 → 2
    torch.save(model_record(model, INFO, 28), tmp_path / "m.pt")
    loaded, record = load_checkpoint(tmp_path / "m.pt")
    assert record["arch"] == "resnet18s"
    with torch.no_grad():
        assert torch.equal(out.logits, loaded.eval()(x).logits)


@pytest.mark.parametrize("arch", ["resnet10", "resnet50"])
def test_reduced_strides_gives_stride_8(arch):
    model = build_model(arch, 5, reduced_strides=True).eval()
    assert model(torch.rand(1, 3, 64, 64)).feature_maps.shape[-2:] == (8, 8)


def test_sparse_head_selects_maps_and_standardises():
    model = sparse_model()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.forward_features(x)
        out = model(x)
    head = model.linear
    assert torch.equal(out.feature_maps, maps[:, head.selection])
    f = maps[:, head.selection].mean((2, 3))
    expected = ((f - head.mean) / head.std.clamp(min=1e-6)) @ head.layer.weight.T + head.layer.bias
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert model.dropout.p == 0.1
    assert not head.layer.weight.requires_grad and not head.layer.bias.requires_grad
    assert head.mean.requires_grad and head.std.requires_grad


def test_dropout_acts_on_raw_pooled_features_in_train_mode():
    model = sparse_model().train()
    torch.manual_seed(0)
    out = model(torch.rand(4, 3, 32, 32))
    dropped = out.pooled == 0
    assert dropped.any()  # with p=0.1 over 16 values, seed 0 drops some
    assert not model.eval()(torch.rand(1, 3, 32, 32)).pooled.eq(0).all()


def test_state_dict_uses_reference_names():
    keys = set(sparse_model().state_dict())
    assert {
        "linear.selection",
        "linear.mean",
        "linear.std",
        "linear.layer.weight",
        "linear.layer.bias",
        "conv1.weight",
        "layer4.0.conv1.weight",
    } <= keys
    assert {"linear.weight", "linear.bias"} <= set(build_model("resnet10", 3).state_dict())


def test_checkpoint_roundtrip_keeps_outputs(tmp_path):
    model = sparse_model()
    path = tmp_path / "m.pt"
    torch.save(model_record(model, INFO, 64, recipe="tiny"), path)
    loaded, record = load_checkpoint(path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded.eval()(x).logits)
    assert record["dataset"]["class_names"] == ["a", "b", "c"] and record["img_size"] == 64


def test_checkpoint_rejects_foreign_files(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(QsennError, match="x.pt is not a torch.save file, or a corrupt one"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(QsennError, match="import-reference"):
        load_checkpoint(tmp_path / "sd.pt")
    with pytest.raises(QsennError, match="newer"):
        model_from_record({"format": "qsenn.model", "version": 99})


def test_missing_pretrained_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(QsennError, match=r"resnet18-f37072fd\.pth.*checkpoints.*--no-pretrained"):
        build_model("resnet18", 10, pretrained=True)
    with pytest.raises(QsennError, match="no ImageNet weights exist for resnet10"):
        build_model("resnet10", 10, pretrained=True)


@pytest.mark.parametrize("classes", [1000, 7])
def test_pretrained_loads_backbone_and_fc_only_for_1000_classes(tmp_path, monkeypatch, classes):
    # A torchvision-format checkpoint made here (nothing is downloaded).
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    torch.manual_seed(3)
    from torchvision.models import resnet18

    reference = resnet18()
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_model("resnet18", classes)
    head_before = model.linear.weight.clone()
    load_pretrained(model, "resnet18")
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    if classes == 1000:
        assert torch.equal(model.linear.weight, reference.fc.weight)
    else:
        assert torch.equal(model.linear.weight, head_before)
