"""Bad input of every kind gets our own error type, a message saying what to do, and leaves
what was saved before intact. (Run-time input errors and tampered artifacts: test_runtime.py;
corrupt records: test_tuning.py.)"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline.build import build
from pipeline.errors import ArtifactError, GraphError, TuningError, UnsupportedModelError
from pipeline.graphs import IR_VERSION, export_graph, make_graph, load_config
from pipeline.target import resolve_target
from pipeline.tuning import ScheduleStore

from .conftest import TINY_FRAMES, onnx_file_build_options, tiny_build_options


def _single_op_model(op, input_dims, output_rank=None):
    node = helper.make_node(op, ["x"], ["y"])
    graph = helper.make_graph(
        [node], op.lower(), [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * (output_rank or len(input_dims)))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)


@pytest.fixture
def convt5_file(tmp_path):
    source = make_graph("convt5", load_config("tiny"), latent_frames=TINY_FRAMES)
    return export_graph(source, tmp_path / "convt5.onnx")


def test_truncated_onnx(convt5_file, tmp_path, empty_schedules):
    data = convt5_file.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(GraphError, match="truncated.onnx (is not a readable ONNX model|fails onnx.checker)"):
        build(onnx_file_build_options(truncated, tmp_path / "art", empty_schedules))


def test_onnx_failing_the_checker(tmp_path, empty_schedules):
    model = _single_op_model("Relu", [1, 4, 8])
    model.graph.node[0].input[0] = "not_defined_anywhere"
    path = tmp_path / "dangling.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(GraphError, match="fails onnx.checker"):
        build(onnx_file_build_options(path, tmp_path / "art", empty_schedules))


@pytest.mark.parametrize("op, output_rank, message", [
    ("Bernoulli", 3, "not supported for frontend ONNX: Bernoulli"),
    ("Unique", 1, "depends on the input values"),
])
def test_operators_we_cannot_compile(op, output_rank, message, tmp_path, empty_schedules):
    path = tmp_path / f"{op}.onnx"
    path.write_bytes(_single_op_model(op, [1, 4, 8], output_rank).SerializeToString())
    with pytest.raises(UnsupportedModelError, match=message):
        build(onnx_file_build_options(path, tmp_path / "art", empty_schedules))
    assert not (tmp_path / "art").exists() or not any((tmp_path / "art").rglob("manifest.json"))


def test_symbolic_input_dimension(tmp_path, empty_schedules):
    path = tmp_path / "dynamic.onnx"
    path.write_bytes(_single_op_model("Relu", ["batch", 4, 8]).SerializeToString())
    with pytest.raises(UnsupportedModelError, match="symbolic dimension 'batch'.*--input-shape x=<size>,4,8"):
        build(onnx_file_build_options(path, tmp_path / "art", empty_schedules))


def test_foreign_tuning_records_are_refused_and_left_alone(tmp_path):
    store = ScheduleStore(resolve_target("cpu"), tmp_path)
    store.dir.mkdir(parents=True)
    workload, records = store.files
    workload.write_text('{"name": "some other tool"}\n')
    records.write_text('[0, {"latency": 1.0}]\n')
    before = [p.read_bytes() for p in store.files]
    with pytest.raises(TuningError, match="cannot be read.*git checkout"):
        store.open()
    assert [p.read_bytes() for p in store.files] == before


def test_unwritable_output_directory(tmp_path, empty_schedules):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    options = tiny_build_options(blocker / "artifacts", empty_schedules, "convt5")
    with pytest.raises(ArtifactError, match="cannot write the artifact.*--out"):
        build(options)
    assert blocker.read_text() == "not a folder"


def test_non_finite_weights_in_a_users_graph_still_build_and_verify(tmp_path, empty_schedules):
    """NaN/Inf travel through like onnxruntime's (verification compares where they are)."""
    source = make_graph("convt5", load_config("tiny"), latent_frames=TINY_FRAMES)
    bias = next(i for i in source.model.graph.initializer if i.name.endswith("bias"))
    values = onnx.numpy_helper.to_array(bias).copy()
    values[0] = np.inf
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    path = export_graph(source, tmp_path / "inf_bias.onnx")
    result = build(onnx_file_build_options(path, tmp_path / "art", empty_schedules))
    assert result.passed
