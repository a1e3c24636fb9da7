"""ConvTranspose attribute combinations shared by the reference and lowering tests."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from pipeline import reference

CASES = {  # name: (input shape, weight shape, ONNX attributes)
    "1d_stride3_asym_pads": ((1, 4, 7), (4, 3, 5), dict(strides=[3], pads=[1, 2])),
    "1d_batch2_output_padding": ((2, 4, 6), (4, 2, 4), dict(strides=[2], pads=[0, 0], output_padding=[1])),
    "1d_groups3_dilation2": ((1, 6, 5), (6, 1, 3), dict(strides=[2], dilations=[2], group=3, pads=[1, 1])),
    "1d_oobleck_k2s": ((1, 4, 5), (4, 2, 8), dict(strides=[4], pads=[2, 2])),
    "1d_depthwise": ((1, 4, 6), (4, 1, 4), dict(strides=[2], group=4, pads=[1, 1])),
    "2d_asym_output_padding": ((1, 3, 4, 5), (3, 2, 3, 2), dict(strides=[2, 3], pads=[1, 0, 0, 1], output_padding=[1, 2])),
    "2d_batch2_groups2_dilation": ((2, 4, 3, 3), (4, 3, 2, 2), dict(strides=[1, 2], dilations=[2, 1], group=2)),
    "3d_asym": ((1, 2, 3, 2, 2), (2, 2, 2, 1, 2), dict(strides=[2, 1, 2], pads=[0, 0, 1, 1, 0, 0])),
    "2d_no_bias": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], bias=False)),
}


def case_arrays(name, seed=0):
    x_shape, w_shape, attrs = CASES[name]
    attrs = dict(attrs)
    with_bias = attrs.pop("bias", True)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[1] * attrs.get("group", 1)).astype(np.float32) if with_bias else None
    return x, w, b, attrs


def case_model(name):
    x, w, b, attrs = case_arrays(name)
    initializers = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else [])
    node = helper.make_node("ConvTranspose", ["x", "w"] + (["b"] if b is not None else []), ["y"], **attrs)
    graph = helper.make_graph(
        [node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, reference.conv_transpose(x, w, b, **attrs).shape)],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
