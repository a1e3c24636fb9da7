"""Zero-waste ConvTranspose: rewrite Relax `conv{1,2,3}d_transpose` into a GEMM and a col2im gather.

TVM's own legalization dilates the input with stride-1 zeros and runs a dense convolution, so it
multiplies by zero (stride-1)/stride of the time. Here the multiply-adds are exactly the useful ones:

    cols[n, (co, k...), (i...)] = sum_ci  w[ci, co, k...] * x[n, ci, i...]      (GEMM, 2*Cin*Cout/g*K*L FLOPs)
    y[n, co, o...]              = sum_k   cols[n, (co, k...), ((o + pad_begin - k*dilation) / stride)]
                                        where that division is exact and in range    (col2im, memory bound)

With dilation 1 the col2im visits only the ceil(K/stride) taps that can land on each output.

The GEMM reads the weight packed as (groups, Mg/tile, Cin/g, tile), Mg = Cout/g * prod(K): one
micro-kernel's `tile` output rows are then one contiguous stream per input channel, where ONNX's
(Cin, Cout/g, K...) layout would touch a new page for every channel. The packing is a Relax
expression of the weight alone, so `LiftTransformParams` moves it out of `main` and the build runs
it once, shipping packed weights. Both stages are TE computes; FuseOps folds the bias add that
follows into the col2im kernel. Calls this cannot handle keep TVM's lowering, and the log says why.
"""

from __future__ import annotations

import logging
from functools import partial

import tvm
from tvm import relax, te, tirx

from .relax_rewrite import rewrite_calls, static_shape, unsupported_layout, unsupported_operands
from .vector_positions import padded_positions, zero_extended

log = logging.getLogger(__name__)

_LAYOUTS = {
    "relax.nn.conv1d_transpose": ("NCW", "IOW"),
    "relax.nn.conv2d_transpose": ("NCHW", "IOHW"),
    "relax.nn.conv3d_transpose": ("NCDHW", "IODHW"),
}


def _unsupported_reason(call) -> str | None:
    return unsupported_layout(call, *_LAYOUTS[call.op.name]) or unsupported_operands(call)


# Rows of one register-blocked micro-kernel; the CPU schedule reads it back from the packed shape.
ROW_TILE = 8


def row_tile(rows_per_group: int) -> int:
    """The largest power of two up to ROW_TILE that divides the rows, so tiles never straddle groups."""
    tile = ROW_TILE
    while rows_per_group % tile:
        tile //= 2
    return tile


