"""Softmax and the normalizations (a reduction per row, then elementwise stages) get a CPU schedule
(`default_cpu_schedule._schedule_normalization`): rows in parallel, each row's sums in one partial
sum per vector lane; each equals onnxruntime and the float64 numpy reference."""

import numpy as np
import pytest
import tvm
from tvm.s_tir.schedule import ScheduleError

from pipeline.build import build
from pipeline.importer import import_onnx
from pipeline.lowering import lower
from pipeline.passes import default_cpu_schedule
from pipeline.passes.default_cpu_schedule import DefaultCPUSchedule, VectorUnit
from pipeline.runtime import load
from pipeline.target import resolve_target

from .conftest import (
    NORMALIZATION_CASES,
    cpu_scheduled,
    normalization_model,
    onnx_file_build_options,
    tir_loops,
    unrolled_extents,
)


# Rows of 40 (no whole vectors: summed one by one) and of 128 (partial sums per lane).
@pytest.mark.parametrize("x_shape", [(2, 6, 40), (2, 4, 128)])
@pytest.mark.parametrize("name", sorted(NORMALIZATION_CASES))
def test_normalizations_run_their_rows_in_parallel_and_equal_onnxruntime_and_numpy(
    name, x_shape, tmp_path, empty_schedules
):
    model, expected = normalization_model(name, x_shape)
    scheduled = cpu_scheduled(model)
    kernels = [func for func in scheduled.functions.values() if isinstance(func, tvm.tirx.PrimFunc)]
    assert kernels
    for kernel in kernels:
        assert any(loop.kind == tvm.tirx.ForKind.PARALLEL for loop in tir_loops(kernel)), kernel
    lanes = VectorUnit.of(resolve_target("cpu").tvm_target()).lanes
    whole_vectors = x_shape[-1] % lanes == 0
    assert (lanes in unrolled_extents(scheduled, "")) == whole_vectors
    path = tmp_path / "norm.onnx"
    path.write_bytes(model.SerializeToString())
    result = build(onnx_file_build_options(path, tmp_path / "out", empty_schedules))
    assert result.passed, result.manifest.verification  # against onnxruntime
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    want = expected(x)
    np.testing.assert_allclose(load(result.artifact)(x), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_a_normalization_our_schedule_fails_on_keeps_tvms_lowering(monkeypatch):
    """A ScheduleError on the way leaves that kernel as TVM wrote it instead of failing the build."""

    def fails(*_args):
        raise ScheduleError("rfactor does not apply")

    monkeypatch.setattr(default_cpu_schedule, "_lane_partial_sums", fails)
    model, _ = normalization_model("softmax")
    target = resolve_target("cpu")
    lowered = lower(import_onnx(model).mod, target).main
    with target.tvm_target():
        scheduled = DefaultCPUSchedule(target.tvm_target())(lowered)
    tvm.ir.assert_structural_equal(scheduled, lowered)
