"""An ONNX file exported with dynamic axes (symbolic input dimensions) builds for the static shape
its user gives (`--input-shape`, GraphSelection.input_shapes); each wrong shape is a GraphError
that says what to do. (The same from PyTorch's exporters: test_torch_export.py.)"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline.build import build
from pipeline.errors import GraphError
from pipeline.graphs import IR_VERSION, GraphSelection, export_graph, load_config, make_graph
from pipeline.runtime import load

from .conftest import TINY_FRAMES, onnx_file_build_options, tiny_build_options


def _make_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as an exporter with dynamic batch and length axes writes it."""
    for value, length in [(model.graph.input[0], "length"), (model.graph.output[0], "out_length")]:
        dims = value.type.tensor_type.shape.dim
        dims[0].Clear()
        dims[0].dim_param = "batch"
        dims[2].Clear()
        dims[2].dim_param = length
    return model


@pytest.fixture
def dynamic_convt5(tmp_path):
    source = make_graph("convt5", load_config("tiny"), latent_frames=TINY_FRAMES)
    path = tmp_path / "dynamic.onnx"
    onnx.save(_make_dynamic(source.model), str(path))
    return path


def _build(path, out, schedules, input_shapes):
    options = onnx_file_build_options(path, out, schedules)
    options.selection = GraphSelection(onnx=path, input_shapes=input_shapes)
    return build(options)


def test_a_dynamic_model_builds_for_the_shape_given(dynamic_convt5, tmp_path, empty_schedules):
    # Another length than the one it was exported with, as a user builds for the chunk they want.
    static = export_graph(make_graph("convt5", load_config("tiny"), latent_frames=TINY_FRAMES + 1), tmp_path / "static.onnx")
    _, channels, length = (d.dim_value for d in onnx.load(str(static)).graph.input[0].type.tensor_type.shape.dim)

    result = _build(dynamic_convt5, tmp_path / "art", empty_schedules, {"x": (1, channels, length)})

    assert result.passed, result.manifest.verification
    assert result.manifest.inputs[0].shape == (1, channels, length)
    assert result.manifest.graph.input_shapes == {"x": [1, channels, length]}
    saved = onnx.load(str(result.artifact / "model.onnx"))
    assert [d.dim_value for d in saved.graph.output[0].type.tensor_type.shape.dim] == list(result.manifest.outputs[0].shape)
    x = np.random.default_rng(1).standard_normal((1, channels, length)).astype(np.float32)
    built_static = _build(static, tmp_path / "static", empty_schedules, {})
    np.testing.assert_array_equal(load(result.artifact)(x), load(built_static.artifact)(x))


@pytest.mark.parametrize("shapes, message", [
    ({"y": (1, 4, 8)}, r"has no input 'y' to give a shape; its inputs are \['x'\]"),
    ({"x": (1, 4)}, r"has shape \['batch', \d+, 'length'\]: give it 3 sizes of at least 1, got \[1, 4\]"),
    ({"x": (1, 4, 0)}, "give it 3 sizes of at least 1"),
    ({"x": (1, 999, 8)}, r"\[1, 999, 8\] changes a size fixed in the model"),
])
def test_wrong_input_shapes(shapes, message, dynamic_convt5, tmp_path, empty_schedules):
    with pytest.raises(GraphError, match=message):
        _build(dynamic_convt5, tmp_path / "art", empty_schedules, shapes)
    assert not (tmp_path / "art").exists()


def _add_model(path, x_length, y_length):
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["z"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, x_length]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, y_length])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, None])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION), str(path))
    return path


def test_a_symbol_shared_by_two_inputs_takes_one_size(tmp_path, empty_schedules):
    path = _add_model(tmp_path / "shared.onnx", "T", "T")
    with pytest.raises(GraphError, match="dimension 'T' of .* is given two sizes, 3 and 4"):
        _build(path, tmp_path / "art", empty_schedules, {"x": (1, 3), "y": (1, 4)})
    result = _build(path, tmp_path / "art", empty_schedules, {"x": (1, 3)})
    assert result.passed and [s.shape for s in result.manifest.inputs] == [(1, 3), (1, 3)]


def test_shapes_the_graph_cannot_take(tmp_path, empty_schedules):
    path = _add_model(tmp_path / "two.onnx", "A", "B")
    with pytest.raises(GraphError, match="fails ONNX shape inference.*check the sizes"):
        _build(path, tmp_path / "art", empty_schedules, {"x": (1, 3), "y": (1, 4)})


def test_named_graphs_take_no_input_shapes(tmp_path, empty_schedules):
    options = tiny_build_options(tmp_path, empty_schedules, "convt5")
    options.selection.input_shapes = {"x": (1, 4, 8)}
    with pytest.raises(GraphError, match="named graph 'convt5' takes its length from --latent-frames"):
        build(options)
