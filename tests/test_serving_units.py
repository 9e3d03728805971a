"""The serving building blocks without a server: the protocol codec and the dynamic batcher."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qsenn_runtime.serving.batcher import DynamicBatcher
from qsenn_runtime.serving.protocol import (
    DATATYPES,
    HEADER_LENGTH,
    InferResponse,
    ProtocolError,
    RequestedOutput,
    Tensor,
    encode_infer_request,
    encode_infer_response,
    parse_infer_request,
    parse_infer_response,
)

# ---- protocol --------------------------------------------------------------------------------

NUMERIC = st.sampled_from([d for d in DATATYPES.values()])
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4)


@settings(max_examples=150, deadline=None)
@given(
    arrays=st.lists(NUMERIC.flatmap(lambda dtype: hnp.arrays(dtype, SHAPES)), min_size=1, max_size=3),
    binary=st.booleans(),
)
def test_numeric_tensors_round_trip_exactly(arrays, binary):
    """Every datatype, in binary and in JSON (JSON has no NaN or infinity: those go binary only)."""
    if not binary:
        arrays = [np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0) if a.dtype.kind == "f" else a for a in arrays]
    tensors = [Tensor.of(f"t{i}", a) for i, a in enumerate(arrays)]
    body, length = encode_infer_request(tensors, binary=binary)
    assert (length is None) == (not binary)
    request = parse_infer_request(body, None if length is None else str(length))
    for sent, got in zip(tensors, request.inputs):
        assert (got.name, got.datatype, got.shape) == (sent.name, sent.datatype, sent.shape)
        assert got.data.dtype == sent.data.dtype and np.array_equal(got.data, sent.data, equal_nan=True)


@settings(max_examples=100, deadline=None)
@given(elements=st.lists(st.binary(max_size=40), max_size=6))
def test_bytes_tensors_round_trip_in_binary(elements):
    body, length = encode_infer_request([Tensor.of_bytes("b", elements)])
    (got,) = parse_infer_request(body, str(length)).inputs
    assert got.data == tuple(elements) and got.shape == (len(elements),)


def test_response_round_trip_mixes_binary_and_json():
    logits = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    response = InferResponse(
        "toy", (Tensor.of("logits", logits), Tensor.of_bytes("class_name", [b"wren", b"crow"])), "1", "req-7"
    )
    for binary in ([True, True], [False, False], [True, False]):
        body, length = encode_infer_response(response, binary)
        parsed = parse_infer_response(body, None if length is None else str(length))
        assert (parsed.model_name, parsed.model_version, parsed.id) == ("toy", "1", "req-7")
        assert np.array_equal(parsed.output("logits").data, logits)  # JSON floats round-trip float32 exactly
        assert parsed.output("class_name").data == (b"wren", b"crow")


def test_requested_outputs_and_parameters_are_read():
    x = Tensor.of("images", np.zeros((1, 3, 2, 2), np.float32))
    body, length = encode_infer_request(
        [x], [RequestedOutput("logits", binary=False, parameters={"classification": 2})], {"explain": True}
    )
    request = parse_infer_request(body, str(length))
    assert request.parameters == {"explain": True} and not request.binary_output
    assert request.outputs == (RequestedOutput("logits", False, {"classification": 2, "binary_data": False}),)
    assert (
        parse_infer_request(
            json.dumps({"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [1]}]}).encode(), None
        ).outputs
        is None
    )


def entry(**fields) -> dict:
    return {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0], **fields}


@pytest.mark.parametrize(
    "header, binary, length, words",
    [
        ({"inputs": [entry(datatype=["FP32"])]}, b"", None, "unknown datatype ['FP32']"),
        ({"inputs": [entry(shape=[2, -1])]}, b"", None, "non-negative integers"),
        ({"inputs": [entry(shape=[True, 2])]}, b"", None, "non-negative integers"),
        ({"inputs": [entry(name="")]}, b"", None, 'has no "name"'),
        ({"inputs": [entry(data=[[1.0], [2.0, 3.0]])]}, b"", None, "not a (nested) list"),
        ({"inputs": [entry(), entry()]}, b"", None, "names an input twice"),
        ({"inputs": [entry(parameters={"binary_data_size": 8})]}, b"\0" * 8, "auto", 'both "data" and'),
        ({"inputs": [entry(parameters={"binary_data_size": -1})]}, b"", "auto", "non-negative integer"),
        ({"inputs": [entry(parameters="x")]}, b"", None, '"parameters" of'),
        ({"inputs": [entry()]}, b"junk", "auto", "no input claims them"),
        (
            {"inputs": [{"name": "b", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 8}}]},
            b"\x02\0\0\0ab\x01\0",
            "auto",
            "cut off inside its 4-byte length",
        ),
        (
            {"inputs": [{"name": "b", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]},
            b"\x09\0\0\0ab",
            "auto",
            "claims 9 bytes",
        ),
        ({"inputs": [{"name": "b", "datatype": "BYTES", "shape": [1], "data": [1]}]}, b"", None, "must hold strings"),
    ],
)
def test_malformed_requests_are_one_line_400s(header, binary, length, words):
    text = json.dumps(header).encode()
    with pytest.raises(ProtocolError) as exc:
        parse_infer_request(text + binary, str(len(text)) if length == "auto" else length)
    assert exc.value.status == 400 and words in str(exc.value) and "\n" not in str(exc.value)


def test_deeply_nested_json_is_refused_not_crashed():
    with pytest.raises(ProtocolError, match="nested too deeply"):
        parse_infer_request(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None)
    assert HEADER_LENGTH == "Inference-Header-Content-Length"


# ---- dynamic batcher -------------------------------------------------------------------------


class RecordingRun:
    """A backend stand-in: doubles the rows, records each call's size and how many overlap."""

    def __init__(self, seconds: float = 0.0, fail_on: float | None = None):
        self.sizes: list[int] = []
        self.seconds = seconds
        self.fail_on = fail_on
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def __call__(self, rows: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            self.sizes.append(len(rows))
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            time.sleep(self.seconds)
            if self.fail_on is not None and (rows == self.fail_on).any():
                raise RuntimeError("backend failed")
            return [rows * 2, rows.sum(axis=1)]
        finally:
            with self._lock:
                self.active -= 1


def rows(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 3), value, dtype=np.float32)


