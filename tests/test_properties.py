"""Property-based: random valid ConvTranspose attributes and shapes, our build against onnxruntime
and the numpy reference (the same check as each conformance case); random Conv1d likewise."""

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from pipeline.build import build
from pipeline.conformance import ConformanceCase, ConformanceOptions, check_case
from pipeline.graphs import IR_VERSION, OPSET
from pipeline.runtime import load
from pipeline.target import resolve_target

from .conftest import onnx_file_build_options


@st.composite
def conv_transpose_cases(draw):
    rank = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 2, 3]))
    cin = group * draw(st.integers(1, 3))
    cout_per_group = draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 5)) for _ in range(rank)]
    strides = [draw(st.integers(1, 4)) for _ in range(rank)]
    dilations = [draw(st.integers(1, 3)) for _ in range(rank)]
    sizes = [draw(st.integers(1, 7)) for _ in range(rank)]
    # output_padding must stay below the stride (ONNX allows up to the dilation too; we refuse that,
    # see the conformance table); pads must leave at least one output.
    output_padding = [draw(st.integers(0, s - 1)) for s in strides]
    full = [(n - 1) * s + (k - 1) * d + 1 + p for n, s, k, d, p in zip(sizes, strides, kernel, dilations, output_padding)]
    begin = [draw(st.integers(0, (f - 1) // 2)) for f in full]
    end = [draw(st.integers(0, f - 1 - b)) for f, b in zip(full, begin)]
    attrs = dict(strides=strides, dilations=dilations, pads=begin + end, output_padding=output_padding, group=group)
    return ConformanceCase(
        "drawn", (draw(st.integers(1, 2)), cin, *sizes), (cin, cout_per_group, *kernel), attrs, draw(st.booleans())
    )


@settings(max_examples=25, deadline=None)
@given(case=conv_transpose_cases())
def test_random_conv_transpose_equals_onnxruntime(case, tmp_path_factory, empty_schedules):
    out = tmp_path_factory.mktemp("drawn")  # hypothesis runs many examples in one test call
    result = check_case(case, ConformanceOptions(out=out, schedules=empty_schedules), resolve_target("cpu"))
    assert result.status == "✓", (case, result)
    assert result.lowering == "zero-waste"


def _conv1d_reference(x: np.ndarray, w: np.ndarray, stride: int, dilation: int, pads: list[int], group: int):
    """float64 Conv1d, written out over taps: y[n, o, t] = sum_{c, k} x[n, c, t*stride + k*dilation] w[o, c, k]."""
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0), pads])
    cout, cin_per_group, kernel = w.shape
    length = (x.shape[2] - (kernel - 1) * dilation - 1) // stride + 1
    y = np.zeros((x.shape[0], cout, length))
    per_group = cout // group
    for o in range(cout):
        g = o // per_group
        for k in range(kernel):
            taps = x[:, g * cin_per_group:(g + 1) * cin_per_group, k * dilation:][:, :, : (length - 1) * stride + 1 : stride]
            y[:, o] += np.einsum("nct,c->nt", taps, w[o, :, k].astype(np.float64))
    return y


@st.composite
def conv1d_cases(draw):
    """Shapes that reach the CPU GEMM's branches: wide panels with a halo (thousands of positions,
    "same" padding keeping them whole vectors), weights streamed over few positions (many channels,
    few positions), strides, groups, dilations, uneven pads."""
    few_positions = draw(st.booleans())
    group = draw(st.sampled_from([1, 1, 2]))
    cin = group * draw(st.sampled_from([2, 8, 24]) if not few_positions else st.sampled_from([128, 256]))
    cout = group * draw(st.sampled_from([2, 8, 16]) if not few_positions else st.sampled_from([64, 128]))
    kernel, dilation, stride = draw(st.integers(1, 7)), draw(st.integers(1, 9)), draw(st.sampled_from([1, 1, 2, 3]))
    reach = (kernel - 1) * dilation + 1
    length = draw(st.integers(4, 64) if few_positions else st.sampled_from([1024, 2048, 4096]))
    if stride == 1 and draw(st.booleans()):  # "same" padding: as many positions out as in
        begin = draw(st.integers(0, reach - 1))
        pads = [begin, reach - 1 - begin]
    else:
        pads = [draw(st.integers(0, reach - 1)), draw(st.integers(0, reach - 1))]
    if length + sum(pads) < reach:
        pads[1] += reach - length - sum(pads)
    return draw(st.integers(1, 2)), cin, cout, kernel, dilation, stride, length, pads, group


@settings(max_examples=16, deadline=None)
@given(case=conv1d_cases())
@example(case=(1, 24, 16, 7, 3, 1, 4096, [9, 9], 1))  # wide panels, a halo of 18 (16 subpanels on 2 cores)
@example(case=(2, 256, 128, 7, 9, 1, 8, [27, 27], 1))  # 8 positions: the weight streamed, 2 row tiles
def test_random_conv1d_equals_onnxruntime_and_numpy(case, tmp_path_factory, empty_schedules):
    batch, cin, cout, kernel, dilation, stride, length, pads, group = case
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((cout, cin // group, kernel)) / np.sqrt(cin // group * kernel)).astype(np.float32)
    out_length = (length + sum(pads) - (kernel - 1) * dilation - 1) // stride + 1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], dilations=[dilation], pads=pads, strides=[stride], group=group)],
        "drawn_conv1d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, cout, out_length])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    out = tmp_path_factory.mktemp("drawn_conv1d")  # hypothesis runs many examples in one test call
    path = out / "conv1d.onnx"
    path.write_bytes(model.SerializeToString())
    result = build(onnx_file_build_options(path, out / "artifacts", empty_schedules))
    assert result.passed, (case, result.manifest.verification)
    x = rng.standard_normal((batch, cin, length)).astype(np.float32)
    ours = load(result.artifact)(x)
    reference = _conv1d_reference(x, w, stride, dilation, pads, group)
    assert np.abs(ours - reference).max() <= 1e-5 + 1e-4 * np.abs(reference).max(), case
