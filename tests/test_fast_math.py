"""The vectorizable exp, erf, tanh and what is built of them (`pipeline/passes/fast_math.py`),
against float64 numpy over the fp32 range where each varies, with the errors each keeps to."""

import math

import numpy as np
import pytest
import tvm
from tvm import relax

from pipeline.passes.fast_math import FastMath
from pipeline.target import resolve_target

from .conftest import softmax_reference


def _erf(x):
    return np.vectorize(math.erf)(x)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# Relax op, float64 reference, input range, error bound: relative where the result spans orders of
# magnitude (exp, and softmax over a wide row), absolute where it is O(1).
CASES = {
    "exp": (relax.op.exp, np.exp, (-87.0, 88.0), ("relative", 5e-7)),
    "erf": (relax.op.erf, _erf, (-6.0, 6.0), ("absolute", 1e-6)),
    "tanh": (relax.op.tanh, np.tanh, (-12.0, 12.0), ("absolute", 1e-6)),
    "sigmoid": (relax.op.sigmoid, _sigmoid, (-80.0, 80.0), ("absolute", 1e-6)),
    "silu": (relax.op.nn.silu, lambda x: x * _sigmoid(x), (-80.0, 80.0), ("relative", 1e-6)),
    "gelu": (relax.op.nn.gelu, lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))), (-8.0, 8.0), ("absolute", 2e-6)),
    "softmax": (lambda x: relax.op.nn.softmax(x, axis=-1), softmax_reference, (-40.0, 40.0), ("relative", 2e-6)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_math_is_fp32_accurate_and_calls_no_libm(name):
    op, reference, (low, high), (kind, bound) = CASES[name]
    x = np.linspace(low, high, 100_000, dtype=np.float32).reshape(100, 1000)
    bb = relax.BlockBuilder()
    arg = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [arg]):
        with bb.dataflow():
            out = bb.emit_output(op(arg))
        bb.emit_func_output(out)
    mod = FastMath()(bb.get())
    script = mod.script()
    assert "R.call_tir" in script and not any(f"T.{f}(" in script for f in ("exp", "erf", "tanh", "sigmoid"))
    executable = tvm.compile(mod, resolve_target("cpu").tvm_target())
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy().astype(np.float64)
    want = reference(x.astype(np.float64))
    error = np.abs(got - want)
    if kind == "relative":
        error = error / np.maximum(np.abs(want), np.finfo(np.float32).tiny)
    assert error.max() < bound, error.max()


def test_other_dtypes_keep_tvms_lowering():
    bb = relax.BlockBuilder()
    arg = relax.Var("x", relax.TensorType((4,), "float64"))
    with bb.function("main", [arg]):
        bb.emit_func_output(bb.emit(relax.op.exp(arg)))
    tvm.ir.assert_structural_equal(FastMath()(bb.get()), bb.get())
