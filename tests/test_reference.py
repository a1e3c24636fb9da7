"""The numpy reference is itself checked against onnxruntime over ConvTranspose attributes."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline import reference

CASES = [  # (input shape, weight shape, attributes)
    ((1, 4, 7), (4, 3, 5), dict(strides=[3], pads=[1, 2])),
    ((2, 4, 6), (4, 2, 4), dict(strides=[2], pads=[0, 0], output_padding=[1])),
    ((1, 6, 5), (6, 1, 3), dict(strides=[2], dilations=[2], group=3, pads=[1, 1])),
    ((1, 4, 5), (4, 2, 8), dict(strides=[4], pads=[2, 2])),
    ((1, 3, 4, 5), (3, 2, 3, 2), dict(strides=[2, 3], pads=[1, 0, 0, 1], output_padding=[1, 2])),
    ((2, 4, 3, 3), (4, 3, 2, 2), dict(strides=[1, 2], dilations=[2, 1], group=2)),
]


def onnx_conv_transpose(x, w, b, attrs):
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("x_shape, w_shape, attrs", CASES)
def test_scatter_reference_matches_onnxruntime(x_shape, w_shape, attrs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    group = attrs.get("group", 1)
    b = rng.standard_normal(w_shape[1] * group).astype(np.float32)
    expected = onnx_conv_transpose(x, w, b, attrs)
    ours = reference.conv_transpose(x, w, b, **attrs)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_conv_transpose_is_the_adjoint_of_conv():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 2, 4))  # conv weight (out=3, in=2, k=4)
    x = rng.standard_normal((1, 2, 17))
    conv_x = reference.conv(x, w, strides=[2], pads=[1, 1])
    y = rng.standard_normal(conv_x.shape)
    # conv output length is (17 + 2 - 4) // 2 + 1 = 8; output_padding 1 brings 8 back to 17
    convt_y = reference.conv_transpose(y, w, strides=[2], pads=[1, 1], output_padding=[1])
    assert convt_y.shape == x.shape
    np.testing.assert_allclose(np.vdot(conv_x, y), np.vdot(x, convt_y), rtol=1e-10)
