"""The vectorizable sine the Snake activations use, against float64 sin."""

import numpy as np
import pytest
import tvm
from tvm import relax

from pipeline.graphs import GraphSelection
from pipeline.importer import import_onnx
from pipeline.lowering import lower
from pipeline.passes.default_cpu_schedule import DefaultCPUSchedule
from pipeline.passes.default_gpu_schedule import DefaultGPUSchedule
from pipeline.passes.polynomial_sine import PI_HIGH, PolynomialSine
from pipeline.target import resolve_target

X = np.linspace(-200, 200, 400_001, dtype=np.float32)


def _sine_module(square: str | None) -> tvm.IRModule:
    """sin(x), or its square as x * x or x ** 2; "read twice": sin(x)^2 + sin(x)^2."""
    bb = relax.BlockBuilder()
    arg = relax.Var("x", relax.TensorType(X.shape, "float32"))
    with bb.function("main", [arg]):
        with bb.dataflow():
            sine = bb.emit(relax.op.sin(arg))
            if square == "power":
                sine = bb.emit(relax.op.power(sine, relax.const(2.0, "float32")))
            elif square is not None:
                sine = bb.emit(relax.op.multiply(sine, sine))
            if square == "read twice":
                sine = bb.emit(relax.op.add(sine, sine))
            out = bb.emit_output(sine)
        bb.emit_func_output(out)
    return PolynomialSine()(bb.get())


def _run(mod: tvm.IRModule) -> np.ndarray:
    executable = tvm.compile(mod, resolve_target("cpu").tvm_target())
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(X)).numpy()


def test_polynomial_sine_is_fp32_accurate():
    mod = _sine_module(None)
    assert "relax.sin" not in mod.script()
    assert np.abs(_run(mod) - np.sin(X.astype(np.float64))).max() < 2e-7


@pytest.mark.parametrize("square", ["multiply", "power"])
def test_a_squared_sine_is_one_stage_and_fp32_accurate(square):
    mod = _sine_module(square)
    script = mod["main"].script()
    # The Snake's sin(x)^2: one call, the unused polynomial of the sine removed.
    assert script.count("R.call_tir(sine_squared") == 1
    assert not any(op in script for op in ("R.multiply", "R.power", "R.sin"))
    assert np.abs(_run(mod) - np.sin(X.astype(np.float64)) ** 2).max() < 3e-7


def test_a_square_read_twice_keeps_the_polynomial():
    # Inlined twice into one kernel, the stage's Let bindings would bind a variable twice.
    mod = _sine_module("read twice")
    assert "sine_squared" not in mod.script()
    assert np.abs(_run(mod) - 2 * np.sin(X.astype(np.float64)) ** 2).max() < 6e-7


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_a_snake_kernel_writes_its_sine_once(kind):
    # Written as Relax operators and inlined into one kernel, the series repeated the expression
    # below it at every use: 28 copies of the range reduction per Snake kernel, 27.5 MB of CUDA
    # source for the SAO decoder and 1.5 minutes of nvcc.
    target = resolve_target(kind)
    model = GraphSelection(graph="block1", config="tiny", latent_frames=2).resolve().model
    lowered = lower(import_onnx(model).mod, target).main
    with target.tvm_target():
        schedule = DefaultCPUSchedule(target.tvm_target()) if kind == "cpu" else DefaultGPUSchedule()
        scheduled = schedule(lowered)
    snake_kernels = [f.script() for gv, f in scheduled.functions.items() if "sine_squared" in gv.name_hint]
    assert len(snake_kernels) >= 4
    assert all(script.count(str(PI_HIGH)) == 1 for script in snake_kernels)
