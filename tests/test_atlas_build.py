"""`qsenn atlas RUN` end to end on a toy model over a tiny synthetic dataset: what atlas.json
holds, the thumbnails, the names file a person edits (kept on rerun), the attribute alignment
per feature, and the one-line errors for bad input."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from PIL import Image

from qsenn_bench.testing.toy_models import fake_run, ternary_model
from qsenn_runtime import heatmap
from qsenn_train.atlas import thumbnails
from qsenn_train.atlas.build import ATLAS_FILE, NAME_THRESHOLD, NAMES_FILE, atlas_folder
from qsenn_train.atlas.vocabulary import attribute_vocabulary
from qsenn_train.data.layouts import load_synth_splits
from qsenn_train.data.synth import SynthSpec, generate
from qsenn_train.data.transforms import build_transform
from qsenn_train.metrics import alignment, attribute_alignment

SYNTH = SynthSpec(n_classes=4, train_per_class=5, test_per_class=3, image_size=32, seed=0)
N_FEATURES = 6


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas")
    info = load_synth_splits(generate(SYNTH, folder / "data"))[2]
    return fake_run(folder / "run", {"qsenn": ternary_model(num_classes=4, n_features=N_FEATURES)}, info=info)


@pytest.fixture(scope="module")
def atlas(run_dir):
    from qsenn_train.atlas.build import build_atlas

    lines: list[str] = []
    path = build_atlas(run_dir, top=3, echo=lines.append)
    return json.loads(path.read_text()), lines


def test_atlas_describes_every_feature(run_dir, atlas):
    data, lines = atlas
    folder = atlas_folder(run_dir, "qsenn")
    assert data["model_type"] == "qsenn" and data["split"] == "train" and data["images"] == 4 * 5
    assert data["name_threshold"] == NAME_THRESHOLD and len(data["features"]) == N_FEATURES
    model = ternary_model(num_classes=4, n_features=N_FEATURES)
    weights = model.head_weight.detach().numpy()
    importance = [f["importance"] for f in data["features"]]
    assert abs(sum(importance) - 1) < 1e-9 and min(importance) >= 0
    for j, feature in enumerate(data["features"]):
        assert [r["class"] for r in feature["raises"]] == [
            data["classes"][k] for k in np.flatnonzero(weights[:, j] > 0)
        ]
        assert [r["class"] for r in feature["lowers"]] == [
            data["classes"][k] for k in np.flatnonzero(weights[:, j] < 0)
        ]
        activations = [t["activation"] for t in feature["top_images"]]
        assert len(activations) == 3 and activations == sorted(activations, reverse=True)
        for row in feature["per_class"]:
            assert row["q25"] <= row["median"] <= row["q75"] and row["images"] == 5
        assert 1 <= len(feature["attributes"]) <= 3
        best = feature["attributes"][0]
        if feature["name_source"] == "attribute":  # named in words: has_primary_color::red → "a red shape"
            assert best["score"] >= NAME_THRESHOLD and feature["used"]
            assert feature["suggested_name"] == attribute_vocabulary("synth", [best["attribute"]])[best["attribute"]]
        else:
            assert feature["name_source"] == "classes" and (best["score"] < NAME_THRESHOLD or not feature["used"])
        scores = [a["score"] for a in feature["attributes"]]
        assert scores == sorted(scores, reverse=True)
        for shown in feature["top_images"]:
            with Image.open(folder / shown["thumbnail"]) as image:
                assert image.format == "JPEG" and image.size == (thumbnails.THUMBNAIL_PIXELS,) * 2
    assert lines[-1].startswith(f"wrote {folder}: {N_FEATURES} features")


def test_top_images_are_the_most_activating_by_pooled_value(run_dir, atlas):
    data, _ = atlas
    model = ternary_model(num_classes=4, n_features=N_FEATURES)
    train, _, info = load_synth_splits(run_dir.parent / "data" / "CUB_200_2011")
    transform = build_transform(info, 32, train=False)
    with torch.no_grad():
        pooled = torch.cat([model(transform(train.load_image(i))[None]).pooled for i in range(len(train))]).numpy()
    for j, feature in enumerate(data["features"]):
        assert [t["image"] for t in feature["top_images"]] == list(np.argsort(-pooled[:, j], kind="stable")[:3])
        assert feature["top_images"][0]["activation"] == pytest.approx(float(pooled[:, j].max()), rel=1e-5)


def test_attribute_alignment_finds_a_planted_attribute_and_matches_the_metric():
    # 40 images, 4 attributes: feature 0 fires exactly where attribute 2 is present, feature 1
    # is noise, feature 2 is dead.
    rng = np.random.default_rng(0)
    present_matrix = rng.random((40, 4)) < 0.4
    features = np.stack([present_matrix[:, 2] * 3.0, rng.random(40), np.ones(40)], axis=1)
    image, attribute = np.nonzero(np.ones((40, 4)))
    scores = attribute_alignment(
        torch.from_numpy(features),
        torch.from_numpy(image),
        torch.from_numpy(attribute),
        torch.from_numpy(present_matrix[image, attribute]),
        4,
    )
    assert scores.shape == (4, 3)
    assert int(scores[:, 0].argmax()) == 2
    # A perfectly aligned binary feature: Δ = 3, m = 3·p, so A = 1/p.
    assert float(scores[2, 0]) == pytest.approx(1 / present_matrix[:, 2].mean())
    assert (scores[:, 2] == 0).all()
    total = alignment(
        torch.from_numpy(features),
        torch.from_numpy(image),
        torch.from_numpy(attribute),
        torch.from_numpy(present_matrix[image, attribute]),
        4,
    )
    assert total == pytest.approx(float(scores.max(dim=0).values.sum()) / 3)


def test_thumbnail_heat_matches_the_runtime_heat_map():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    feature_map = rng.random((4, 4)).astype(np.float32)
    assert np.array_equal(thumbnails.overlay(image, feature_map), heatmap.overlay(image, feature_map))
    assert np.array_equal(thumbnails.HEAT_STOPS, heatmap.HEAT_STOPS) and thumbnails.HEAT_ALPHA == heatmap.HEAT_ALPHA


def test_peak_box_centres_the_crop_on_the_peak_inside_the_image():
    feature_map = np.zeros((4, 4))
    feature_map[3, 0] = 1  # bottom left
    assert thumbnails.peak_box(feature_map, 64, 64) == (0, 32, 32, 64)
    feature_map[:] = 0
    feature_map[1, 2] = 1  # centre of cell (1, 2): x = 40, y = 24
    assert thumbnails.peak_box(feature_map, 64, 64) == (24, 8, 56, 40)


def test_rerun_keeps_edited_names_and_says_which(run_dir, atlas, capsys):
    folder = atlas_folder(run_dir, "qsenn")
    names = json.loads((folder / NAMES_FILE).read_text())
    assert sorted(names, key=int) == [str(j) for j in range(N_FEATURES)]
    names["2"]["name"] = "red shapes"
    names["4"]["description"] = "fires on two shapes"
    (folder / NAMES_FILE).write_text(json.dumps(names))
    thumbnail = folder / atlas[0]["features"][0]["top_images"][0]["thumbnail"]
    drawn = thumbnail.stat().st_mtime_ns
    code, out, err = run_cli(capsys, "atlas", run_dir, "--top", "3")
    assert code == 0, err
    assert "kept 2 edited names" in out and "2 'red shapes'" in out
    after = json.loads((folder / NAMES_FILE).read_text())
    assert after["2"]["name"] == "red shapes" and after["4"]["description"] == "fires on two shapes"
    assert after["0"] == names["0"]
    assert thumbnail.stat().st_mtime_ns == drawn  # resumed: nothing drawn again


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", "cannot read feature names"), ('{"0": 7}', "entry 0"), ('{"9": "x"}', "entry 9")],
)
def test_malformed_names_file_is_one_line_and_nothing_is_written(run_dir, atlas, capsys, content, problem):
    folder = atlas_folder(run_dir, "qsenn")
    names = folder / NAMES_FILE
    good = names.read_text()
    before = (folder / ATLAS_FILE).stat().st_mtime_ns
    names.write_text(content)
    try:
        code, out, err = run_cli(capsys, "atlas", run_dir, "--top", "3")
    finally:
        names.write_text(good)
    assert code == 2 and out == "" and err.count("\n") == 1 and problem in err and str(names) in err
    assert (folder / ATLAS_FILE).stat().st_mtime_ns == before


def test_clip_without_a_clip_folder_and_empty_concepts_are_one_line(run_dir, atlas, capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    (tmp_path / "notclip").mkdir()
    (tmp_path / "notclip" / "config.json").write_text('{"model_type": "bert"}')
    for args, problem in (
        (["--clip", tmp_path / "notclip"], "holds a 'bert' model, not CLIP"),
        (["--clip", tmp_path / "nowhere"], "does not exist"),
        (["--clip", tmp_path / "notclip", "--concepts", tmp_path / "empty.txt"], "has no phrases"),
        (["--concepts", tmp_path / "empty.txt"], "add --clip PATH"),
    ):
        code, out, err = run_cli(capsys, "atlas", run_dir, *args)
        assert code == 2 and out == "" and err.count("\n") == 1 and problem in err, err


def test_clip_phrases_name_features_end_to_end(run_dir, atlas, capsys, tmp_path):
    pytest.importorskip("transformers", reason="--clip needs the qsenn[concepts] extra (transformers)")
    from tiny_clip import save_tiny_clip

    phrases = ["a red shape", "a circle", "two shapes", "a striped shape"]
    (tmp_path / "concepts.txt").write_text("\n".join(phrases) + "\n")
    clip = save_tiny_clip(tmp_path / "clip")
    code, out, err = run_cli(
        capsys, "atlas", run_dir, "--top", "3", "--clip", clip, "--concepts", tmp_path / "concepts.txt"
    )
    assert code == 0, err
    data = json.loads((atlas_folder(run_dir, "qsenn") / ATLAS_FILE).read_text())
    assert data["clip"] == {"model": str(clip), "phrases": 4}
    live = 0
    for feature in data["features"]:
        named = [c["phrase"] for c in feature["concepts"]]
        activations = {t["activation"] for t in feature["top_images"]}
        if not named:  # a dead feature (constant over the images) gets no phrases
            assert len(activations) == 1
            continue
        live += 1
        assert len(named) == 3 and set(named) <= set(phrases)
        scores = [c["score"] for c in feature["concepts"]]
        assert scores == sorted(scores, reverse=True)
    assert live >= 2


# ---- the atlas in the exported model ------------------------------------------------------------

FAST_EXPORT = ("--verify-count", "2", "--evidence-count", "0")


def test_export_embeds_names_attributes_and_prototypes(run_dir, atlas, capsys, tmp_path):
    import qsenn_runtime
    from qsenn_runtime.prototypes import decode_prototypes

    folder = atlas_folder(run_dir, "qsenn")
    names = json.loads((folder / NAMES_FILE).read_text())
    names["1"]["name"] = "edited name"
    (folder / NAMES_FILE).write_text(json.dumps(names))
    plain = tmp_path / "plain.onnx"
    code, out, err = run_cli(capsys, "export", run_dir, "--out", plain, "--no-prototypes", *FAST_EXPORT)
    assert code == 0, err
    assert "(no prototypes)" in out
    full = tmp_path / "full.onnx"
    code, out, err = run_cli(capsys, "export", run_dir, "--out", full, *FAST_EXPORT)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("atlas of"))
    added = int(line.rsplit(", ", 1)[1].split()[0].replace(",", ""))
    assert full.stat().st_size - plain.stat().st_size == pytest.approx(added, rel=0.05)
    metadata = qsenn_runtime.read_metadata(full)
    assert metadata.format_version == 3
    assert metadata.features[1].name == "edited name"
    for feature, described in zip(metadata.features, atlas[0]["features"]):
        assert feature.description == names[str(feature.index)]["description"]
        assert [a for a, _ in feature.attributes] == [a["attribute"] for a in described["attributes"]]
        pictures = decode_prototypes(feature)
        assert len(pictures) == 3  # the atlas holds 3 per feature, fewer than the default 4
        first = np.asarray(Image.open(folder / described["top_images"][0]["thumbnail"]).convert("RGB"))
        assert np.array_equal(pictures[0], first)
    assert qsenn_runtime.read_metadata(plain).features[0].prototypes == ()
    (tmp_path / "names.json").write_text(json.dumps({"0": "given"}))
    code, out, err = run_cli(
        capsys,
        "export",
        run_dir,
        "--out",
        tmp_path / "given.onnx",
        "--feature-names",
        tmp_path / "names.json",
        *FAST_EXPORT,
    )
    assert code == 0, err
    given = qsenn_runtime.read_metadata(tmp_path / "given.onnx")
    assert [f.name for f in given.features[:2]] == ["given", "feature 1"] and len(given.features[0].prototypes) == 3


def test_export_refuses_the_atlas_of_another_run(run_dir, atlas, capsys, tmp_path):
    from qsenn_train.atlas.build import build_atlas

    other = fake_run(
        tmp_path / "other",
        {"qsenn": ternary_model(num_classes=4, n_features=N_FEATURES, seed=3)},
        info=load_synth_splits(run_dir.parent / "data" / "CUB_200_2011")[2],
    )
    build_atlas(other, top=2, echo=lambda line: None)
    out_file = tmp_path / "m.onnx"
    code, out, err = run_cli(
        capsys, "export", run_dir, "--out", out_file, "--atlas", atlas_folder(other, "qsenn"), *FAST_EXPORT
    )
    assert code == 2 and err.count("\n") == 1 and "describes another model" in err and str(other) in err
    assert not out_file.exists()


# ---- the runtime speaks names ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(run_dir, atlas, tmp_path_factory):
    from qsenn_bench.testing.cli_runs import run_cli as run_cli_outside

    path = tmp_path_factory.mktemp("exported") / "model.onnx"
    code, _, err = run_cli_outside("export", run_dir, "--out", path, *FAST_EXPORT)
    assert code == 0, err
    return path


def test_runtime_contributions_carry_names_descriptions_and_prototypes(run_dir, exported, capsys, tmp_path):
    import qsenn_runtime

    model = qsenn_runtime.load(exported)
    image = next((run_dir.parent / "data" / "CUB_200_2011" / "images").rglob("*.png"))
    contribution = model.predict(image).explanation.contributions[0]
    feature = model.metadata.features[contribution.feature]
    assert (contribution.name, contribution.description) == (feature.name, feature.description)
    assert contribution.description.startswith("raises ")
    prototypes = model.prototypes(contribution.feature)
    assert len(prototypes) == 3 and all(p.shape == (96, 96, 3) and p.dtype == np.uint8 for p in prototypes)
    code, out, err = run_cli(capsys, "predict", exported, image)
    assert code == 0 and feature.name in out, err
    picture = tmp_path / "explain.png"
    code, out, err = run_cli(capsys, "explain", exported, image, "--out", picture)
    assert code == 0, err
    with Image.open(picture) as drawn:
        assert drawn.format == "PNG" and drawn.size[1] > 600  # the prototypes' row makes it taller


# ---- the model card in a real browser -------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_dom(page: Path, fragment: str = "") -> str:
    """The DOM after chromium ran the page's script (headless)."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri() + fragment],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def card(exported, run_dir, tmp_path_factory):
    from qsenn_bench.testing.cli_runs import run_cli as run_cli_outside

    images = sorted((run_dir.parent / "data" / "CUB_200_2011" / "images").rglob("*.png"))[:2]
    page = tmp_path_factory.mktemp("card") / "card.html"
    code, out, err = run_cli_outside("report", exported, "--out", page, "--image", images[0], "--image", images[1])
    assert code == 0, err
    assert out.startswith(f"wrote {page}") and "2 explained images" in out
    return page


