"""Shape arithmetic that TVM's importer refuses although every shape is static (what exporters
write for `x.view(x.shape[0], -1)` and for `F.pad` aligning a skip connection) builds once it is
folded into constants; nothing else is computed before import."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.build import build
from pipeline.graphs import IR_VERSION, load_config, make_graph
from pipeline.passes.fold_shape_arithmetic import fold_shape_arithmetic

from .conftest import TINY_FRAMES, onnx_file_build_options

CHANNELS = 4


def _model(nodes, inputs, output_shape, initializers):
    graph = helper.make_graph(
        nodes, "shapes", [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)


def _skip_aligned_by_pad():
    """ConvTranspose upsamples x 10 -> 20 positions; F.pad-style arithmetic pads it to the skip's 23."""
    weight = np.random.default_rng(0).standard_normal((CHANNELS, CHANNELS, 4)).astype(np.float32) / 4
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["up"], strides=[2], pads=[1, 1]),
        helper.make_node("Shape", ["skip"], ["skip_shape"]),
        helper.make_node("Shape", ["up"], ["up_shape"]),
        helper.make_node("Gather", ["skip_shape", "last"], ["skip_length"], axis=0),
        helper.make_node("Gather", ["up_shape", "last"], ["up_length"], axis=0),
        helper.make_node("Sub", ["skip_length", "up_length"], ["missing"]),
        helper.make_node("ConstantOfShape", ["five"], ["no_padding"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Concat", ["no_padding", "missing"], ["pads"], axis=0),
        helper.make_node("Pad", ["up", "pads"], ["padded"]),
        helper.make_node("Add", ["padded", "skip"], ["out"]),
    ]
    inputs = [("x", [1, CHANNELS, 10]), ("skip", [1, CHANNELS, 23])]
    return _model(nodes, inputs, [1, CHANNELS, 23], {"w": weight, "last": np.array([2], np.int64), "five": np.array([5], np.int64)})


def _flattened_by_reshape():
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "first"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "rest"], ["new_shape"], axis=0),
        helper.make_node("Reshape", ["x", "new_shape"], ["flat"]),
        helper.make_node("Relu", ["flat"], ["out"]),
    ]
    return _model(nodes, [("x", [3, CHANNELS, 10])], [3, CHANNELS * 10], {"first": np.array([0], np.int64), "rest": np.array([-1], np.int64)})


@pytest.mark.parametrize("make, folded", [
    (_skip_aligned_by_pad, "pads = [0, 0, 0, 0, 0, 3]"),
    (_flattened_by_reshape, "new_shape = [3, -1]"),
])
def test_shape_arithmetic_is_folded_and_the_model_builds(make, folded, tmp_path, empty_schedules):
    model = make()
    onnx.checker.check_model(model, full_check=True)
    rewritten, lines = fold_shape_arithmetic(model)
    assert folded in lines
    assert not {"Shape", "Gather", "Concat"} & {node.op_type for node in rewritten.graph.node}
    onnx.save(model, str(tmp_path / "model.onnx"))

    result = build(onnx_file_build_options(tmp_path / "model.onnx", tmp_path / "art", empty_schedules))

    assert result.passed, result.manifest.verification


def test_a_tensor_the_size_of_an_activation_is_not_computed():
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"], value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Add", ["x", "zeros"], ["out"]),
    ]
    rewritten, lines = fold_shape_arithmetic(_model(nodes, [("x", [1, CHANNELS, 100])], [1, CHANNELS, 100], {}))
    assert lines == [f"shape = [1, {CHANNELS}, 100]"]
    assert [node.op_type for node in rewritten.graph.node] == ["ConstantOfShape", "Add"]


def test_a_model_without_shape_arithmetic_is_left_as_it_is():
    model = make_graph("decoder", load_config("tiny"), latent_frames=TINY_FRAMES).model
    assert fold_shape_arithmetic(model) == (model, [])


def test_small_float_weights_are_not_computed():
    """A weight-normed exporter's arithmetic on a 4-channel bias stays for TVM (LiftTransformParams)."""
    nodes = [helper.make_node("Add", ["bias", "eps"], ["shifted"]), helper.make_node("Add", ["x", "shifted"], ["out"])]
    model = _model(nodes, [("x", [1, CHANNELS, 1])], [1, CHANNELS, 1],
                   {"bias": np.ones((1, CHANNELS, 1), np.float32), "eps": np.array(1e-9, np.float32)})
    assert fold_shape_arithmetic(model) == (model, [])
