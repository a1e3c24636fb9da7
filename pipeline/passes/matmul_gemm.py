"""MatMul (ONNX MatMul and Gemm: Linear layers, attention) on our packed GEMM. TVM's lowering runs
it untuned, on one thread: a Vocos-like decoder (1-D ConvNeXt blocks, Linear 384 -> 1152 -> 384
on 256 positions) took 74x onnxruntime's time, a VAE-style attention block over 32 x 32 positions
165x (`bench --onnx`, side by side).

    y[..., m, n] = sum_k a[..., m, k] * b[..., k, n]

is the Conv1d of kernel 1 that conv_gemm runs, with the rows m as its output channels and the
columns n as its positions: `b` is read as the input (batch, channels k, positions n), contiguous
along n like the micro-kernel's vectors, and `a` as the weight (groups, M/tile, K, tile). A batch
of matrix pairs runs as the groups of one grouped GEMM; where `b` has no batch (a Linear layer's
weight), a's batch rows stack into one GEMM instead.

A constant `a` is packed into that layout once, at build time (LiftTransformParams). An `a`
computed from the graph's inputs (a Linear layer's activations) is read in place, through a stage
of the GEMM's kernel that the schedules inline: each micro-kernel then reads its `tile` rows side
by side, one stream per row, where a kernel of its own had packed it on every call (0.47 of
lndec's 12.4 ms). Kernel times, builds alternated in one process: lndec 12.08 -> 11.60 ms, mm1
1.115 -> 1.087, mmh 3.200 -> 3.153 (the GEMMs themselves within 1.3%). Where those rows would
share L1 sets (rows of 1, 2 or 4 KiB), `a` is still packed on each call: attn's, read in place,
took 8.72 ms against 8.44.

Vector operands, symbolic shapes and integer matmuls keep TVM's lowering, and the log says why.
"""

from __future__ import annotations

import logging
import math

import tvm
from tvm import relax, te, tirx

from .conv_gemm import pack_rows, packed_gemm
from .convtranspose_gemm import row_tile
from .relax_rewrite import rewrite_calls, static_shape, unsupported_operands
from .vector_positions import cropped, padded_positions, zero_extended

log = logging.getLogger(__name__)

# The name of the stage through which the GEMM reads a transposed right operand, which the CPU
# schedule copies in its own loop order.
TRANSPOSED_OPERAND_STAGE = "matmul_transposed"
# The name of the stage through which it reads a left operand in place.
ROWS_IN_PLACE_STAGE = "matmul_rows"
# L1 data caches index their sets by the address bits below 4 KiB (64 sets of 64-byte lines, on
# the x86 and Arm cores we know).
L1_SET_SPAN_BYTES = 4096
CACHE_LINE_BYTES = 64


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


def _reads_any(builder: relax.BlockBuilder, expr: relax.Expr, variables: list[relax.Var]) -> bool:
    """Whether `expr` reads one of `variables`, directly or through the bindings before it."""
    pending, seen = [expr], []
    while pending:
        for var in relax.analysis.free_vars(pending.pop()):
            if any(var.same_as(v) for v in variables):
                return True
            if any(var.same_as(s) for s in seen):
                continue
            seen.append(var)
            bound = builder.lookup_binding(var)
            if bound is not None:
                pending.append(bound)
    return False


