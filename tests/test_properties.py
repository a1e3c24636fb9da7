"""Property-based: random valid ConvTranspose attributes and shapes, our build against onnxruntime
and the numpy reference (the same check as each conformance case)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.conformance import ConformanceCase, ConformanceOptions, check_case
from pipeline.target import resolve_target


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