def run_async(coroutine_function, batcher: DynamicBatcher):
    async def main():
        await batcher.start()
        try:
            return await coroutine_function()
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concurrent_requests_share_one_call_and_get_their_own_rows_back():
    run = RecordingRun()
    batcher = DynamicBatcher(run, max_batch=16, window_s=0.05)
    inputs = [rows(i, 1 + i % 3) for i in range(6)]

    async def main():
        return await asyncio.gather(*(batcher.submit(x) for x in inputs))

    results = run_async(main, batcher)
    assert run.sizes == [sum(len(x) for x in inputs)]
    for x, (doubled, sums) in zip(inputs, results):
        assert np.array_equal(doubled, x * 2) and np.array_equal(sums, x.sum(axis=1))
    assert batcher.statistics.executions == 1 and batcher.statistics.rows == 12


def test_batches_never_exceed_max_batch_nor_split_a_request():
    run = RecordingRun(seconds=0.01)
    batcher = DynamicBatcher(run, max_batch=4, window_s=0.05)
    inputs = [rows(i, 3 if i % 2 else 2) for i in range(7)]

    async def main():
        return await asyncio.gather(*(batcher.submit(x) for x in inputs))

    results = run_async(main, batcher)
    assert max(run.sizes) <= 4 and sum(run.sizes) == sum(len(x) for x in inputs)
    assert all(np.array_equal(doubled, x * 2) for x, (doubled, _) in zip(inputs, results))
    with pytest.raises(ValueError, match="1 to 4"):
        run_async(lambda: batcher.submit(rows(0, 5)), DynamicBatcher(run, max_batch=4, window_s=0.01))


def test_window_zero_is_one_call_per_request_and_instances_bound_the_overlap():
    run = RecordingRun(seconds=0.02)
    batcher = DynamicBatcher(run, max_batch=8, window_s=0, instances=2)

    async def main():
        return await asyncio.gather(*(batcher.submit(rows(i)) for i in range(6)))

    run_async(main, batcher)
    assert run.sizes == [1] * 6 and run.most_active == 2
    run = RecordingRun(seconds=0.02)
    batcher = DynamicBatcher(run, max_batch=1, window_s=0.01, instances=1)
    run_async(lambda: asyncio.gather(*(batcher.submit(rows(i)) for i in range(4))), batcher)
    assert run.sizes == [1] * 4 and run.most_active == 1


