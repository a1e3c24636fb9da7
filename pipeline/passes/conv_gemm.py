"""Conv1d as a GEMM over a packed weight, so the residual units run on the same micro-kernel as
the ConvTranspose GEMM instead of TVM's untuned direct convolution (80x slower than onnxruntime
on the Oobleck blocks, measured).

    y[n, co, t] = sum_{ci, k} x_padded[n, ci, t*stride + k*dilation] * w[co, ci, k]

The reduction runs over (ci, k) as two loops (one flattened index cost a division per step and
halved the speed); the weight is packed as (1, Cout/tile, Cin*K, tile)
by a Relax expression of the weight alone, which `LiftTransformParams` moves to build time like the
ConvTranspose packing. The zero padding is a TE stage of the same kernel, which the CPU schedule
inlines into its copy of each input panel. Grouped, non-NCW or symbolic convolutions keep TVM's
lowering, and the log says why.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax, te, tirx

from .convtranspose_gemm import row_tile
from .relax_rewrite import rewrite_functions, static_shape, unsupported_operands

log = logging.getLogger(__name__)


def _unsupported_reason(call) -> str | None:
    attrs = call.attrs
    if (attrs.data_layout, attrs.kernel_layout) != ("NCW", "OIW") or attrs.out_layout not in ("", "NCW"):
        return f"layout {attrs.data_layout}/{attrs.kernel_layout}/{attrs.out_layout} (handled: NCW/OIW)"
    if int(attrs.groups) != 1:
        return f"groups={int(attrs.groups)}"
    return unsupported_operands(call)


def _pack_weight(w: relax.Expr, tile: int) -> relax.Expr:
    """(Cout, Cin, K) -> (1, Cout/tile, Cin*K, tile)."""
    cout, cin, kernel = static_shape(w)
    rows = relax.op.reshape(w, [cout // tile, tile, cin * kernel])
    return relax.op.reshape(relax.op.permute_dims(rows, [0, 2, 1]), [1, cout // tile, cin * kernel, tile])


def _conv_gemm(x: te.Tensor, packed: te.Tensor, kernel: int, stride: int, dilation: int, pad_begin: int, out_len: int):
    batch, channels, length = (int(d) for d in x.shape)
    _, _, reduction, tile = (int(d) for d in packed.shape)
    padded_len = (out_len - 1) * stride + (kernel - 1) * dilation + 1
    padded = te.compute(
        (batch, channels, padded_len),
        lambda n, c, t: tirx.if_then_else(
            tirx.all(t >= pad_begin, t < pad_begin + length), x[n, c, t - pad_begin], tirx.const(0, x.dtype)
        ),
        name="conv_pad",
    )
    ci = te.reduce_axis((0, reduction // kernel), name="ci")
    k = te.reduce_axis((0, kernel), name="k")
    cout = int(packed.shape[1]) * tile
    return te.compute(
        (batch, cout, out_len),
        lambda n, co, t: te.sum(
            padded[n, ci, t * stride + k * dilation] * packed[0, co // tile, ci * kernel + k, co % tile], axis=[ci, k]
        ),
        name="conv_gemm",
    )


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.rewritten: list[str] = []
        self.kept: list[str] = []

    def visit_call_(self, call):  # noqa: D102 - PyExprMutator hook
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv1d":
            return call
        reason = _unsupported_reason(call)
        if reason is not None:
            self.kept.append(reason)
            return call
        attrs = call.attrs
        x_shape, w_shape = static_shape(call.args[0]), static_shape(call.args[1])
        cout, _, kernel = w_shape
        stride, dilation = int(attrs.strides[0]), int(attrs.dilation[0])
        pad_begin, pad_end = (int(p) for p in attrs.padding)
        out_len = (x_shape[2] + pad_begin + pad_end - (kernel - 1) * dilation - 1) // stride + 1
        weight = call.args[1]
        packed = self.builder_.emit(
            _pack_weight(weight, row_tile(cout)),
            name_hint=f"{weight.name}.packed" if isinstance(weight, relax.Var) else "packed_weight",
        )
        self.rewritten.append(f"conv1d {x_shape}x{w_shape} s{stride} d{dilation} p{[pad_begin, pad_end]}")
        return self.builder_.call_te(
            _conv_gemm, call.args[0], packed, kernel, stride, dilation, pad_begin, out_len, primfunc_name_hint="conv_gemm"
        )


@tvm.transform.module_pass(opt_level=0, name="ConvToGemm")
class ConvToGemm:
    """Rewrite every supported conv1d into a packed-weight GEMM; log each rewrite and each refusal."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _Rewriter(mod)
        rewritten = rewrite_functions(mod, rewriter)
        log.info("conv1d as GEMM: %d rewritten", len(rewriter.rewritten))
        for line in rewriter.kept:
            log.warning("conv1d as GEMM does not apply (%s); TVM's lowering is kept for it", line)
        return rewritten
