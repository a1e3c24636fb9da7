"""What the Relax rewriting passes share: static shapes, the operand checks, and running a mutator
over every Relax function of a module."""

from __future__ import annotations

import tvm
from tvm import relax, tirx

FLOAT_DTYPES = {"float32", "float16", "float64"}


def static_shape(expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    if shape is None:
        return None
    dims = []
    for d in shape.values:
        if not isinstance(d, tirx.IntImm):
            return None
        dims.append(int(d))
    return dims


def unsupported_layout(call, data_layout: str, kernel_layout: str) -> str | None:
    """Why a convolution call's layouts are not the ones a rewrite handles, or None."""
    attrs = call.attrs
    if attrs.data_layout != data_layout or attrs.kernel_layout != kernel_layout:
        return f"layout {attrs.data_layout}/{attrs.kernel_layout} (handled: {data_layout}/{kernel_layout})"
    if attrs.out_layout not in ("", data_layout):
        return f"out_layout {attrs.out_layout}"
    return None


def unsupported_operands(call) -> str | None:
    """Why the (data, weight) operands of a convolution call cannot be rewritten, or None."""
    if static_shape(call.args[0]) is None or static_shape(call.args[1]) is None:
        return "symbolic shapes"
    dtypes = {str(call.args[0].ty.dtype), str(call.args[1].ty.dtype)}
    if len(dtypes) != 1 or not dtypes <= FLOAT_DTYPES:
        return f"dtypes {sorted(dtypes)}"
    out_dtype = call.attrs.out_dtype
    if out_dtype is not None and str(out_dtype) not in ("", *dtypes):
        return f"out_dtype {out_dtype}"
    return None


def rewrite_functions(mod: tvm.IRModule, rewriter: relax.PyExprMutator) -> tvm.IRModule:
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.finalize()