def test_a_failing_call_fails_its_requests_only_and_the_batcher_goes_on():
    run = RecordingRun(fail_on=7.0)
    batcher = DynamicBatcher(run, max_batch=8, window_s=0.03)

    async def main():
        first = await asyncio.gather(batcher.submit(rows(7)), batcher.submit(rows(1)), return_exceptions=True)
        second = await batcher.submit(rows(2))
        return first, second

    (failed, also_failed), (doubled, _) = run_async(main, batcher)
    assert isinstance(failed, RuntimeError) and isinstance(also_failed, RuntimeError)  # they shared the call
    assert np.array_equal(doubled, rows(4))


def test_a_request_that_gave_up_does_not_disturb_the_others():
    run = RecordingRun()
    batcher = DynamicBatcher(run, max_batch=8, window_s=0.1)

    async def main():
        impatient = asyncio.create_task(batcher.submit(rows(5)))
        patient = asyncio.create_task(batcher.submit(rows(6)))
        await asyncio.sleep(0.02)
        impatient.cancel()
        return await patient

    doubled, _ = run_async(main, batcher)
    assert np.array_equal(doubled, rows(12))


def test_load_for_serving_lets_idle_threads_sleep_and_returns_memory(tmp_path):
    """`qsenn serve` loads its models so (--no-spin --no-arena, its defaults): onnxruntime's idle
    threads sleep instead of burning the cores that the event loop and the other requests need,
    and activations are freed after each call instead of kept in an arena."""
    import qsenn_runtime
    from qsenn_bench.testing.toy_onnx import save_toy_model

    save_toy_model(tmp_path / "toy.onnx")
    key = "session.intra_op.allow_spinning"
    sleepy = qsenn_runtime.load(tmp_path / "toy.onnx", spin=False).backend.session.get_session_options()
    assert sleepy.get_session_config_entry(key) == "0"
    default = qsenn_runtime.load(tmp_path / "toy.onnx").backend.session.get_session_options()
    with pytest.raises(RuntimeError):  # not set: onnxruntime's default, spinning
        default.get_session_config_entry(key)
    assert default.enable_cpu_mem_arena
    assert (
        not qsenn_runtime.load(tmp_path / "toy.onnx", arena=False)
        .backend.session.get_session_options()
        .enable_cpu_mem_arena
    )


def test_each_instance_runs_on_a_session_of_its_own(tmp_path):
    """`qsenn serve --instances 2` (one session per instance, its default): concurrent calls run on
    different backend sessions, never two at once on one, and each gets its own rows' outputs."""
    import qsenn_runtime
    from qsenn_bench.testing.toy_onnx import save_toy_model
    from qsenn_runtime.serving.endpoint import ServedModel, ServingLimits

    save_toy_model(tmp_path / "toy.onnx")
    instances = [qsenn_runtime.load(tmp_path / "toy.onnx", threads=1) for _ in range(2)]
    assert instances[0].backend.session is not instances[1].backend.session
    active: dict[int, int] = {}
    used, overlaps, lock = set(), [], threading.Lock()

    def watched(instance):
        original = instance.run_backend

        def run_backend(batch, names):
            with lock:
                active[id(instance)] = active.get(id(instance), 0) + 1
                overlaps.append(active[id(instance)])
                used.add(id(instance))
            time.sleep(0.03)  # long enough for the other call to start meanwhile
            try:
                return original(batch, names)
            finally:
                with lock:
                    active[id(instance)] -= 1

        instance.run_backend = run_backend

    for instance in instances:
        watched(instance)
    limits = ServingLimits(batch_window_ms=0, instances=2)
    served = ServedModel("toy", instances[0], limits, instances[1:])
    size = instances[0].metadata.input.size
    images = [np.full((1, 3, size, size), i / 8, dtype=np.float32) for i in range(8)]

    async def main():
        return await asyncio.gather(*(served.batcher.submit(x) for x in images))

    results = run_async(main, served.batcher)
    assert used == {id(i) for i in instances} and max(overlaps) == 1
    for x, (logits, *_rest) in zip(images, results):
        (expected, *_) = instances[0].backend.run(x, ("logits",))
        np.testing.assert_allclose(logits, expected, rtol=1e-5)