def _rows_share_no_l1_set(length: int, dtype: str, tile: int) -> bool:
    """Whether the first lines of `tile` rows of `length` elements, one after another, lie in as
    many L1 sets as they are lines (rows 1, 2 or 4 KiB long put two or more in one set)."""
    row_bytes = length * tvm.DataType(dtype).bits // 8
    lines = {row * row_bytes // CACHE_LINE_BYTES for row in range(tile)}
    return len({line % (L1_SET_SPAN_BYTES // CACHE_LINE_BYTES) for line in lines}) == len(lines)


def _unraveled(flat, shape) -> list:
    """The index into `shape` of element `flat` of its row-major order."""
    index = []
    for extent in reversed([int(d) for d in shape]):
        index.append(flat % extent if extent > 1 else 0)
        flat = flat // extent
    return index[::-1]


def _rewrite(
    builder: relax.BlockBuilder, call: relax.Call, inputs: list[relax.Var], pad_positions: bool
) -> tuple[relax.Expr, str]:
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
    tile = row_tile(rows)
    in_place = _reads_any(builder, a, inputs) and _rows_share_no_l1_set(k, str(a.ty.dtype), tile)
    if in_place:
        # `a` as it is, not reshaped: a reshape of a graph input is a copy (see output_reshape_views).
        rows_operand = a

        def weight_stage(x):
            return te.compute(
                (batches, rows // tile, k, tile),
                lambda g, m, c, r: x[(*_unraveled(g * rows + m * tile + r, x.shape[:-1]), c)],
                name=ROWS_IN_PLACE_STAGE,
            )
    else:
        flat_rows = _reshaped(builder, a, [batches * rows, k])
        rows_operand = builder.emit(pack_rows(flat_rows, batches, tile), name_hint="packed_rows")

        def weight_stage(x):
            return x

    # Past the n columns (up to `positions`, whole vectors on a CPU) the operand reads as zeros.
    positions = padded_positions(n) if pad_positions else n
    # A transposed right operand is read through a stage of the GEMM's kernel, which the schedule
    # inlines into its copy of each input panel, instead of a transpose kernel of its own.
    source = _transposed_source(builder, b)
    if source is not None:
        columns = _reshaped(builder, source, [batches, n, k])

        def data_stage(x):
            # Zeros past n in this stage itself, not by zero_extended after it: the schedule finds
            # the transposed stage among the GEMM's direct producers and inlines only those.
            def read(g, c, t):
                return x[g, t, c] if positions == n else tirx.if_then_else(t < n, x[g, t, c], tirx.const(0, x.dtype))

            return te.compute((batches, k, positions), read, name=TRANSPOSED_OPERAND_STAGE)
    else:
        columns = _reshaped(builder, b, [batches, k, n])

        def data_stage(x):
            return zero_extended(x, positions, "matmul_pad")

    product = builder.call_te(
        lambda x, w: cropped(
            packed_gemm(
                data_stage(x), weight_stage(w), kernel=1, stride=1, dilation=1, out_len=positions,
                weight_per_batch=True,
            ),
            n,
            "matmul_gemm_crop",
        ),
        columns,
        rows_operand,
        primfunc_name_hint="matmul_gemm",
    )
    # A reshape after the GEMM would keep FuseOps from fusing the bias and activation into it.
    if out_shape != [batches, rows, n]:
        product = relax.op.reshape(builder.emit(product), out_shape)
    transposed = "ᵀ" if source is not None else ""
    read = ", left operand read in place" if in_place else ""
    return product, f"{a_shape}x{b_shape}{transposed}{read}"


def _inputs(func) -> list[relax.Var]:
    """A Relax function's parameters that are not weights: those before its `num_input` (the
    importer's; LiftTransformParams prepares the others once, at build time), all where it has none."""
    if not isinstance(func, relax.Function):
        return []
    count = int(func.attrs["num_input"]) if func.attrs is not None and "num_input" in func.attrs else None
    return list(func.params[:count])


@tvm.transform.module_pass(opt_level=0, name="MatmulToGemm")
class MatmulToGemm:
    """Rewrite every supported matmul into our packed GEMM; log each rewrite and each refusal. With
    `pad_positions` (CPU targets) the GEMM computes whole vectors of columns (padded_positions); GPU
    kernels take any count."""

    def __init__(self, pad_positions: bool) -> None:
        self.pad_positions = pad_positions

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        inputs = [param for func in mod.functions.values() for param in _inputs(func)]
        return rewrite_calls(
            mod, _selects, _unsupported, lambda builder, call: _rewrite(builder, call, inputs, self.pad_positions), log,
            "matmul as GEMM",
        )
