"""MatMul and Gemm lowered to our packed GEMM (`pipeline/passes/matmul_gemm.py`): Linear layers
(a constant right operand, a bias), batched and broadcast products of two activations, transposed
operands, shapes that are not whole register tiles: each equals onnxruntime and float64 numpy; the
bias and activation after a Linear run in the GEMM's kernel, which reads the activations in place
(rows 4 KiB apart aside) and a constant left operand packed at build time; a vector operand keeps
TVM's lowering and says so."""

import logging

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from pipeline.build import build
from pipeline.graphs import IR_VERSION, OPSET
from pipeline.importer import import_onnx
from pipeline.lowering import lower
from pipeline.passes.matmul_gemm import ROWS_IN_PLACE_STAGE, MatmulToGemm
from pipeline.runtime import load
from pipeline.target import resolve_target

from .conftest import MATMUL_CASES, cpu_scheduled, matmul_model, onnx_file_build_options


def _kernels(model) -> list[str]:
    return [gv.name_hint for gv in lower(import_onnx(model).mod, resolve_target("cpu")).main.functions]


def _gemm_reads_rows_in_place(model) -> bool:
    main = lower(import_onnx(model).mod, resolve_target("cpu")).main
    (gemm,) = [func for gv, func in main.functions.items() if "matmul_gemm" in gv.name_hint]
    return f'T.sblock("{ROWS_IN_PLACE_STAGE}")' in gemm.script()


@pytest.mark.parametrize("name", sorted(MATMUL_CASES))
def test_matmuls_through_our_gemm_equal_onnxruntime_and_numpy(name, tmp_path, empty_schedules):
    model, shapes, expected = matmul_model(*MATMUL_CASES[name])
    assert sum("matmul_gemm" in kernel for kernel in _kernels(model)) == 1
    path = tmp_path / "matmul.onnx"
    path.write_bytes(model.SerializeToString())
    result = build(onnx_file_build_options(path, tmp_path / "out", empty_schedules))
    assert result.passed, result.manifest.verification  # against onnxruntime
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    want = expected(*inputs)
    got = load(result.artifact)(*inputs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_a_linear_layers_bias_and_the_reading_of_its_activations_run_in_the_gemms_kernel():
    """A reshape after the GEMM would have kept FuseOps from fusing the bias add into it; the
    activations are read in place, not packed by a kernel of their own on every call."""
    model = matmul_model(*MATMUL_CASES["linear_3d"])[0]
    assert [kernel for kernel in _kernels(model) if kernel != "main"] == ["fused_matmul_gemm_add"]
    assert _gemm_reads_rows_in_place(model)


def test_activation_rows_4_kib_apart_are_packed_on_each_call():
    model = matmul_model(*MATMUL_CASES["linear_rows_4kib_apart"])[0]
    assert not _gemm_reads_rows_in_place(model)
    assert [kernel for kernel in _kernels(model) if "transpose" in kernel] == ["fused_reshape_transpose"]  # packing


def test_a_constant_left_operand_is_packed_once_at_build_time():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 24)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["w", "x"], ["y"])], "constant_left",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [24, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 40])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    lowered = lower(import_onnx(model).mod, resolve_target("cpu"))
    assert not [gv for gv in lowered.main.functions if "transpose" in gv.name_hint]  # no packing per call
    assert not _gemm_reads_rows_in_place(model)
    (prepared,) = lowered.main["main"].params[1:]
    assert [int(d) for d in prepared.ty.shape] == [1, 2, 24, 8]  # the GEMM's packed layout, made by the build


def test_an_onnx_gemm_with_transposed_weight_alpha_and_beta_equals_onnxruntime_and_numpy(tmp_path, empty_schedules):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((24, 16)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 24])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    assert any("matmul_gemm" in kernel for kernel in _kernels(model))
    path = tmp_path / "gemm.onnx"
    path.write_bytes(model.SerializeToString())
    result = build(onnx_file_build_options(path, tmp_path / "out", empty_schedules))
    assert result.passed, result.manifest.verification
    a = rng.standard_normal((4, 16)).astype(np.float32)
    want = 0.5 * a.astype(np.float64) @ weight.T.astype(np.float64) + 2.0 * bias
    np.testing.assert_allclose(load(result.artifact)(a), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_a_matmul_with_a_vector_operand_keeps_tvms_lowering_and_says_why(caplog):
    a = relax.Var("a", relax.TensorType((8,), "float32"))
    b = relax.Var("b", relax.TensorType((8, 4), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [a, b]):
        builder.emit_func_output(builder.emit(relax.op.matmul(a, b)))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        kept = MatmulToGemm(pad_positions=True)(builder.get())
    assert "matmul as GEMM does not apply to relax.matmul: a vector operand" in caplog.text
    assert "R.matmul" in kept["main"].script()
    tvm.ir.assert_structural_equal(kept, builder.get())


def test_a_transposed_right_operand_is_read_through_the_gemms_panel_copy():
    """`q @ k.transpose(-1, -2)`: no transpose kernel of its own (in a VAE attention block, the
    transpose of the softmax output took 1.8 ms of 12), nor one packing q."""
    kernels = _kernels(matmul_model(*MATMUL_CASES["attention_scores"])[0])
    assert [kernel for kernel in kernels if kernel != "main"] == ["matmul_gemm"], kernels


def test_a_transposed_operands_panel_is_copied_along_its_rows():
    """The copy's innermost loop walks the source's contiguous axis (channels): walking positions
    read rows a power of two apart, which collide in L1 (attention's v·aᵀ: 3.86 -> 2.55 ms)."""
    scheduled = cpu_scheduled(matmul_model(*MATMUL_CASES["attention_values"])[0])
    kernel = next(func for gv, func in scheduled.functions.items() if "matmul_gemm" in gv.name_hint)
    sch = tvm.s_tir.Schedule(kernel)
    innermost = sch.get(sch.get_loops(sch.get_sblock("matmul_transposed_global"))[-1])
    realize = innermost.body
    source_column = realize.block.reads[0].region[-1].min
    bound = dict(zip((iv.var for iv in realize.block.iter_vars), realize.iter_values))
    column_loops = tvm.tirx.analysis.undefined_vars(bound[source_column])
    assert innermost.loop_var in column_loops, realize
    assert innermost.kind == tvm.tirx.ForKind.VECTORIZED, innermost
