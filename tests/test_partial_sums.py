"""The CPU GEMMs sum long reductions in chunks (`_partial_sums` in
pipeline/passes/default_cpu_schedule.py): the fp32 result moves closer to float64 than one running
sum over every product, and still matches onnxruntime."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline import reference
from pipeline.build import BuildOptions, build
from pipeline.graphs import IR_VERSION, OPSET, GraphSelection
from pipeline.passes import default_cpu_schedule
from pipeline.runtime import load

# op: (input channels, output channels, kernel, attributes, output positions per input position,
# reference); 7168 and 2048 products per output.
CASES = {
    "Conv": (1024, 16, 7, {"pads": [3, 3]}, 1, reference.conv),
    "ConvTranspose": (2048, 16, 4, {"strides": [2], "pads": [1, 1]}, 2, reference.conv_transpose),
}


def _model(op: str, length: int) -> tuple:
    cin, cout, kernel, attrs, upsampling, _ = CASES[op]
    rng = np.random.default_rng(3)
    shape = (cout, cin, kernel) if op == "Conv" else (cin, cout, kernel)
    weight = (rng.standard_normal(shape) / np.sqrt(cin * kernel)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"], **attrs)], op.lower(),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, upsampling * length])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION), weight


def _rms_error_against_float64(op: str, length: int, out, schedules) -> float:
    model, weight = _model(op, length)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{op}.onnx"
    path.write_bytes(model.SerializeToString())
    result = build(BuildOptions(GraphSelection(onnx=path), out=out, schedules=schedules, timing_repeats=1))
    assert result.passed, result.manifest.verification
    x = np.random.default_rng(4).standard_normal((1, CASES[op][0], length)).astype(np.float32)
    expected = CASES[op][5](x, weight, **CASES[op][3])
    error = load(result.artifact)(x).astype(np.float64) - expected
    return float(np.sqrt(np.mean(error**2) / np.mean(expected**2)))


@pytest.mark.parametrize("op", sorted(CASES))
def test_chunked_sums_are_closer_to_float64_than_one_sum(op, tmp_path, empty_schedules, monkeypatch):
    chunked = _rms_error_against_float64(op, 64, tmp_path / "chunked", empty_schedules)
    monkeypatch.setattr(default_cpu_schedule, "PARTIAL_SUM_TERMS", 1 << 30)
    one_sum = _rms_error_against_float64(op, 64, tmp_path / "one_sum", empty_schedules)
    # Expected from sqrt(b) + sqrt(n / b) against sqrt(n): 0.25 for Conv, 0.42 for ConvTranspose.
    assert chunked < 0.7 * one_sum, (chunked, one_sum)


@pytest.mark.parametrize("op", sorted(CASES))
def test_chunked_sums_over_one_position(op, tmp_path, empty_schedules):
    """One input position: the chunk's register tile has no column loop."""
    assert _rms_error_against_float64(op, 1, tmp_path, empty_schedules) < 5e-7
