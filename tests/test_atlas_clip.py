"""The CLIP encoder end to end: a tiny randomly initialised CLIP that the test builds and saves,
loaded back through `load_clip` and used to name features; and the one-line errors for folders
that are not a CLIP model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_clip import EMBED_DIM, save_tiny_clip, tiny_vocabulary

from qsenn_train.atlas.concepts import name_features_with_clip
from qsenn_train.atlas.encoders import as_rgb, load_clip
from qsenn_train.errors import QsennError

pytest.importorskip("transformers", reason="the CLIP encoder needs the qsenn[concepts] extra (transformers)")

REPO = Path(__file__).resolve().parents[1]
PHRASES = ["a bird with blue wings", "a red crown", "a long tail", "two shapes", "a striped shape"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_importing_the_atlas_does_not_import_transformers():
    code = (
        "import sys, qsenn_train.atlas.concepts, qsenn_train.atlas.encoders, qsenn_train.atlas.vocabulary; "
        "print('transformers' in sys.modules, 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "False"]


def images(n: int, seed: int = 0) -> list:
    """Random pictures of different sizes, alternately PIL images and uint8 arrays (one grey)."""
    rng = np.random.default_rng(seed)
    out: list = []
    for i in range(n):
        pixels = rng.integers(0, 256, (20 + 3 * i, 40 - i, 3), dtype=np.uint8)
        out.append(Image.fromarray(pixels) if i % 2 else pixels)
    out[2] = out[2][..., 0]
    return out


def test_encoder_shapes_and_determinism(clip_folder):
    encoder = load_clip(clip_folder)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    first = encoder.encode_images(images(5))
    assert first.shape == (5, EMBED_DIM) and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(encoder.encode_images(images(5)), first)
    np.testing.assert_allclose(encoder.encode_images(images(5)[1:3]), first[1:3], rtol=1e-5, atol=1e-6)
    texts = encoder.encode_texts(PHRASES)
    assert texts.shape == (len(PHRASES), EMBED_DIM) and np.isfinite(texts).all()
    assert len({row.tobytes() for row in texts}) == len(PHRASES)  # the tokenizer tells the phrases apart
    np.testing.assert_allclose(encoder.encode_texts(PHRASES[::-1]), texts[::-1], rtol=1e-5, atol=1e-6)
    # A second load of the same folder is the same model.
    np.testing.assert_array_equal(load_clip(clip_folder).encode_texts(PHRASES), texts)


def test_names_features_end_to_end(clip_folder):
    rng = np.random.default_rng(1)
    activations = np.maximum(rng.normal(size=(12, 4)), 0).astype(np.float32)
    activations[:, 3] = 0.25  # dead: no names

    def run():
        return name_features_with_clip(activations, iter(images(12)), clip_folder, PHRASES, top=3, batch_size=5)

    named = run()
    assert len(named) == 4 and named[3] == []
    for names in named[:3]:
        assert len(names) == 3
        assert len({p for p, _ in names}) == 3 and {p for p, _ in names} <= set(PHRASES)
        scores = [s for _, s in names]
        assert all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
    assert run() == named


def break_folder(clip_folder: Path, target: Path, how: str) -> Path:
    shutil.copytree(clip_folder, target)
    weights = target / "model.safetensors"
    if how == "no config":
        (target / "config.json").unlink()
    elif how == "bad json":
        (target / "config.json").write_text("{ not json")
    elif how == "not clip":
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    elif how == "no weights":
        weights.unlink()
    elif how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:2000])
    elif how == "tensors missing":
        from safetensors.numpy import load_file, save_file

        tensors = load_file(weights)
        save_file({k: v for k, v in tensors.items() if "text_model" not in k}, weights, metadata={"format": "pt"})
    elif how == "other shapes":
        config = json.loads((target / "config.json").read_text())
        config["projection_dim"] = EMBED_DIM * 2
        (target / "config.json").write_text(json.dumps(config))
    elif how == "no tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (target / name).unlink()
    elif how == "another tokenizer":
        from transformers import CLIPTokenizer

        bigger = {**tiny_vocabulary(), **{f"extra{i}": 82 + i for i in range(50)}}
        CLIPTokenizer(vocab=bigger, merges=[]).save_pretrained(target)
    elif how == "no image processor":
        (target / "processor_config.json").unlink()
    return target


@pytest.mark.parametrize(
    "how, problem",
    [
        ("no config", r"is not a Hugging Face model folder \(no config.json\)"),
        ("bad json", "cannot read .*config.json"),
        ("not clip", "holds a 'bert' model, not CLIP"),
        ("no weights", "cannot load the CLIP weights"),
        ("truncated weights", "cannot load the CLIP weights"),
        ("tensors missing", "do not fit its config.json .20 tensors missing or of another shape, e.g. text_model"),
        ("other shapes", r"2 tensors missing or of another shape, e.g. text_projection.weight \(8, 16\) ≠ \(16, 16\)"),
        ("no tokenizer", r"has no tokenizer \(tokenizer.json, or vocab.json and merges.txt\)"),
        ("another tokenizer", "tokenizer .* has 132 tokens but the model embeds only 82"),
        ("no image processor", "cannot load the CLIP tokenizer and image processor"),
    ],
)
def test_a_folder_that_is_not_a_clip_model_is_one_line(clip_folder, tmp_path, how, problem):
    folder = break_folder(clip_folder, tmp_path / "broken", how)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(QsennError, match=problem) as error:
        load_clip(folder)
    message = str(error.value)
    assert "\n" not in message and str(folder) in message
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(QsennError, match="does not exist"):
        load_clip(tmp_path / "nope")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(QsennError, match="is a file, not a CLIP model folder"):
        load_clip(tmp_path / "model.bin")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_the_encoder_runs_on_cuda_like_on_cpu(clip_folder):
    on_cpu, on_gpu = load_clip(clip_folder), load_clip(clip_folder, device="cuda")
    np.testing.assert_allclose(on_gpu.encode_images(images(4)), on_cpu.encode_images(images(4)), atol=1e-4)
    np.testing.assert_allclose(on_gpu.encode_texts(PHRASES), on_cpu.encode_texts(PHRASES), atol=1e-4)


def test_images_may_be_pil_rgb_grey_or_uint8_arrays():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_rgb(grey).mode == "RGB" and as_rgb(grey).size == (4, 3)
    assert np.array_equal(np.asarray(as_rgb(Image.fromarray(grey))), np.asarray(as_rgb(grey)))
    with pytest.raises(ValueError, match="uint8 H×W×3 or H×W, got float64"):
        as_rgb(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r"got uint8 \(4, 4, 4\)"):
        as_rgb(np.zeros((4, 4, 4), dtype=np.uint8))
