"""fp32 `sin` as arithmetic the CPU vectorizes, for the Snake activations.

LLVM turns TVM's `sin` into one libm call per lane: in an Oobleck block the Snake activations
then cost as much as the convolutions (about 15 ns per element on this machine). Written as
multiplies and adds, the same sine runs in vector registers:

    k = round(x / pi),  r = x - k*pi   (Cody-Waite: pi split in two, so r stays exact)
    sin(x) = (-1)^k * (r - r^3/3! + r^5/5! - ... + r^13/13!),   |r| <= pi/2

Max abs error 1.2e-7 against float64 sin for |x| <= 200 (checked in tests); Snake arguments
are alpha * x, of order 1. Other dtypes keep `sin`.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax

from .relax_rewrite import rewrite_functions

# pi = PI_HIGH + PI_LOW with PI_HIGH exact in a few bits, so k * PI_HIGH is exact for |k| < 2^12.
PI_HIGH = 3.140625
PI_LOW = math.pi - PI_HIGH
# 1/3!, 1/5!, ... 1/13! with alternating signs, from r^3 on.
TAYLOR = [(-1) ** n / math.factorial(2 * n + 1) for n in range(1, 7)]


def polynomial_sine(bb: relax.BlockBuilder, x: relax.Expr) -> relax.Expr:
    op = relax.op

    def const(value: float) -> relax.Expr:
        return relax.const(value, "float32")

    k = bb.emit(op.round(op.multiply(x, const(1 / math.pi))))
    r = bb.emit(op.subtract(op.subtract(x, op.multiply(k, const(PI_HIGH))), op.multiply(k, const(PI_LOW))))
    r2 = bb.emit(op.multiply(r, r))
    series = const(TAYLOR[-1])
    for coefficient in reversed(TAYLOR[:-1]):
        series = bb.emit(op.add(const(coefficient), op.multiply(r2, series)))
    sine = bb.emit(op.add(r, op.multiply(op.multiply(r, r2), series)))
    # (-1)^k = 1 - 2 * (k mod 2), with k mod 2 = k - 2 * floor(k / 2)
    odd = op.subtract(k, op.multiply(const(2.0), op.floor(op.multiply(k, const(0.5)))))
    return op.multiply(op.subtract(const(1.0), op.multiply(const(2.0), odd)), sine)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def visit_call_(self, call):  # noqa: D102 - PyExprMutator hook
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.sin" and str(call.ty.dtype) == "float32":
            return polynomial_sine(self.builder_, call.args[0])
        return call


@tvm.transform.module_pass(opt_level=0, name="PolynomialSine")
class PolynomialSine:
    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_functions(mod, _Rewriter(mod))
