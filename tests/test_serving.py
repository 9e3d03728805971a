"""`qsenn serve` against a real client: tritonclient.http (NVIDIA's, from PyPI) and raw HTTP, on toy
ONNX models in a child process on a free port of 127.0.0.1. Results must equal the local runtime's
exactly; every bad request gets its 4xx and the server keeps serving; SIGTERM drains."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import math
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.http as triton
from cli_runner import run_cli
from PIL import Image
from tritonclient.utils import InferenceServerException

import qsenn_runtime
from qsenn_bench.testing.serve_process import REPO, ServeProcess
from qsenn_bench.testing.toy_onnx import save_toy_model, toy_metadata
from qsenn_runtime import PredictionError
from qsenn_runtime.metadata import ModelMetadata

MAX_BATCH = 8
MAX_BODY = 1 << 20
MAX_PIXELS = 100 * 100
SIZE = 32


def png(seed: int, width: int = 50, height: int = 40) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def tensor(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    save_toy_model(folder / "toy.onnx", toy_metadata(num_classes=5, num_features=7, size=SIZE), widths=(8, 16))
    # The second model has an SLDD-like sparse head of real weights.
    second = toy_metadata(num_classes=3, num_features=4, size=24, seed=3, head_kind="sparse")
    save_toy_model(folder / "second.onnx", second)
    for name, seed in (("a.png", 1), ("b.png", 2)):
        (folder / name).write_bytes(png(seed))
    (folder / "token").write_text("s3cret-token\n")
    return folder


@pytest.fixture(scope="module")
def server(files):
    with ServeProcess(
        files / "toy.onnx",
        files / "second.onnx",
        "--name",
        "toy",
        "--batch-window-ms",
        "5",
        "--max-batch",
        MAX_BATCH,
        "--max-body-bytes",
        MAX_BODY,
        "--max-image-pixels",
        MAX_PIXELS,
    ) as process:
        yield process


@pytest.fixture(scope="module")
def local(files):
    return qsenn_runtime.load(files / "toy.onnx", "cpu")


@pytest.fixture
def client(server):
    with triton.InferenceServerClient(server.address) as c:
        yield c


def images_input(x: np.ndarray, binary: bool) -> triton.InferInput:
    entry = triton.InferInput("images", list(x.shape), "FP32")
    entry.set_data_from_numpy(x, binary_data=binary)
    return entry


def bytes_input(images: list[bytes]) -> triton.InferInput:
    entry = triton.InferInput("image_bytes", [len(images)], "BYTES")
    entry.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    return entry


OUTPUTS = ("logits", "features", "class_index", "class_name", "probability", "explanations")


def assert_equals_local(result, local_predictions) -> None:
    """Bitwise the local runtime's logits and features, and the same prediction and explanations."""
    assert np.array_equal(result.as_numpy("logits"), np.array([p.logits for p in local_predictions], np.float32))
    assert np.array_equal(result.as_numpy("features"), np.array([p.features for p in local_predictions], np.float32))
    assert result.as_numpy("class_index").tolist() == [p.class_index for p in local_predictions]
    names = [n.decode() if isinstance(n, bytes) else n for n in result.as_numpy("class_name")]  # JSON: str
    assert names == [p.class_name for p in local_predictions]
    assert result.as_numpy("probability").tolist() == [np.float32(p.probability) for p in local_predictions]
    explanations = [json.loads(e) for e in result.as_numpy("explanations")]
    assert explanations == [[e.to_dict() for e in p.explanations] for p in local_predictions]


# ---- the protocol with NVIDIA's client -----------------------------------------------------------


def test_health_metadata_and_repository_index(client, local):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("toy")
    server = client.get_server_metadata()
    assert server["name"] == "qsenn" and "binary_tensor_data" in server["extensions"]
    assert client.get_model_repository_index() == [
        {"name": "second", "version": "1", "state": "READY"},
        {"name": "toy", "version": "1", "state": "READY"},
    ]
    metadata = client.get_model_metadata("toy")
    assert metadata["inputs"][0] == {"name": "images", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}
    assert {o["name"] for o in metadata["outputs"]} == {*OUTPUTS, "feature_maps"}
    rebuilt = ModelMetadata.from_json(metadata["parameters"]["qsenn"])
    assert rebuilt.to_json() == local.metadata.to_json()
    assert metadata["parameters"]["max_batch_size"] == MAX_BATCH
    assert client.get_model_metadata("second")["inputs"][0]["shape"] == [-1, 3, 24, 24]
    config = client.get_model_config("toy")
    assert config["max_batch_size"] == MAX_BATCH and config["platform"] == "onnxruntime_onnx"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("n", [1, 5], ids=["single", "batch"])
