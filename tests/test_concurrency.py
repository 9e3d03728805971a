"""One loaded model, 8 threads × 500 calls of mixed good and bad inputs: no unexpected error,
every answer bitwise equal to the sequential one, memory flat (`pytest -s` prints the figures)."""

import pytest

import qsenn_runtime
from qsenn_bench.testing import concurrency as concurrent_serving
from qsenn_bench.testing.toy_onnx import save_toy_model

pytestmark = pytest.mark.slow


def test_concurrent_predictions_match_the_sequential_ones(tmp_path):
    save_toy_model(tmp_path / "toy.onnx")
    model = qsenn_runtime.load(tmp_path / "toy.onnx")
    report = concurrent_serving.serve(model, concurrent_serving.mixed_inputs(tmp_path), threads=8, per_thread=500)
    print(report.line())
    assert report.unexpected == []
    assert report.mismatches == 0
    assert report.served >= 8 * 500 and report.good > 0 and report.bad > 0
    # Flat: after the warm-up, the second half of the run adds (almost) nothing.
    assert report.rss_end_mib - report.rss_middle_mib < 8, report.line()
    assert report.growth_mib < 32, report.line()
