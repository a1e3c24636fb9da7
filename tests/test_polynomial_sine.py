"""The vectorizable sine the Snake activations use, against float64 sin."""

import numpy as np
import tvm
from tvm import relax

from pipeline.passes.polynomial_sine import PolynomialSine
from pipeline.target import resolve_target


def test_polynomial_sine_is_fp32_accurate():
    x = np.linspace(-200, 200, 400_001, dtype=np.float32)
    bb = relax.BlockBuilder()
    arg = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [arg]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.sin(arg))
        bb.emit_func_output(out)
    mod = PolynomialSine()(bb.get())
    assert "relax.sin" not in mod.script()
    executable = tvm.compile(mod, resolve_target("cpu").tvm_target())
    y = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert np.abs(y - np.sin(x.astype(np.float64))).max() < 2e-7