def test_infer_equals_the_local_runtime_exactly(client, local, binary, n):
    x = tensor(n, seed=n)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in OUTPUTS]
    result = client.infer(
        "toy", [images_input(x, binary)], outputs=outputs, parameters={"explain": True, "explain_classes": "class 2,4"}
    )
    response = result.get_response()
    assert all(("data" in o) != binary for o in response["outputs"])
    assert_equals_local(result, local.predict_tensor(x, classes=["class 2", 4]))


def test_keep_alive_requests_do_not_wait_for_delayed_acks(server):
    """Nagle's algorithm on the server's sockets would hold every second write of a response for the
    client's delayed ACK (~40 ms on Linux); a kept-alive connection answers in well under that."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    times = []
    for _ in range(15):
        began = time.perf_counter()
        connection.request("GET", "/v2/health/live")
        connection.getresponse().read()
        times.append(time.perf_counter() - began)
    connection.close()
    assert sorted(times)[len(times) // 2] < 0.02, f"median {1000 * sorted(times)[len(times) // 2]:.1f} ms"


def test_default_outputs_and_explain_flag(client, local):
    x = tensor(2, seed=7)
    plain = client.infer("toy", [images_input(x, True)])
    assert [o["name"] for o in plain.get_response()["outputs"]] == list(OUTPUTS[:5])
    explained = client.infer("toy", [images_input(x, True)], parameters={"explain": True})
    assert_equals_local(explained, local.predict_tensor(x))


def test_encoded_image_bytes_are_preprocessed_as_the_runtime_does(client, local):
    images = [png(1), png(2, 70, 30), png(3, 33, 90)]
    result = client.infer("toy", [bytes_input(images)], outputs=[triton.InferRequestedOutput(name) for name in OUTPUTS])
    assert_equals_local(result, local.predict(images))
    single = client.infer("toy", [bytes_input(images[:1])], parameters={"explain": True})
    assert_equals_local(single, [local.predict(images[0])])


def test_classification_extension(client, local):
    x = tensor(2, seed=9)
    result = client.infer(
        "toy", [images_input(x, True)], outputs=[triton.InferRequestedOutput("logits", class_count=3)]
    )
    top = result.as_numpy("logits")
    assert top.shape == (2, 3)
    for row, prediction in zip(top, local.predict_tensor(x)):
        expected = sorted(range(5), key=lambda k: -prediction.logits[k])[:3]
        assert [int(entry.decode().split(":")[1]) for entry in row] == expected
        assert row[0].decode().endswith(f":{prediction.class_name}")


def test_concurrent_requests_share_backend_calls_and_stay_exact(server, local):
    """8 clients at once, 4 requests each: every answer is the local one, and the server's
    statistics show backend calls holding several requests (dynamic batching)."""
    with triton.InferenceServerClient(server.address) as c:
        before = c.get_inference_statistics("toy")["model_stats"][0]
    inputs = {(t, i): tensor(1 + (t + i) % 3, seed=100 * t + i) for t in range(8) for i in range(4)}
    answers: dict = {}
    barrier = threading.Barrier(8)

    def worker(t: int) -> None:
        with triton.InferenceServerClient(server.address) as c:
            barrier.wait()
            for i in range(4):
                answers[t, i] = c.infer("toy", [images_input(inputs[t, i], True)]).as_numpy("logits")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 32
    for key, logits in answers.items():
        assert np.array_equal(logits, np.array([p.logits for p in local.predict_tensor(inputs[key])], np.float32))
    with triton.InferenceServerClient(server.address) as c:
        after = c.get_inference_statistics("toy")["model_stats"][0]
    rows = after["inference_count"] - before["inference_count"]
    calls = after["execution_count"] - before["execution_count"]
    assert rows == sum(len(x) for x in inputs.values())
    assert calls < 32, f"{calls} backend calls for 32 concurrent requests: nothing was batched"
    assert max(s["batch_size"] for s in after["batch_stats"]) <= MAX_BATCH


# ---- the runtime's remote model --------------------------------------------------------------


def test_connect_gives_the_local_api_with_the_same_results(server, local, files):
    remote = qsenn_runtime.connect(server.url, model="toy", batch_size=2)
    assert remote.metadata.to_json() == local.metadata.to_json()
    assert remote.backend.batch_range == (1, MAX_BATCH)
    sources = [files / "a.png", png(5), b"not an image", files / "b.png", png(6, 20, 90)]
    remote_results = remote.predict(sources, classes=[1])
    local_results = local.predict(sources, classes=[1])
    assert [type(r) for r in remote_results] == [type(r) for r in local_results]
    assert isinstance(remote_results[2], PredictionError)
    assert [r.to_dict() for r in remote_results] == [r.to_dict() for r in local_results]
    explained_remote, explained_local = remote.explain(files / "a.png", "class 3"), local.explain(files / "a.png", 3)
    assert explained_remote.prediction == explained_local.prediction
    assert np.array_equal(explained_remote.feature_maps, explained_local.feature_maps)
    assert remote.global_explanation() == local.global_explanation()


def test_a_sparse_head_is_served_and_explained_like_the_local_model(server, files):
    remote = qsenn_runtime.connect(server.url, model="second")
    local = qsenn_runtime.load(files / "second.onnx", "cpu")
    assert remote.metadata.head_kind == "sparse" and remote.metadata.to_json() == local.metadata.to_json()
    sources = [png(7, 24, 24), png(8, 30, 24)]
    remote_results, local_results = remote.predict(sources), local.predict(sources)
    assert [r.to_dict() for r in remote_results] == [r.to_dict() for r in local_results]
    weights = {abs(c.weight) for r in remote_results for c in r.explanation.contributions}
    assert weights - {1.0}  # real weights, not ±1


def test_connect_reports_unreachable_and_unknown_models_in_one_line(server):
    with pytest.raises(qsenn_runtime.BackendError, match="HTTP 404: unknown model 'nope'") as exc:
        qsenn_runtime.connect(server.url, model="nope")
    assert "\n" not in str(exc.value)
    with pytest.raises(qsenn_runtime.BackendError, match="cannot reach http://127.0.0.1:9"):
        qsenn_runtime.connect("127.0.0.1:9", model="toy")


def test_cli_predict_url_matches_the_local_file(server, files, capsys):
    code, remote_out, err = run_cli(
        capsys, "predict", "--url", server.url, "--model", "toy", files / "a.png", files / "b.png", "--json"
    )
    assert code == 0, err
    code, local_out, _ = run_cli(capsys, "predict", files / "toy.onnx", files / "a.png", files / "b.png", "--json")
    assert json.loads(remote_out) == json.loads(local_out)
    code, _, err = run_cli(capsys, "predict", "--url", server.url, files / "a.png")
    assert code == 2 and "--url needs --model NAME" in err
    code, out, err = run_cli(
        capsys, "explain", "--url", server.url, "--model", "toy", files / "a.png", "--out", files / "remote.png"
    )
    assert code == 0 and "explained class" in out, err
    with Image.open(files / "remote.png") as picture:
        assert picture.format == "PNG" and picture.width > 600
    code, _, err = run_cli(capsys, "predict", "--url", server.url, "--model", "ghost", files / "a.png")
    assert code == 2 and err.startswith("error: ") and "unknown model 'ghost'" in err and err.count("\n") == 1


# ---- bad requests: a 4xx each, and the server keeps serving --------------------------------------


def raw(server, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        content = response.read()
    finally:
        connection.close()
    return response.status, json.loads(content) if content else {}


def infer_json(shape, data, datatype="FP32", name="images", **extra) -> bytes:
    return json.dumps(
        {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra}
    ).encode()


def binary_body(x: np.ndarray) -> tuple[bytes, dict]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    ).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def bytes_body(images: list[bytes]) -> tuple[bytes, dict]:
    data = b"".join(len(i).to_bytes(4, "little") + i for i in images)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [len(images)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


GOOD = tensor(1, seed=11)
NAN = GOOD.copy()
NAN[0, 1, 2, 3] = np.nan
BIG_IMAGE = png(4, 200, 120)  # 24,000 pixels > MAX_PIXELS
ZIP_BOMB = gzip.compress(infer_json([1, 3, SIZE, SIZE], [0.0] * 3 * SIZE * SIZE) + b" " * (MAX_BODY * 2))
INFER = "/v2/models/toy/infer"


def _bad_requests():
    """(case, method, path, body, headers, status, words the error must contain)."""
    flat = GOOD.reshape(-1).tolist()
    yield "malformed JSON", "POST", INFER, b'{"inputs": [', {}, 400, "not valid JSON"
    yield "JSON not an object", "POST", INFER, b"[1, 2]", {}, 400, "must be an object"
    yield "no inputs", "POST", INFER, b'{"inputs": []}', {}, 400, "non-empty list"
    yield "wrong shape", "POST", INFER, infer_json([1, 3, 16, 16], [0.5] * 768), {}, 400, "takes [N, 3, 32, 32]"
    yield "wrong datatype", "POST", INFER, infer_json([1, 3, SIZE, SIZE], flat, "FP64"), {}, 400, "must be FP32"
    yield "unknown datatype", "POST", INFER, infer_json([1, 3, SIZE, SIZE], flat, "FP33"), {}, 400, "unknown datatype"
    yield "data count != shape", "POST", INFER, infer_json([2, 3, SIZE, SIZE], flat), {}, 400, "the shape says 6144"
    yield "non-numbers", "POST", INFER, infer_json([1, 3], ["a", "b", "c"]), {}, 400, "not a (nested) list of FP32"
    yield "NaN (JSON)", "POST", INFER, infer_json([1, 3, SIZE, SIZE], [math.nan, *flat[1:]]), {}, 400, "NaN or infinity"
    yield "NaN (binary)", "POST", INFER, *binary_body(NAN), 400, "row 0 contains NaN or infinity"
    body, headers = binary_body(GOOD)
    yield (
        "header length past body",
        "POST",
        INFER,
        body,
        {"Inference-Header-Content-Length": "999999"},
        400,
        "body has only",
    )
    yield "binary size mismatch", "POST", INFER, body[:-4], headers, 400, "runs past the end of the body"
    yield "binary without header", "POST", INFER, body, {}, 400, "Inference-Header-Content-Length"
    doubles = GOOD.astype(np.float64)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": list(doubles.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": doubles.nbytes},
                }
            ]
        }
    ).encode()
    yield (
        "FP64 bytes sent as FP32",
        "POST",
        INFER,
        header + doubles.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
        400,
        "3072 FP32 values of the shape need 12288",
    )
    yield (
        "two inputs",
        "POST",
        INFER,
        json.dumps(
            {
                "inputs": [
                    json.loads(infer_json([1, 3, SIZE, SIZE], flat))["inputs"][0],
                    json.loads(infer_json([1], ["x"], "BYTES", "image_bytes"))["inputs"][0],
                ]
            }
        ).encode(),
        {},
        400,
        "takes one input",
    )
    yield (
        "unknown input",
        "POST",
        INFER,
        infer_json([1, 3, SIZE, SIZE], flat, name="pixels"),
        {},
        400,
        "takes one input",
    )
    yield (
        "unknown output",
        "POST",
        INFER,
        infer_json([1, 3, SIZE, SIZE], flat, outputs=[{"name": "saliency"}]),
        {},
        400,
        "no output 'saliency'",
    )
    yield (
        "unknown class",
        "POST",
        INFER,
        infer_json([1, 3, SIZE, SIZE], flat, parameters={"explain_classes": "heron"}),
        {},
        400,
        "unknown class 'heron'",
    )
    yield (
        "explain not a bool",
        "POST",
        INFER,
        infer_json([1, 3, SIZE, SIZE], flat, parameters={"explain": "yes"}),
        {},
        400,
        "true or false",
    )
    yield "too many images", "POST", INFER, *binary_body(tensor(MAX_BATCH + 1)), 400, f"takes 1 to {MAX_BATCH}"
    yield "corrupt image bytes", "POST", INFER, *bytes_body([png(1)[:200]]), 400, "image_bytes[0]: corrupt or truncated"
    yield "not an image", "POST", INFER, *bytes_body([b"hello"]), 400, "image_bytes[0]: not an image"
    yield "image over the pixel limit", "POST", INFER, *bytes_body([BIG_IMAGE]), 400, "decompression-bomb guard"
    yield "bytes as images", "POST", INFER, infer_json([1], ["x"], "BYTES"), {}, 400, "must be FP32"
    yield "body too large", "POST", INFER, b" " * (MAX_BODY + 1), {}, 413, f"limit of {MAX_BODY:,} bytes"
    yield "gzip bomb", "POST", INFER, ZIP_BOMB, {"Content-Encoding": "gzip"}, 413, "decompressed body exceeds"
    yield (
        "corrupt gzip",
        "POST",
        INFER,
        b"\x1f\x8b garbage",
        {"Content-Encoding": "gzip"},
        400,
        "cannot be decompressed",
    )
    yield "unknown encoding", "POST", INFER, body, {"Content-Encoding": "br"}, 415, "not supported"
    yield "unknown model", "POST", "/v2/models/heron/infer", body, headers, 404, "unknown model 'heron'"
    yield "unknown version", "POST", "/v2/models/toy/versions/2/infer", body, headers, 404, "no version '2'"
    yield "unknown endpoint", "GET", "/v3/anything", b"", {}, 404, "no endpoint /v3/anything"
    yield "wrong method", "GET", INFER, b"", {}, 405, "GET is not allowed"


BAD_REQUESTS = list(_bad_requests())


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_its_status_and_the_server_keeps_serving(server, client, local, case):
    _, method, path, body, headers, status, words = case
    code, answer = raw(server, method, path, body, headers)
    assert code == status, answer
    assert words in answer["error"], answer
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
    after = client.infer("toy", [images_input(GOOD, True)]).as_numpy("logits")
    assert np.array_equal(after, np.array([local.predict_tensor(GOOD)[0].logits], np.float32))


def test_tritonclient_sees_the_error_and_its_status(client):
    wrong = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("toy", [images_input(wrong, True)])
    assert exc.value.status() == "400" and "takes [N, 3, 32, 32]" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("heron")
    assert exc.value.status() == "404"


def test_bad_requests_leak_no_memory(server, client, local):
    """300 refused requests of every kind: the server's resident memory stays put."""
    for case in BAD_REQUESTS * 2:  # warm-up: allocator pools, first-use imports
        raw(server, *case[1:5])
    before = server.rss_mib()
    for i in range(300):
        raw(server, *BAD_REQUESTS[i % len(BAD_REQUESTS)][1:5])
    growth = server.rss_mib() - before
    assert growth < 8, f"RSS grew {growth:.1f} MiB over 300 bad requests"
    assert client.is_server_ready()


