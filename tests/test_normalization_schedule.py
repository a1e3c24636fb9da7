"""Softmax and the normalizations (a reduction per row, then elementwise stages) get a CPU schedule
(dlight's CPU reduction rule, `default_cpu_schedule._schedule_normalization`): rows in parallel;
each equals onnxruntime and the float64 numpy reference."""

import numpy as np
import pytest
import tvm
from tvm.s_tir import dlight
from tvm.s_tir.schedule import ScheduleError

from pipeline.build import build
from pipeline.importer import import_onnx
from pipeline.lowering import lower
from pipeline.passes.default_cpu_schedule import DefaultCPUSchedule
from pipeline.runtime import load
from pipeline.target import resolve_target

from .conftest import NORMALIZATION_CASES, normalization_model, onnx_file_build_options, tir_loops


@pytest.mark.parametrize("name", sorted(NORMALIZATION_CASES))
def test_normalizations_run_their_rows_in_parallel_and_equal_onnxruntime_and_numpy(name, tmp_path, empty_schedules):
    model, expected = normalization_model(name)
    target = resolve_target("cpu")
    with target.tvm_target():
        scheduled = DefaultCPUSchedule(target.tvm_target())(lower(import_onnx(model).mod, target).main)
    kernels = [func for func in scheduled.functions.values() if isinstance(func, tvm.tirx.PrimFunc)]
    assert kernels
    for kernel in kernels:
        assert any(loop.kind == tvm.tirx.ForKind.PARALLEL for loop in tir_loops(kernel)), kernel
    path = tmp_path / "norm.onnx"
    path.write_bytes(model.SerializeToString())
    result = build(onnx_file_build_options(path, tmp_path / "out", empty_schedules))
    assert result.passed, result.manifest.verification  # against onnxruntime
    x = np.random.default_rng(1).standard_normal((2, 6, 40)).astype(np.float32)
    want = expected(x)
    np.testing.assert_allclose(load(result.artifact)(x), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_a_kernel_dlights_rule_fails_on_keeps_tvms_lowering(monkeypatch):
    """A ScheduleError inside the rule leaves that kernel as TVM wrote it instead of failing the build."""

    def fails(*_args):
        raise ScheduleError("the rule's compute_at does not apply")

    monkeypatch.setattr(dlight.cpu.Reduction, "apply", fails)
    model, _ = normalization_model("softmax")
    target = resolve_target("cpu")
    lowered = lower(import_onnx(model).mod, target).main
    with target.tvm_target():
        scheduled = DefaultCPUSchedule(target.tvm_target())(lowered)
    tvm.ir.assert_structural_equal(scheduled, lowered)
