"""What the Relax rewriting passes share: static shapes, the layout and operand checks, convolution
size arithmetic, and a mutator that rewrites the calls of some operators over every Relax function
of a module, and logs what it did."""

from __future__ import annotations

import logging
from collections.abc import Callable

import tvm
from tvm import relax, tirx

# What a rewrite makes of one call: the expression that replaces it (built with the block
# builder, which emits what it needs before it), and a line for the log.
Rewrite = Callable[[relax.BlockBuilder, relax.Call], tuple[relax.Expr, str]]

FLOAT_DTYPES = {"float32", "float16", "float64"}
# The (data, kernel) layouts the convolution rewrites handle, per operator.
CONV_LAYOUTS = {
    "relax.nn.conv1d": ("NCW", "OIW"),
    "relax.nn.conv2d": ("NCHW", "OIHW"),
}


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


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pads: int) -> int:
    """Outputs of a convolution along one axis; `pads` is the padding at both ends together."""
    return (size + pads - (kernel - 1) * dilation - 1) // stride + 1


def conv_reach(outputs: int, kernel: int, stride: int, dilation: int) -> int:
    """Input positions (padding included) that `outputs` outputs along one axis read."""
    return (outputs - 1) * stride + (kernel - 1) * dilation + 1


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


def unsupported_conv(call) -> str | None:
    """Why a conv1d/conv2d call cannot be rewritten (layouts other than CONV_LAYOUTS', operands),
    or None."""
    return unsupported_layout(call, *CONV_LAYOUTS[call.op.name]) or unsupported_operands(call)


def rewrite_functions(mod: tvm.IRModule, rewriter: relax.PyExprMutator) -> tvm.IRModule:
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.finalize()


@relax.expr_functor.mutator
class _CallRewriter(relax.PyExprMutator):
    def __init__(
        self,
        mod: tvm.IRModule,
        selects: Callable[[relax.Call], bool],
        unsupported: Callable[[relax.Call], str | None],
        rewrite: Rewrite,
    ) -> None:
        super().__init__(mod)
        self.selects, self.unsupported, self.rewrite = selects, unsupported, rewrite
        self.rewritten: list[str] = []
        self.kept: list[str] = []

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or not self.selects(call):
            return call
        reason = self.unsupported(call)
        if reason is not None:
            self.kept.append(f"{call.op.name}: {reason}")
            return call
        replacement, line = self.rewrite(self.builder_, call)
        self.rewritten.append(f"{call.op.name} {line}")
        return replacement


def rewrite_calls(
    mod: tvm.IRModule,
    selects: Callable[[relax.Call], bool],
    unsupported: Callable[[relax.Call], str | None],
    rewrite: Rewrite,
    log: logging.Logger,
    what: str,
) -> tvm.IRModule:
    """`mod` with every operator call that `selects` picks replaced by `rewrite`, unless
    `unsupported` says why not. The log says how many were rewritten (each one at debug level)
    and, as a warning, each call kept for TVM's lowering and why."""
    rewriter = _CallRewriter(mod, selects, unsupported, rewrite)
    rewritten = rewrite_functions(mod, rewriter)
    log.info("%s: %d rewritten", what, len(rewriter.rewritten))
    for line in rewriter.rewritten:
        log.debug("%s: %s", what, line)
    for line in rewriter.kept:
        log.warning("%s does not apply to %s; TVM's lowering is kept for it", what, line)
    return rewritten
