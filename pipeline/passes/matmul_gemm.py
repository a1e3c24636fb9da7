"""MatMul (ONNX MatMul and Gemm: Linear layers, attention) on our packed GEMM. TVM's lowering runs
it untuned, on one thread: a Vocos-like decoder (1-D ConvNeXt blocks, Linear 384 -> 1152 -> 384
on 256 positions) took 74x onnxruntime's time, a VAE-style attention block over 32 x 32 positions
165x (`bench --onnx`, side by side).

    y[..., m, n] = sum_k a[..., m, k] * b[..., k, n]

is the Conv1d of kernel 1 that conv_gemm runs, with the rows m as its output channels and the
columns n as its positions: `b` is read as the input (batch, channels k, positions n), contiguous
along n like the micro-kernel's vectors, and `a` is packed as the weight (groups, M/tile, K, tile)
by a small kernel of its own at run time (its M x K elements against the GEMM's M x K x N
multiply-adds). A batch of matrix pairs runs as the groups of one grouped GEMM; where `b` has no
batch (a Linear layer's weight), a's batch rows stack into one GEMM instead.

Vector operands, symbolic shapes and integer matmuls keep TVM's lowering, and the log says why.
"""

from __future__ import annotations

import logging
import math

import tvm
from tvm import relax, te

from .conv_gemm import pack_rows, packed_gemm
from .convtranspose_gemm import row_tile
from .relax_rewrite import rewrite_calls, static_shape, unsupported_operands

log = logging.getLogger(__name__)

# The name of the stage through which the GEMM reads a transposed right operand, which the CPU
# schedule copies in its own loop order.
TRANSPOSED_OPERAND_STAGE = "matmul_transposed"


def _selects(call: relax.Call) -> bool:
    return call.op.name == "relax.matmul"


def _unsupported(call: relax.Call) -> str | None:
    reason = unsupported_operands(call)
    if reason is None and min(len(static_shape(arg)) for arg in call.args) < 2:
        return "a vector operand"
    return reason


def _broadcast(builder: relax.BlockBuilder, x: relax.Expr, shape: list[int]) -> relax.Expr:
    return x if static_shape(x) == shape else builder.emit(relax.op.broadcast_to(x, shape))


def _reshaped(builder: relax.BlockBuilder, x: relax.Expr, shape: list[int]) -> relax.Expr:
    return x if static_shape(x) == shape else builder.emit(relax.op.reshape(x, shape))


def _transposed_source(builder: relax.BlockBuilder, b: relax.Expr) -> relax.Expr | None:
    """x where `b` is x with its last two axes swapped by the graph (`q @ k.transpose(-1, -2)`)."""
    bound = builder.lookup_binding(b) if isinstance(b, relax.Var) else None
    if not (isinstance(bound, relax.Call) and isinstance(bound.op, tvm.ir.Op)) or bound.op.name != "relax.permute_dims":
        return None
    rank = len(static_shape(b))
    axes = bound.attrs.axes
    swapped = [*range(rank - 2), rank - 1, rank - 2]
    return bound.args[0] if axes is not None and [int(a) for a in axes] == swapped else None


def _rewrite(builder: relax.BlockBuilder, call: relax.Call) -> tuple[relax.Expr, str]:
    a, b = call.args
    a_shape, b_shape = static_shape(a), static_shape(b)
    out_shape = static_shape(call)
    *batch, m, n = out_shape
    k = a_shape[-1]
    if math.prod(b_shape[:-2]) == 1:
        batches, rows = 1, math.prod(batch) * m
    else:
        batches, rows = math.prod(batch), m
        a = _broadcast(builder, a, [*batch, m, k])
        b = _broadcast(builder, b, [*batch, k, n])
    flat_rows = _reshaped(builder, a, [batches * rows, k])
    packed = builder.emit(pack_rows(flat_rows, batches, row_tile(rows)), name_hint="packed_rows")
    # A transposed right operand is read through a stage of the GEMM's kernel, which the schedule
    # inlines into its copy of each input panel, instead of a transpose kernel of its own.
    source = _transposed_source(builder, b)
    if source is not None:
        columns = _reshaped(builder, source, [batches, n, k])

        def data_stage(x):
            return te.compute((batches, k, n), lambda g, c, t: x[g, t, c], name=TRANSPOSED_OPERAND_STAGE)
    else:
        columns = _reshaped(builder, b, [batches, k, n])

        def data_stage(x):
            return x

    product = builder.call_te(
        lambda x, w: packed_gemm(data_stage(x), w, kernel=1, stride=1, dilation=1, out_len=n, weight_per_batch=True),
        columns,
        packed,
        primfunc_name_hint="matmul_gemm",
    )
    # A reshape after the GEMM would keep FuseOps from fusing the bias and activation into it.
    if out_shape != [batches, rows, n]:
        product = relax.op.reshape(builder.emit(product), out_shape)
    transposed = "ᵀ" if source is not None else ""
    return product, f"{a_shape}x{b_shape}{transposed}"


@tvm.transform.module_pass(opt_level=0, name="MatmulToGemm")
class MatmulToGemm:
    """Rewrite every supported matmul into our packed GEMM; log each rewrite and each refusal."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_calls(mod, _selects, _unsupported, _rewrite, log, "matmul as GEMM")
