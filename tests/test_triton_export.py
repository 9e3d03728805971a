"""`qsenn export --format triton`: the repository layout, config.pbtxt validated by parsing it into
tritonclient's ModelConfig protobuf (text format), and the runtime's client reading the qsenn
metadata from the config the way it reads it from a Triton server. (No Triton server runs here.)"""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

import cli
import qsenn_runtime
from qsenn_bench.testing.toy_models import fake_run, ternary_model
from qsenn_bench.testing.toy_onnx import toy_metadata
from qsenn_runtime.engine_file import MAGIC
from qsenn_runtime.metadata import MetadataError
from qsenn_runtime.serving.protocol import (
    HEADER_LENGTH,
    InferResponse,
    Tensor,
    encode_infer_response,
    parse_infer_request,
)
from qsenn_runtime.serving.triton_config import (
    PLATFORM_ONNX,
    PLATFORM_TENSORRT,
    labels_text,
    metadata_from_config,
    model_config,
    to_pbtxt,
)


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    """What Triton does with config.pbtxt: protobuf text format into inference.ModelConfig."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def odd_metadata():
    names = ('say "hi"', "back\\slash", "ünïcode — ✓", "tab\there")
    return toy_metadata(num_classes=4, num_features=6, size=40, class_names=names)


def toy_config(metadata, **overrides) -> dict:
    settings = {
        "platform": PLATFORM_ONNX,
        "max_batch_size": 8,
        "feature_map_size": (10, 10),
        "instance_kind": "KIND_AUTO",
        **overrides,
    }
    return model_config("toy", metadata, **settings)


# ---- config.pbtxt: written, parsed, refused when broken -----------------------------------------


@pytest.mark.parametrize("platform, kind", [(PLATFORM_ONNX, "KIND_AUTO"), (PLATFORM_TENSORRT, "KIND_GPU")])
def test_the_written_config_parses_into_triton_modelconfig(odd_metadata, platform, kind):
    config = parse_config(to_pbtxt(toy_config(odd_metadata, platform=platform, instance_kind=kind, instances=2)))
    assert (config.name, config.platform, config.max_batch_size) == ("toy", platform, 8)
    (images,) = config.input
    assert (images.name, images.data_type, list(images.dims)) == ("images", model_config_pb2.TYPE_FP32, [3, 40, 40])
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("logits", [4]),
        ("features", [6]),
        ("feature_maps", [6, 10, 10]),
    ]
    assert config.output[0].label_filename == "labels.txt"
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    (group,) = config.instance_group
    assert group.count == 2 and model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == kind
    assert config.parameters["qsenn"].string_value == odd_metadata.to_json()


def test_the_client_rebuilds_the_metadata_from_the_config_json(odd_metadata):
    """Triton's GET /v2/models/{name}/config answers the config in JSON: the runtime's reader
    gets the same metadata out of it, odd class names included."""
    as_json = json_format.MessageToDict(
        parse_config(to_pbtxt(toy_config(odd_metadata))), preserving_proto_field_name=True
    )
    rebuilt = metadata_from_config(as_json, "triton")
    assert rebuilt.to_json() == odd_metadata.to_json() and rebuilt.class_names == odd_metadata.class_names
    with pytest.raises(MetadataError, match="has no qsenn metadata in its config"):
        metadata_from_config({"name": "foreign"}, "triton model foreign")


def test_labels_file_has_one_line_per_class(odd_metadata):
    assert labels_text(odd_metadata).splitlines() == list(odd_metadata.class_names[:3]) + ["tab\there"]
    broken = toy_metadata(num_classes=2, class_names=("two\nlines", "b"))
    assert labels_text(broken).splitlines() == ["two lines", "b"]


def _corruptions():
    yield "truncated", lambda text: text[: text.rindex("}")]
    yield "misspelled field", lambda text: text.replace("max_batch_size", "max_batch", 1)
    yield "unknown enum", lambda text: text.replace("TYPE_FP32", "TYPE_FP33", 1)
    yield "unquoted string", lambda text: text.replace('name: "toy"', "name: toy", 1)
    yield "unescaped quote", lambda text: text.replace('\\"', '"', 1)
    yield "dims not integers", lambda text: text.replace("dims: [3, 40, 40]", "dims: [3, 40.5, 40]", 1)
    yield "scalar repeated", lambda text: text.replace("max_batch_size: 8", "max_batch_size: 8\nmax_batch_size: 9", 1)


@pytest.mark.parametrize("corrupt", [c[1] for c in _corruptions()], ids=[c[0] for c in _corruptions()])
def test_a_broken_config_fails_the_validation(odd_metadata, corrupt):
    text = to_pbtxt(toy_config(odd_metadata))
    parse_config(text)  # the intact one passes
    broken = corrupt(text)
    assert broken != text
    with pytest.raises(text_format.ParseError):
        parse_config(broken)


# ---- qsenn export --format triton ------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("triton")
    run = fake_run(folder / "run", {"qsenn": ternary_model()})
    repository = folder / "repo"
    result = CliRunner().invoke(
        cli.qsenn,
        ["export", str(run), "--format", "triton", "--out", str(repository), "--name", "toy", "--verify-count", "4"],
    )
    assert result.exit_code == 0, result.output
    return run, repository, result.output


def test_the_repository_has_triton_layout_and_a_valid_config(exported):
    run, repository, output = exported
    model_dir = repository / "toy"
    assert sorted(p.relative_to(repository).as_posix() for p in repository.rglob("*")) == [
        "toy",
        "toy/1",
        "toy/1/model.onnx",
        "toy/config.pbtxt",
        "toy/labels.txt",
    ]
    assert "verified on 4 random images" in output and f"wrote {model_dir}/1/model.onnx" in output
    config = parse_config((model_dir / "config.pbtxt").read_text())
    metadata = qsenn_runtime.read_metadata(model_dir / "1" / "model.onnx")
    assert (config.name, config.platform, config.max_batch_size) == ("toy", "onnxruntime_onnx", 16)
    assert config.parameters["qsenn"].string_value == metadata.to_json()
    graph = onnx.load(str(model_dir / "1" / "model.onnx")).graph
    batch_dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.output}
    for output in config.output:  # the config's dims are the graph's, behind a dynamic batch
        assert isinstance(batch_dims[output.name][0], str) and list(output.dims) == batch_dims[output.name][1:]
    assert (model_dir / "labels.txt").read_text().splitlines() == list(metadata.class_names)


def test_exporting_again_replaces_the_model_and_leaves_the_others(exported, tmp_path):
    run, repository, _ = exported
    shutil.copytree(repository / "toy", repository / "neighbour")
    before = (repository / "neighbour" / "config.pbtxt").read_text()
    result = CliRunner().invoke(
        cli.qsenn,
        [
            "export",
            str(run),
            "--format",
            "triton",
            "--out",
            str(repository),
            "--name",
            "toy",
            "--batch",
            "4",
            "--no-verify",
        ],
    )
    assert result.exit_code == 0, result.output
    assert parse_config((repository / "toy" / "config.pbtxt").read_text()).max_batch_size == 4
    assert (repository / "neighbour" / "config.pbtxt").read_text() == before
    assert not [p.name for p in repository.iterdir() if p.name.startswith(".")]  # no staging left
    shutil.rmtree(repository / "neighbour")
    result = CliRunner().invoke(cli.qsenn, ["export", str(run), "--format", "triton", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert (run / "triton" / "resnet10_CUB2011" / "config.pbtxt").is_file()  # default place and name


def test_name_is_refused_where_it_means_nothing(exported):
    run, repository, _ = exported
    result = CliRunner().invoke(cli.qsenn, ["export", str(run), "--name", "toy"])
    assert result.exit_code != 0
    assert "--name is not available for ONNX export; formats that take it: triton, triton-trt" in str(result.exception)
    result = CliRunner().invoke(
        cli.qsenn, ["export", str(run), "--format", "triton", "--name", "../up", "--out", str(repository)]
    )
    assert result.exit_code != 0 and "--name '../up'" in str(result.exception)


class TritonStandIn(BaseHTTPRequestHandler):
    """What a Triton server answers for a repository model (model metadata without qsenn
    parameters, the config in JSON, infer with the graph's outputs), built from the exported files."""

    repository: Path = Path()  # set by the test that starts it
    sessions: dict = {}

    def log_message(self, *args):  # quiet
        pass

    def _json(self, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _config(self, name: str) -> dict:
        text = (self.repository / name / "config.pbtxt").read_text()
        return json_format.MessageToDict(parse_config(text), preserving_proto_field_name=True)

    def do_GET(self):
        name = self.path.split("/")[3]
        config = self._config(name)
        if self.path.endswith("/config"):
            return self._json(config)
        tensors = lambda entries: [  # noqa: E731
            {"name": e["name"], "datatype": "FP32", "shape": [-1, *map(int, e["dims"])]} for e in entries
        ]
        return self._json(
            {
                "name": name,
                "versions": ["1"],
                "platform": config["platform"],
                "inputs": tensors(config["input"]),
                "outputs": tensors(config["output"]),
            }
        )

    def do_POST(self):
        import onnxruntime

        name = self.path.split("/")[3]
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = parse_infer_request(body, self.headers.get(HEADER_LENGTH))
        if name not in self.sessions:
            self.sessions[name] = onnxruntime.InferenceSession(str(self.repository / name / "1" / "model.onnx"))
        names = [o.name for o in request.outputs]
        results = self.sessions[name].run(names, {"images": request.inputs[0].data})
        response = InferResponse(name, tuple(Tensor.of(n, r) for n, r in zip(names, results)), "1")
        content, length = encode_infer_response(response, [bool(o.binary) for o in request.outputs])
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        if length is not None:
            self.send_header(HEADER_LENGTH, str(length))
        self.end_headers()
        self.wfile.write(content)


def test_connect_explains_a_triton_served_repository_model_exactly(exported):
    """The client finds the qsenn metadata and max_batch_size in the config, as on Triton."""
    _, repository, _ = exported
    TritonStandIn.repository = repository
    server = ThreadingHTTPServer(("127.0.0.1", 0), TritonStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = qsenn_runtime.connect(f"127.0.0.1:{server.server_address[1]}", model="toy")
        local = qsenn_runtime.load(repository / "toy" / "1" / "model.onnx")
        largest = parse_config((repository / "toy" / "config.pbtxt").read_text()).max_batch_size
        assert remote.backend.batch_range == (1, largest) and remote.metadata.to_json() == local.metadata.to_json()
        images = [np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8) for i in range(3)]
        assert [p.to_dict() for p in remote.predict(images, classes=[2])] == [
            p.to_dict() for p in local.predict(images, classes=[2])
        ]
    finally:
        server.shutdown()
        server.server_close()


HAVE_TRT_GPU = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.trt
@pytest.mark.skipif(not HAVE_TRT_GPU, reason="needs TensorRT and an NVIDIA GPU")
def test_the_trt_repository_holds_the_raw_plan(exported):
    run, repository, _ = exported
    result = CliRunner().invoke(
        cli.qsenn,
        [
            "export",
            str(run),
            "--format",
            "triton-trt",
            "--half",
            "--out",
            str(repository),
            "--name",
            "toy_trt",
            "--verify-count",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    config = parse_config((repository / "toy_trt" / "config.pbtxt").read_text())
    assert config.platform == PLATFORM_TENSORRT and config.max_batch_size == 16
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    plan = (repository / "toy_trt" / "1" / "model.plan").read_bytes()
    assert not plan.startswith(MAGIC)  # Triton reads a bare plan, not the qsenn container
    assert json.loads(config.parameters["qsenn"].string_value)["engine"]["precision"] == "fp16"
