"""Conv2d, Conv1d and grouped Conv1d and Conv2d, lowered to our GEMM (`pipeline/passes/conv_gemm.py`):
every attribute combination we rewrite equals onnxruntime and the float64 numpy reference."""


import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline import reference
from pipeline.build import build
from pipeline.importer import import_onnx
from pipeline.lowering import lower
from pipeline.passes.conv_gemm import POSITION_MULTIPLE, _grid, _RowLayout
from pipeline.runtime import load
from pipeline.target import resolve_target

from .conftest import CONV2D_CASES, GROUPED_CONV_CASES, conv_model, onnx_file_build_options


def _build_and_compare(tmp_path, schedules, x_shape, cout, kernel, attrs) -> None:
    model, weight, bias = conv_model(x_shape, cout, kernel, attrs)
    path = tmp_path / "conv.onnx"
    path.write_bytes(model.SerializeToString())
    result = build(onnx_file_build_options(path, tmp_path / "out", schedules))
    assert result.passed, result.manifest.verification  # against onnxruntime
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    expected = reference.conv(x, weight, bias, **attrs)
    got = load(result.artifact)(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def _rewritten_convolutions(model) -> int:
    """How many conv_gemm kernels the model has, lowered for this CPU."""
    kernels = lower(import_onnx(model).mod, resolve_target("cpu")).main.functions
    return sum("conv_gemm" in gv.name_hint for gv in kernels)


# Every case our GEMM takes, named by kind.
GEMM_CASES = {
    f"{kind}-{name}": case
    for kind, cases in (("conv2d", CONV2D_CASES), ("grouped", GROUPED_CONV_CASES))
    for name, case in cases.items()
}


@pytest.mark.parametrize("name", sorted(GEMM_CASES))
def test_convolutions_through_our_gemm_equal_onnxruntime_and_numpy(name, tmp_path, empty_schedules):
    x_shape, cout, kernel, attrs = GEMM_CASES[name]
    assert _rewritten_convolutions(conv_model(x_shape, cout, kernel, attrs)[0]) == 1
    _build_and_compare(tmp_path, empty_schedules, x_shape, cout, kernel, attrs)


@st.composite
def conv2d_cases(draw):
    kernel = [draw(st.integers(1, 4)) for _ in range(2)]
    strides = [draw(st.integers(1, 3)) for _ in range(2)]
    dilations = [draw(st.integers(1, 2)) for _ in range(2)]
    pads = [draw(st.integers(0, k - 1)) for k in kernel * 2]
    # Sizes that leave at least one output along each axis.
    sizes = [
        draw(st.integers(max(1, (k - 1) * d + 1 - pads[a] - pads[2 + a]), 12))
        for a, (k, d) in enumerate(zip(kernel, dilations))
    ]
    x_shape = (draw(st.integers(1, 2)), draw(st.integers(1, 5)), *sizes)
    return x_shape, 8 * draw(st.integers(1, 2)), tuple(kernel), {"strides": strides, "dilations": dilations, "pads": pads}


@settings(max_examples=15, deadline=None)
@given(case=conv2d_cases())
def test_random_conv2d_equals_onnxruntime_and_numpy(case, tmp_path_factory, empty_schedules):
    _build_and_compare(tmp_path_factory.mktemp("conv2d"), empty_schedules, *case)


@st.composite
def conv1d_cases(draw):
    """Shapes that reach the CPU GEMM's branches: wide panels with a halo (thousands of positions,
    "same" padding keeping them whole vectors), weights streamed over few positions (many channels,
    few positions), strides, groups, dilations, uneven pads."""
    few_positions = draw(st.booleans())
    group = draw(st.sampled_from([1, 1, 2]))
    cin = group * draw(st.sampled_from([128, 256] if few_positions else [2, 8, 24]))
    cout = group * draw(st.sampled_from([64, 128] if few_positions else [2, 8, 16]))
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
    attrs = {"strides": [stride], "dilations": [dilation], "pads": pads, "group": group}
    return (draw(st.integers(1, 2)), cin, length), cout, (kernel,), attrs


@settings(max_examples=16, deadline=None)
@given(case=conv1d_cases())
# Wide panels with a halo of 18 (16 subpanels on 2 cores); 8 positions, the weight streamed.
@example(case=((1, 24, 4096), 16, (7,), {"dilations": [3], "pads": [9, 9]}))
@example(case=((2, 256, 8), 128, (7,), {"dilations": [9], "pads": [27, 27]}))
def test_random_conv1d_equals_onnxruntime_and_numpy(case, tmp_path_factory, empty_schedules):
    _build_and_compare(tmp_path_factory.mktemp("conv1d"), empty_schedules, *case)


@pytest.mark.parametrize(("rows", "width"), [(128, 130), (9, 13), (1, 1), (7, 31), (33, 17)])
def test_the_gemm_grid_is_whole_vectors_and_as_small_as_can_be(rows, width):
    grid_rows, grid_width = _grid(rows, width)
    assert grid_rows >= rows and grid_width >= width
    assert grid_rows * grid_width % POSITION_MULTIPLE == 0
    assert all(
        r * w % POSITION_MULTIPLE or r * w >= grid_rows * grid_width
        for r in range(rows, grid_rows + 1)
        for w in range(width, grid_width + 1)
    )


def test_the_padded_input_covers_every_read():
    """The GEMM's last position reads its last tap of its last kernel row inside the padded input."""
    for layout in (
        _RowLayout((9, 11), (3, 3), (2, 2), (1, 1), (1, 0, 2, 1)),
        _RowLayout((13, 12), (3, 3), (2, 2), (2, 3), (2, 2, 2, 2)),
        _RowLayout((10, 7), (3, 2), (3, 1), (1, 1), (1, 1, 1, 1)),
    ):
        stride_h, stride_w = layout.strides
        last_row_tap = (layout.kernel[0] - 1) * layout.dilations[0]
        furthest = (
            (layout.positions - 1) * stride_w
            + (layout.kernel[1] - 1) * layout.dilations[1]
            + last_row_tap // stride_h * layout.input_row
        )
        assert furthest < layout.padded_height // stride_h * layout.input_row
        assert layout.padded_height >= layout.pads[0] + layout.in_size[0]