# ---- token, timeout, drain, command line ----------------------------------------------------------


def test_bearer_token(files, capsys):
    with ServeProcess(files / "toy.onnx", "--token-file", files / "token") as server:
        code, answer = raw(server, "GET", "/v2/models/toy")
        assert code == 401 and "bearer token" in answer["error"]
        code, answer = raw(server, "GET", "/v2/models/toy", headers={"Authorization": "Bearer wrong"})
        assert code == 401 and "not valid" in answer["error"]
        assert raw(server, "GET", "/v2/health/ready")[0] == 200  # probes carry no token
        with triton.InferenceServerClient(server.address) as c:
            auth = {"Authorization": "Bearer s3cret-token"}
            assert c.infer("toy", [images_input(GOOD, True)], headers=auth).as_numpy("logits").shape == (1, 5)
            with pytest.raises(InferenceServerException) as exc:
                c.infer("toy", [images_input(GOOD, True)])
            assert exc.value.status() == "401"
        code, out, err = run_cli(
            capsys, "predict", "--url", server.url, "--model", "toy", "--token-file", files / "token", files / "a.png"
        )
        assert code == 0 and "a.png" in out, err
        code, _, err = run_cli(capsys, "predict", "--url", server.url, "--model", "toy", files / "a.png")
        assert code == 2 and "HTTP 401" in err


