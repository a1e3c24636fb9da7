"""Depthwise Conv1d and Conv2d lowered to our stencil kernel (`pipeline/passes/depthwise_conv.py`)
and scheduled for the CPU: every attribute combination equals onnxruntime and the float64 numpy
reference; the elementwise chain FuseOps puts after it runs inside its one parallel loop; what we do
not rewrite keeps TVM's lowering and says so."""

import logging

import numpy as np
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from tvm import relax

from pipeline import reference
from pipeline.build import build
from pipeline.passes.default_cpu_schedule import STENCIL_ROWS
from pipeline.passes.depthwise_conv import DepthwiseConv
from pipeline.runtime import load

from .conftest import (
    DEPTHWISE_CONV_CASES,
    batchnorm_relu_model,
    conv_model,
    cpu_scheduled,
    onnx_file_build_options,
    tir_loops,
    unrolled_extents,
)


def _build_and_compare(tmp_path, schedules, model, expected_of) -> None:
    path = tmp_path / "depthwise.onnx"
    path.write_bytes(model.SerializeToString())
    result = build(onnx_file_build_options(path, tmp_path / "out", schedules))
    assert result.passed, result.manifest.verification  # against onnxruntime
    artifact = load(result.artifact)
    x = np.random.default_rng(1).standard_normal(artifact.inputs[0].shape).astype(np.float32)
    expected = expected_of(x)
    got = artifact(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def _scheduled_kernels(model) -> dict:
    scheduled = cpu_scheduled(model)
    return {gv.name_hint: f for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def _compare_case(tmp_path, schedules, x_shape, cout, kernel, attrs) -> None:
    model, weight, bias = conv_model(x_shape, cout, kernel, attrs)
    _build_and_compare(tmp_path, schedules, model, lambda x: reference.conv(x, weight, bias, **attrs))


@pytest.mark.parametrize("name", sorted(DEPTHWISE_CONV_CASES))
def test_depthwise_conv_through_our_stencil_equals_onnxruntime_and_numpy(name, tmp_path, empty_schedules):
    x_shape, cout, kernel, attrs = DEPTHWISE_CONV_CASES[name]
    kernels = _scheduled_kernels(conv_model(x_shape, cout, kernel, attrs)[0])
    assert [name for name in kernels if "conv_depthwise" in name] == ["fused_conv_depthwise_add"]
    assert not [name for name in kernels if "gemm" in name]
    _compare_case(tmp_path, empty_schedules, x_shape, cout, kernel, attrs)


@st.composite
def depthwise_cases(draw):
    rank = draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 5)) for _ in range(rank)]
    strides = [draw(st.integers(1, 3)) for _ in range(rank)]
    dilations = [draw(st.integers(1, 2)) for _ in range(rank)]
    pads = [draw(st.integers(0, k - 1)) for k in kernel * 2]
    # Sizes that leave at least one output along each axis.
    sizes = [
        draw(st.integers(max(1, (k - 1) * d + 1 - pads[a] - pads[rank + a]), 20))
        for a, (k, d) in enumerate(zip(kernel, dilations))
    ]
    channels = draw(st.integers(1, 4))
    attrs = {"group": channels, "strides": strides, "dilations": dilations, "pads": pads}
    return (draw(st.integers(1, 2)), channels, *sizes), channels * draw(st.integers(1, 2)), tuple(kernel), attrs


@settings(max_examples=15, deadline=None)
@given(case=depthwise_cases())
def test_random_depthwise_conv_equals_onnxruntime_and_numpy(case, tmp_path_factory, empty_schedules):
    _compare_case(tmp_path_factory.mktemp("depthwise"), empty_schedules, *case)


def _depthwise_batchnorm_relu_model():
    """Depthwise 3 x 3 Conv2d (no bias), BatchNormalization, Relu, and what they compute."""
    weight = np.random.default_rng(1).standard_normal((4, 1, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["c"], group=4, pads=[1, 1, 1, 1])
    model, channels = batchnorm_relu_model(node, weight, (1, 4, 9, 20), (1, 4, 9, 20))
    scale, bias, mean, var = (c.reshape(1, 4, 1, 1).astype(np.float64) for c in channels)

    def expected(x):
        conv = reference.conv(x, weight, pads=[1, 1, 1, 1], group=4)
        return np.maximum((conv - mean) / np.sqrt(var + 1e-5) * scale + bias, 0)

    return model, expected


def test_a_depthwise_kernel_runs_its_whole_fused_chain_in_its_parallel_loop(tmp_path, empty_schedules):
    model, expected = _depthwise_batchnorm_relu_model()
    ((name, kernel),) = [(name, f) for name, f in _scheduled_kernels(model).items() if "conv_depthwise" in name]
    assert "divide" in name and "relu" in name
    outermost = [loop for loop in tir_loops(kernel) if loop.kind == tvm.tirx.ForKind.PARALLEL]
    assert len(outermost) == 1
    assert len(tir_loops(kernel)) == len(tir_loops(kernel.with_body(outermost[0])))  # no loop outside it
    _build_and_compare(tmp_path, empty_schedules, model, expected)


def test_a_depthwise_conv_in_another_layout_keeps_tvms_lowering_and_says_why(caplog):
    x = relax.Var("x", relax.TensorType((1, 6, 6, 4), "float32"))
    w = relax.Var("w", relax.TensorType((4, 1, 3, 3), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x, w]):
        builder.emit_func_output(builder.emit(relax.op.nn.conv2d(x, w, groups=4, data_layout="NHWC")))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        kept = DepthwiseConv()(builder.get())
    assert "depthwise conv does not apply to relax.nn.conv2d: layout NHWC/OIHW" in caplog.text
    assert "R.nn.conv2d" in kept["main"].script()


def test_a_tall_stencil_accumulates_two_output_rows_per_run():
    """Its kernel rows and columns and the run's two rows unrolled, so the taps of both rows share
    their input loads; a 3 x 3 stencil keeps one row and unrolls only its columns."""
    for name, tall in (("2d_7x7", True), ("2d_3x3", False)):
        x_shape, cout, kernel, attrs = DEPTHWISE_CONV_CASES[name]
        unrolled = unrolled_extents(cpu_scheduled(conv_model(x_shape, cout, kernel, attrs)[0]), "conv_depthwise")
        assert (unrolled.count(kernel[0]) >= 2 and STENCIL_ROWS in unrolled) == tall, (name, unrolled)
