"""fp32 `sin` as arithmetic the CPU vectorizes, for the Snake activations.

LLVM turns TVM's `sin` into one libm call per lane: in an Oobleck block the Snake activations
then cost as much as the convolutions (about 15 ns per element on this machine). Written as
multiplies and adds, the same sine runs in vector registers:

    k = round(x / pi),  r = x - k*pi   (Cody-Waite: pi split in two, so r stays exact)
    sin(x) = (-1)^k * (r - r^3/3! + r^5/5! - ... + r^13/13!),   |r| <= pi/2

Max abs error 1.2e-7 against float64 sin for |x| <= 200 (checked in tests); Snake arguments
are alpha * x, of order 1. Other dtypes keep `sin`. The Snake's sin(x)^2 is one stage of its own
(sine_squared), its intermediates bound once.
"""

from __future__ import annotations

import math
from collections import Counter

import tvm
from tvm import relax, te, tirx

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


def sine_squared(x: te.Tensor) -> te.Tensor:
    """sin(x)^2, the Snake activation's, as one TE stage: the same series, squared, so the sign
    (-1)^k drops out. Its intermediates are bound once (Let): written as Relax operators, each use of
    r, r^2 and k repeats the expression below it once the stages are inlined into a kernel, and the
    CUDA source then spelled out about 20 KB of C per output of a Snake-fused Conv1d (27.5 MB for
    the SAO decoder, 1.5 minutes of nvcc)."""

    def const(value: float) -> tirx.PrimExpr:
        return tirx.const(value, "float32")

    value, k, r, r2 = (tirx.Var(name, "float32") for name in ("x", "k", "r", "r2"))
    series = const(TAYLOR[-1])
    for coefficient in reversed(TAYLOR[:-1]):
        series = const(coefficient) + r2 * series
    sine = tirx.Var("sine", "float32")
    body = tirx.Let(sine, r + r * r2 * series, sine * sine)
    body = tirx.Let(r2, r * r, body)
    body = tirx.Let(r, value - k * const(PI_HIGH) - k * const(PI_LOW), body)
    body = tirx.Let(k, tirx.round(value * const(1 / math.pi)), body)
    return te.compute(x.shape, lambda *i: tirx.Let(value, x(*i), body), name="sine_squared")


def _is_fp32_call(expr: relax.Expr, name: str) -> bool:
    return (
        isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name
        and str(expr.ty.dtype) == "float32"
    )


def _squared(call: relax.Call) -> relax.Expr | None:
    """What `call` squares: x for x * x (the Snake as written by hand) or x ** 2 (as PyTorch
    exports `sin(x) ** 2`); None for any other call."""
    if _is_fp32_call(call, "relax.multiply") and call.args[0].same_as(call.args[1]):
        return call.args[0]
    exponent = call.args[1] if _is_fp32_call(call, "relax.power") else None
    constant = getattr(exponent, "value", None)
    if isinstance(constant, tvm.runtime.Tensor) and constant.numpy().size == 1 and float(constant.numpy()) == 2:
        return call.args[0]
    return None


def _used_once(mod: tvm.IRModule) -> list[relax.Call]:
    """The calls of `mod`'s Relax functions whose result is read once. Only such a square becomes
    sine_squared: a stage with Let bindings inlined twice into one kernel would bind its variables
    twice, which TIR forbids."""
    calls = []
    for func in mod.functions.values():
        if not isinstance(func, relax.Function):
            continue
        bound = relax.analysis.get_var2val(func)
        reads = Counter()
        for value in [*bound.values(), func.body.body]:
            for operand in value.args if isinstance(value, relax.Call) else [value]:
                for item in operand.fields if isinstance(operand, relax.Tuple) else [operand]:
                    if isinstance(item, relax.Var):
                        reads[item] += 1
        calls += [value for var, value in bound.items() if isinstance(value, relax.Call) and reads[var] == 1]
    return calls


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        # (polynomial, argument) for each sin rewritten, so that sin(x) * sin(x) can become
        # sine_squared(x) (the polynomial then has no use left and is removed).
        self.sines: list[tuple[relax.Expr, relax.Expr]] = []
        self.used_once = _used_once(mod)

    def visit_call_(self, call):  # noqa: D102 - PyExprMutator hook
        read_once = _squared(call) is not None and any(call.same_as(other) for other in self.used_once)
        call = super().visit_call_(call)
        if _is_fp32_call(call, "relax.sin"):
            sine = self.builder_.emit(polynomial_sine(self.builder_, call.args[0]))
            self.sines.append((sine, call.args[0]))
            return sine
        squared = _squared(call) if read_once else None
        if squared is not None:
            bound = self.lookup_binding(squared)
            for sine, argument in self.sines:
                if squared.same_as(sine) or (bound is not None and bound.same_as(sine)):
                    return self.builder_.call_te(sine_squared, argument, primfunc_name_hint="sine_squared")
        return call


@tvm.transform.module_pass(opt_level=0, name="PolynomialSine")
class PolynomialSine:
    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewritten = rewrite_functions(mod, _Rewriter(mod))
        for gv, func in rewritten.functions.items():
            if isinstance(func, relax.Function):
                rewritten[gv] = relax.analysis.remove_all_unused(func)
        return rewritten