def test_request_timeout_is_503_and_the_next_request_is_served(files, local):
    """A lone request waits for a batch partner longer than --timeout allows: 503. A request that
    fills the batch leaves at once."""
    with (
        ServeProcess(files / "toy.onnx", "--batch-window-ms", "3000", "--max-batch", "2", "--timeout", "0.5") as server,
        triton.InferenceServerClient(server.address) as c,
    ):
        began = time.perf_counter()
        with pytest.raises(InferenceServerException) as exc:
            c.infer("toy", [images_input(GOOD, True)])
        assert exc.value.status() == "503" and "--timeout" in exc.value.message()
        assert time.perf_counter() - began < 2.5
        pair = tensor(2, seed=12)
        logits = c.infer("toy", [images_input(pair, True)]).as_numpy("logits")
        assert np.array_equal(logits, np.array([p.logits for p in local.predict_tensor(pair)], np.float32))


def test_sigterm_drains_the_requests_in_flight(files, local):
    """Requests waiting in a long batching window when SIGTERM arrives are still answered, and
    exactly; new connections are refused meanwhile; the server then exits 0."""
    server = ServeProcess(files / "toy.onnx", "--batch-window-ms", "1500")
    inputs = [tensor(1, seed=20 + i) for i in range(3)]
    answers: dict[int, np.ndarray] = {}

    def request(i: int) -> None:
        with triton.InferenceServerClient(server.address, network_timeout=30) as c:
            answers[i] = c.infer("toy", [images_input(inputs[i], True)]).as_numpy("logits")

    try:
        threads = [threading.Thread(target=request, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # all three wait in the window
        server.terminate()
        time.sleep(0.4)
        with pytest.raises(ConnectionRefusedError):
            http.client.HTTPConnection("127.0.0.1", server.port, timeout=5).connect()
        for thread in threads:
            thread.join(30)
        code = server.stop()
    finally:
        server.kill()
    assert code == 0, server.output
    assert sorted(answers) == [0, 1, 2]
    for i, logits in answers.items():
        assert np.array_equal(logits, np.array([local.predict_tensor(inputs[i])[0].logits], np.float32))
    assert "stopping: no new connections; answering the requests in flight" in server.output
    assert server.lines[-1] == "stopped: 3 requests answered, 0 refused"


def test_serve_command_line_errors_are_one_line(files, capsys):
    code, _, err = run_cli(capsys, "serve", files / "toy.onnx", files / "toy.onnx")
    assert code == 2 and "two models are named 'toy'; tell them apart with --name" in err
    code, _, err = run_cli(capsys, "serve", files / "toy.onnx", "--name", "a/b")
    assert code == 2 and "model name 'a/b'" in err
    code, _, err = run_cli(capsys, "serve", files / "a.png")
    assert code == 2 and err.startswith("error: ") and "neither an ONNX model" in err and err.count("\n") == 1
    with ServeProcess(files / "toy.onnx") as running:
        code, _, err = run_cli(capsys, "serve", files / "toy.onnx", "--port", running.port)
        assert code == 2 and f"cannot listen on 127.0.0.1:{running.port}" in err and err.count("\n") == 1


def test_a_model_that_breaks_the_identity_is_refused_at_start(files, capsys):
    metadata = toy_metadata(num_classes=5, num_features=7, size=SIZE)
    save_toy_model(files / "broken.onnx", metadata, graph_bias=metadata.bias + 1)
    code, out, err = run_cli(capsys, "serve", files / "broken.onnx", "--port", 0)
    assert code == 2 and "contributions plus bias sum to" in err and err.count("\n") == 1
    assert "listening" not in out


def test_serve_without_the_extra_names_it(files):
    code = (
        "import sys; sys.modules['uvicorn'] = None; "
        f"sys.argv = ['qsenn', 'serve', {str(files / 'toy.onnx')!r}]; import cli; cli.main()"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert (
        result.stderr
        == "error: qsenn serve needs starlette and uvicorn (uvicorn is missing): pip install 'qsenn[serve]'\n"
    )


def test_the_server_and_the_client_never_import_torch_and_the_client_no_server_stack(files):
    code = f"""
import sys
import qsenn_runtime.remote, qsenn_runtime.serving.endpoint
assert 'starlette' not in sys.modules and 'uvicorn' not in sys.modules, 'the client imported the server stack'
import qsenn_runtime
from qsenn_runtime.serving.app import InferenceService
from qsenn_runtime.serving.endpoint import ServedModel, ServingLimits
model = qsenn_runtime.load({str(files / "toy.onnx")!r})
InferenceService({{"toy": ServedModel("toy", model, ServingLimits())}}, ServingLimits()).app()
assert 'torch' not in sys.modules, 'serving imported torch'
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
