"""A graph output that reshapes a tensor computed in the graph is a view of it, not a copy
(`pipeline/passes/output_reshape_views.py`); one that reshapes a graph input stays a copy, so the
output never aliases the caller's memory. Built graphs with view outputs equal numpy in
tests/test_matmul_gemm.py (the batched and broadcast cases end in such a reshape)."""

import re

import numpy as np
from onnx import TensorProto, helper

from pipeline.build import build, compile_module
from pipeline.graphs import IR_VERSION, OPSET
from pipeline.importer import import_onnx
from pipeline.runtime import load
from pipeline.target import resolve_target
from pipeline.tuning import ScheduleStore

from .conftest import MATMUL_CASES, matmul_model, onnx_file_build_options


def _called_functions(model, schedules) -> set[str]:
    """The functions the compiled `main` calls: our kernels and the VM's builtins."""
    target = resolve_target("cpu")
    text = compile_module(import_onnx(model).mod, target, ScheduleStore(target, schedules)).executable.as_text()
    return set(re.findall(r"^@(\S+) packed_func;", text, re.MULTILINE))


def test_a_reshaped_gemm_output_is_returned_as_a_view(empty_schedules):
    """(2·3, 16, 24) from the GEMM, (2, 3, 16, 24) out: the GEMM is the only kernel (it reads its
    left operand in place), and the VM's reshape makes the view."""
    called = _called_functions(matmul_model(*MATMUL_CASES["batched"])[0], empty_schedules)
    kernels = {name for name in called if not name.startswith("vm.")}
    assert "vm.builtin.reshape" in called, called
    assert kernels == {"matmul_gemm"}, kernels


def _reshaped_input_model():
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [4, 6])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def test_a_reshaped_graph_input_is_copied(tmp_path, empty_schedules):
    model = _reshaped_input_model()
    assert "vm.builtin.reshape" not in _called_functions(model, empty_schedules)
    path = tmp_path / "reshape.onnx"
    path.write_bytes(model.SerializeToString())
    result = build(onnx_file_build_options(path, tmp_path / "out", empty_schedules))
    assert result.passed, result.manifest.verification
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    np.testing.assert_array_equal(load(result.artifact)(x), x.reshape(4, 6))