def _pack_weight(w: relax.Expr, groups: int, tile: int) -> relax.Expr:
    """(Cin, Cout/g, K...) -> (g, Mg/tile, Cin/g, tile), Mg = Cout/g * prod(K)."""
    cin, cout_per_group, *kernel = static_shape(w)
    rows = cout_per_group * _product(kernel)
    blocked = relax.op.reshape(w, [groups, cin // groups, rows // tile, tile])
    return relax.op.permute_dims(blocked, [0, 2, 1, 3])


def _product(values) -> int:
    result = 1
    for v in values:
        result *= v
    return result


def _flat(index, sizes) -> tirx.PrimExpr:
    flat = index[0]
    for i, size in zip(index[1:], sizes[1:]):
        flat = flat * size + i
    return flat


def _gemm(x: te.Tensor, packed: te.Tensor, positions: int) -> te.Tensor:
    """cols[n, g*Mg + row, p] = sum_ci x[n, g*Cin/g + ci, p] * w[row of group g, ci]: input and
    columns flattened over positions, rows (output channel, taps...) of a group contiguous. Past the
    input's positions, up to `positions`, the input reads as zeros (a stage the CPU schedule inlines
    into its panel copy) and the columns are not read by col2im."""
    batch = int(x.shape[0])
    x = zero_extended(x, positions, "convt_pad")
    groups, row_tiles, cin_per_group, tile = (int(d) for d in packed.shape)
    rows_per_group = row_tiles * tile
    ci = te.reduce_axis((0, cin_per_group), name="ci")

    def product(n, row, p):
        # Written without the group division where there is one group: dlight's GPU Matmul rule
        # recognises a matmul only from plain indices, and gave this kernel its serial fallback.
        group, local = (0, row) if groups == 1 else (row // rows_per_group, row % rows_per_group)
        return te.sum(x[n, group * cin_per_group + ci, p] * packed[group, local // tile, ci, local % tile], axis=ci)

    return te.compute((batch, groups * rows_per_group, positions), product, name="convt_gemm")


def _col2im(cols: te.Tensor, kernel, in_size, strides, dilations, pads_begin, out_size) -> te.Tensor:
    """Sum, for every output position, the GEMM columns that land on it.

    With dilation 1, output t = o + pad_begin = q*stride + r only receives taps k = r + m*stride
    from input q - m, so the sum runs over ceil(K/stride) taps (polyphase) instead of all K with
    a divisibility test; dilated dims fall back to testing every tap."""
    rank = len(kernel)
    batch = cols.shape[0]
    cout = int(cols.shape[1]) // _product(kernel)
    polyphase = [dilations[d] == 1 for d in range(rank)]
    taps = [
        te.reduce_axis((0, -(-kernel[d] // strides[d]) if polyphase[d] else kernel[d]), name=f"m{d}")
        for d in range(rank)
    ]

    def gather(n, co, *out_pos):
        valid, tap_index, positions = [], [], []
        for d in range(rank):
            t = out_pos[d] + pads_begin[d]
            if polyphase[d]:
                tap = tirx.floormod(t, strides[d]) + taps[d] * strides[d]
                position = tirx.floordiv(t, strides[d]) - taps[d]
                valid += [tap < kernel[d], position >= 0, position < in_size[d]]
            else:
                tap = taps[d]
                shifted = t - tap * dilations[d]
                position = tirx.floordiv(shifted, strides[d])
                valid += [shifted >= 0, tirx.floormod(shifted, strides[d]) == 0, position < in_size[d]]
            tap_index.append(tap)
            positions.append(position)
        value = cols[n, co * _product(kernel) + _flat(tap_index, kernel), _flat(positions, in_size)]
        return te.sum(tirx.if_then_else(tirx.all(*valid), value, tirx.const(0, cols.dtype)), axis=taps)

    return te.compute((batch, cout, *out_size), gather, name="convt_col2im")


def _rewrite(builder: relax.BlockBuilder, call: relax.Call, pad_positions: bool) -> tuple[relax.Expr, str]:
    attrs = call.attrs
    x_shape, w_shape = static_shape(call.args[0]), static_shape(call.args[1])
    rank = len(x_shape) - 2
    strides = [int(s) for s in attrs.strides]
    dilations = [int(d) for d in attrs.dilation]
    padding = [int(p) for p in attrs.padding]
    output_padding = [int(p) for p in attrs.output_padding]
    pads_begin, pads_end = padding[:rank], padding[rank:]
    kernel = w_shape[2:]
    out_size = [
        (x_shape[2 + d] - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1
        + output_padding[d] - pads_begin[d] - pads_end[d]
        for d in range(rank)
    ]
    groups = int(attrs.groups)
    cout_per_group = w_shape[1]
    weight = call.args[1]
    packed = builder.emit(
        _pack_weight(weight, groups, row_tile(cout_per_group * _product(kernel))),
        name_hint=f"{weight.name}.packed" if isinstance(weight, relax.Var) else "packed_weight",
    )
    flat_x = call.args[0] if rank == 1 else builder.emit(
        relax.op.reshape(call.args[0], [x_shape[0], x_shape[1], _product(x_shape[2:])])
    )
    positions = padded_positions(_product(x_shape[2:])) if pad_positions else _product(x_shape[2:])
    cols = builder.emit(builder.call_te(_gemm, flat_x, packed, positions, primfunc_name_hint="convt_gemm"))
    col2im = builder.call_te(
        _col2im, cols, kernel, x_shape[2:], strides, dilations, pads_begin, out_size,
        primfunc_name_hint="convt_col2im",
    )
    return col2im, f"{x_shape}x{w_shape} s{strides} d{dilations} p{padding} op{output_padding} g{groups}"


def _selects(call: relax.Call) -> bool:
    return call.op.name in _LAYOUTS


@tvm.transform.module_pass(opt_level=0, name="ConvTransposeToGemm")
class ConvTransposeToGemm:
    """Rewrite every supported ConvTranspose into GEMM + col2im; log each rewrite and each refusal.
    With `pad_positions` (CPU targets) the GEMM computes whole vectors of positions
    (padded_positions); GPU kernels take any count."""

    def __init__(self, pad_positions: bool) -> None:
        self.pad_positions = pad_positions

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_calls(
            mod, _selects, _unsupported_reason, partial(_rewrite, pad_positions=self.pad_positions), log,
            "zero-waste lowering",
        )