def test_card_is_self_contained(card):
    page = card.read_text()
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "src='data:image/png;base64," in page and "background-image:url(data:image/jpeg;base64," in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_card_renders_every_class_and_feature_in_chromium(card, exported):
    import qsenn_runtime

    metadata = qsenn_runtime.read_metadata(exported)
    dom = rendered_dom(card)
    for k, name in enumerate(metadata.class_names):
        assert re.search(rf"id=\"class-{k}\"[^>]*>\s*<h3><span>{re.escape(html.escape(name))}</span>", dom), name
    for feature in metadata.features:
        assert re.search(
            rf"id=\"feature-{feature.index}\"[^>]*>\s*<h3><span>{re.escape(html.escape(feature.name))}</span>", dom
        )
    assert "cards</span>" in dom  # the script ran: it counts the cards
    # The search, filled in from the address: a card stays visible when the text is in its class
    # name or in the name of one of its features.
    target = metadata.class_names[0]
    filtered = rendered_dom(card, "#q=" + target)
    hidden = []
    for k in range(metadata.num_classes):
        opening = re.search(rf"<div class=\"card class\" id=\"class-{k}\" data-search=\"([^\"]*)\"([^>]*)>", filtered)
        assert opening is not None
        assert ("hidden" in opening.group(2)) == (html.escape(target.lower()) not in opening.group(1))
        hidden.append("hidden" in opening.group(2))
    assert not hidden[0] and any(hidden)


def test_metadata_of_version_2_still_loads_without_the_atlas_fields(exported):
    import qsenn_runtime
    from qsenn_runtime.metadata import ModelMetadata

    current = json.loads(qsenn_runtime.read_metadata(exported).to_json())
    current["format_version"] = 2
    for feature in current["features"]:
        for field in ("description", "attributes", "prototypes", "importance"):
            del feature[field]
    old = ModelMetadata.from_json(json.dumps(current))
    assert old.format_version == 2 and [f.name for f in old.features] == [f["name"] for f in current["features"]]
    assert all(f.description == "" and f.prototypes == () and f.importance is None for f in old.features)
