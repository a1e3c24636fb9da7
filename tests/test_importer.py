"""What the importer hands the compiler: the weights as data, one-element initializers (a Pow's
exponent, say) as constants it can fold."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.build import build
from pipeline.graphs import IR_VERSION
from pipeline.importer import import_onnx

from .conftest import onnx_file_build_options


def _snake_as_dynamo_exports_it() -> onnx.ModelProto:
    """y = x + s * sin(a * x) ** e, with a per channel and s, e one-element initializers."""
    initializers = [
        numpy_helper.from_array(np.linspace(0.5, 2.0, 4, dtype=np.float32).reshape(1, 4, 1), "alpha"),
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "exponent"),
        numpy_helper.from_array(np.array([0.5], dtype=np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "alpha"], ["ax"]),
        helper.make_node("Sin", ["ax"], ["sine"]),
        helper.make_node("Pow", ["sine", "exponent"], ["squared"]),
        helper.make_node("Mul", ["squared", "scale"], ["scaled"]),
        helper.make_node("Add", ["x", "scaled"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "snake", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 64])], initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)


def test_one_element_initializers_are_constants_not_weights():
    imported = import_onnx(_snake_as_dynamo_exports_it())
    assert imported.param_names == ["alpha"]
    assert [w.shape for w in imported.params] == [(1, 4, 1)]
    assert len(imported.mod["main"].params) == 2  # x, alpha


def test_a_graph_with_constant_initializers_builds_and_verifies(tmp_path, empty_schedules):
    path = tmp_path / "snake.onnx"
    onnx.save(_snake_as_dynamo_exports_it(), str(path))
    result = build(onnx_file_build_options(path, tmp_path / "art", empty_schedules))
    assert result.passed, result.manifest.verification
    assert len(result.manifest.params) == 1
