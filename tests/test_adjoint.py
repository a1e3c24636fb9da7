"""ConvTranspose is the adjoint (input gradient) of Conv with the same weight:
<Conv(x), y> = <x, ConvTranspose(y)> for every x and y. Both sides are built by our pipeline.

Conv maps length L to floor((L + pads - dilation*(K-1) - 1) / stride) + 1, which forgets the
remainder; ConvTranspose gets back to exactly L through output_padding, solved here from that.
"""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.build import BuildOptions, build
from pipeline.graphs import IR_VERSION, OPSET, GraphSelection
from pipeline.runtime import load

CASES = {  # name: (x shape, conv weight shape (Cout, Cin/g, K...), attributes)
    "1d_stride1": ((1, 3, 11), (4, 3, 3), dict(pads=[1, 1])),
    "1d_stride2_remainder": ((1, 3, 12), (4, 3, 4), dict(strides=[2], pads=[1, 1])),
    "1d_stride3_asym_pads": ((2, 2, 17), (3, 2, 5), dict(strides=[3], pads=[2, 0])),
    "1d_oobleck_s8": ((1, 4, 64), (2, 4, 16), dict(strides=[8], pads=[4, 4])),
    "1d_dilated_groups": ((1, 4, 15), (6, 2, 3), dict(strides=[2], dilations=[2], group=2, pads=[1, 2])),
    "2d_strided": ((1, 2, 9, 8), (3, 2, 3, 2), dict(strides=[2, 3], pads=[1, 0, 1, 1])),
}


def _output_padding(x_shape, w_shape, attrs):
    rank = len(x_shape) - 2
    strides = attrs.get("strides", [1] * rank)
    dilations = attrs.get("dilations", [1] * rank)
    pads = attrs.get("pads", [0] * 2 * rank)
    padding = []
    for d in range(rank):
        span = dilations[d] * (w_shape[2 + d] - 1) + 1
        conv_out = (x_shape[2 + d] + pads[d] + pads[rank + d] - span) // strides[d] + 1
        padding.append(x_shape[2 + d] - ((conv_out - 1) * strides[d] + span - pads[d] - pads[rank + d]))
    assert all(0 <= p < max(s, dl) for p, s, dl in zip(padding, strides, dilations))
    return padding


def _model(op, in_shape, weight, attrs):
    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], op.lower(), [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(in_shape))],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def _built(model, name, tmp_path, schedules):
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return load(build(BuildOptions(GraphSelection(onnx=path), out=tmp_path, schedules=schedules, timing_repeats=1)).artifact)


@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_transpose_is_the_adjoint_of_conv(name, tmp_path, empty_schedules):
    x_shape, w_shape, attrs = CASES[name]
    rng = np.random.default_rng(11)
    weight = rng.standard_normal(w_shape).astype(np.float32)
    conv = _built(_model("Conv", x_shape, weight, attrs), f"{name}_conv", tmp_path, empty_schedules)
    y_shape = conv.outputs[0].shape
    convt_attrs = dict(attrs, output_padding=_output_padding(x_shape, w_shape, attrs))
    convt = _built(_model("ConvTranspose", y_shape, weight, convt_attrs), f"{name}_convt", tmp_path, empty_schedules)
    assert convt.outputs[0].shape == x_shape

    x = rng.standard_normal(x_shape).astype(np.float32)
    y = rng.standard_normal(y_shape).astype(np.float32)
    conv_x, convt_y = conv(x).astype(np.float64), convt(y).astype(np.float64)
    left, right = np.vdot(conv_x, y), np.vdot(x, convt_y)
    # fp32 precision: each side is a sum of fp32 products; scale by the sum of their magnitudes.
    scale = np.vdot(np.abs(conv_x), np.abs(y)) + np.vdot(np.abs(x), np.abs(convt_y))
    assert abs(left - right) <= 1e-6 * scale, (left, right, scale)
