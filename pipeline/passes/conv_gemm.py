"""Conv1d and Conv2d as a GEMM over a packed weight, so the residual units (and the 3x3 convolutions
of image decoders) run on the same micro-kernel as the ConvTranspose GEMM instead of TVM's untuned
direct convolution (80x slower than onnxruntime on the Oobleck blocks, measured).

Conv1d:

    y[n, co, t] = sum_{ci, k} x_padded[n, ci, t*stride + k*dilation] * w[co, ci, k]

The reduction runs over (ci, k) as two loops (one flattened index cost a division per step and
halved the speed); the weight is packed as (groups, Cout/groups/tile, Cin/groups*K, tile) by a
Relax expression of the weight alone, which `LiftTransformParams` moves to build time like the
ConvTranspose packing. The zero padding is a TE stage of the same kernel, which the CPU schedule
inlines into its copy of each input panel.

Conv2d becomes that Conv1d (see _RowLayout): the output rows laid end to end, channels (ci, kh)
for each input channel and kernel row, taps the KW kernel columns. A kernel of its own first pads
the input into rows of the right width (_row_phases); the GEMM's input stage reads channel (ci, kh)
as a slice of it at a constant offset and is inlined into the GEMM's reads (or its panel copy), so
the KH-fold input never exists. Each output row is a few positions wider than the output (the
taps reach past it), and a crop after the kernel drops those positions.

Grouped convolutions run group by group inside the one GEMM: a tile of output channels never
straddles two groups, and reads its own group's input channels. Depthwise convolutions (one input
channel per group) are depthwise_conv's, which runs first: our GEMM measured slower on them.
Non-NCW/NCHW or symbolic convolutions keep TVM's lowering, and the log says why.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property, partial

import tvm
from tvm import relax, te, tirx

from .convtranspose_gemm import row_tile
from .relax_rewrite import (
    CONV_LAYOUTS,
    conv_output_size,
    conv_reach,
    rewrite_calls,
    static_shape,
    unsupported_conv,
)
from .vector_positions import VECTOR_POSITIONS, cropped, padded_positions

log = logging.getLogger(__name__)

# A Conv2d's GEMM computes a multiple of this many positions, so the micro-kernel's vectors (up
# to 2 x 16 lanes) divide them: a partial vector puts a bounds test in the innermost loop.
POSITION_MULTIPLE = 2 * VECTOR_POSITIONS


def _selects(call: relax.Call) -> bool:
    return call.op.name in CONV_LAYOUTS


def pack_rows(w: relax.Expr, groups: int, tile: int) -> relax.Expr:
    """(Cout, Cin/groups, K...) -> (groups, Cout/groups/tile, Cin/groups*prod(K), tile): the GEMM's
    row operand, each tile's rows side by side for every reduction step."""
    cout, *reduction = static_shape(w)
    size = math.prod(reduction)
    rows = relax.op.reshape(w, [groups, cout // groups // tile, tile, size])
    return relax.op.permute_dims(rows, [0, 1, 3, 2])


def packed_gemm(
    data: te.Tensor,
    packed: te.Tensor,
    kernel: int,
    stride: int,
    dilation: int,
    out_len: int,
    weight_per_batch: bool = False,
) -> te.Tensor:
    """The Conv1d over the kernel's input stage `data` (batch, Cin, padded length): the block
    `conv_gemm`, which the CPU and GPU schedules know by name. With `weight_per_batch` the packed
    operand's first axis is the batch (one row operand per batch entry, as in a batched matmul)
    instead of the groups."""
    batch = int(data.shape[0])
    blocks, tiles_per_group, reduction, tile = (int(d) for d in packed.shape)
    groups = 1 if weight_per_batch else blocks
    channels_per_group = reduction // kernel
    ci = te.reduce_axis((0, channels_per_group), name="ci")
    k = te.reduce_axis((0, kernel), name="k")
    cout_per_group = tiles_per_group * tile

    def product(n, co, t):
        # Written without the group division where there is one group: dlight's GPU Matmul rule
        # does not see a matmul through it.
        group, local = (0, co) if groups == 1 else (co // cout_per_group, co % cout_per_group)
        return te.sum(
            data[n, group * channels_per_group + ci, t * stride + k * dilation]
            * packed[n if weight_per_batch else group, local // tile, ci * kernel + k, local % tile],
            axis=[ci, k],
        )

    return te.compute((batch, groups * cout_per_group, out_len), product, name="conv_gemm")


def _conv1d_gemm(
    x: te.Tensor, packed: te.Tensor, kernel: int, stride: int, dilation: int, pad_begin: int, out_len: int,
    positions: int,
):
    """The GEMM computes `positions` >= out_len (whole vectors: padded_positions), reading zeros past
    the input, and a last stage of the kernel keeps the first out_len."""
    batch, channels, length = (int(d) for d in x.shape)
    padded = te.compute(
        (batch, channels, conv_reach(positions, kernel, stride, dilation)),
        lambda n, c, t: tirx.if_then_else(
            tirx.all(t >= pad_begin, t < pad_begin + length), x[n, c, t - pad_begin], tirx.const(0, x.dtype)
        ),
        name="conv_pad",
    )
    return cropped(packed_gemm(padded, packed, kernel, stride, dilation, positions), out_len, "conv_gemm_crop")


def _grid(rows: int, min_width: int) -> tuple[int, int]:
    """(rows, row width), at least the given ones, whose product is a multiple of POSITION_MULTIPLE,
    the fewest positions first. The GEMM's output is then exactly these rows, which the crop
    (_crop) reads at a row stride: a slice of the flat output fused into the GEMM kernel, which
    dlight's GPU matmul rule cannot schedule."""
    candidates = (
        (r * w, r, w)
        for r in range(rows, rows + POSITION_MULTIPLE)
        for w in range(min_width, min_width + POSITION_MULTIPLE)
        if r * w % POSITION_MULTIPLE == 0
    )
    _, best_rows, best_width = min(candidates)
    return best_rows, best_width


@dataclass(frozen=True)
class _RowLayout:
    """A Conv2d as a Conv1d over rows of output positions laid end to end: `grid` = (rows, row
    width), at least the output's rows and enough positions per row that each row's input holds a
    whole padded input row; the output is its top-left corner.

    The input is zero-padded to rows of `input_row` = row width * stride_w columns and
    `padded_height` rows, its rows regrouped by their index modulo stride_h (phases) and each phase
    flattened, so that output row q, tap kh reads phase (kh * dilation_h) % stride_h at row q +
    (kh * dilation_h) // stride_h: a fixed offset from the output position in that flat phase.
    Conv1d channel (ci, kh) is therefore a slice of the flat input at a constant offset, and the
    copy of an input panel needs no index arithmetic per position."""

    in_size: tuple[int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]

    @property
    def out_size(self) -> tuple[int, int]:
        return tuple(
            conv_output_size(
                self.in_size[d], self.kernel[d], self.strides[d], self.dilations[d], self.pads[d] + self.pads[2 + d]
            )
            for d in range(2)
        )

    @cached_property
    def grid(self) -> tuple[int, int]:
        padded_width = self.pads[1] + self.in_size[1] + self.pads[3]
        return _grid(self.out_size[0], max(self.out_size[1], -(-padded_width // self.strides[1])))

    @property
    def input_row(self) -> int:
        return self.grid[1] * self.strides[1]

    @property
    def positions(self) -> int:
        rows, width = self.grid
        return rows * width

    @property
    def row_length(self) -> int:
        """Positions of each Conv1d input channel: what the GEMM reads, in whole strides (the CPU
        schedule splits a strided panel into its phases)."""
        reach = conv_reach(self.positions, self.kernel[1], self.strides[1], self.dilations[1])
        return -(-reach // self.strides[1]) * self.strides[1]

    def row_offset(self, kh) -> tuple:
        """(phase, flat offset) where tap row kh of output position 0 lies."""
        step = kh * self.dilations[0]
        return tirx.floormod(step, self.strides[0]), tirx.floordiv(step, self.strides[0]) * self.input_row

    @property
    def padded_height(self) -> int:
        """Rows of the padded input: the input and its top padding, and every row a read reaches
        (the taps of the extra rows and positions reach past the output), in whole phases."""
        stride_h = self.strides[0]
        furthest = self.row_length + (self.kernel[0] - 1) * self.dilations[0] // stride_h * self.input_row
        phase_rows = max(-(-furthest // self.input_row), -(-(self.pads[0] + self.in_size[0]) // stride_h))
        return phase_rows * stride_h


# The block annotation that tells the CPU schedule how long a padded input row is (see
# _row_phases): its flat positions then split into rows and columns without a division each.
INPUT_ROW_ANNOTATION = "conv_input_row"
# And on the GEMM's input stage of a Conv2d, its stride along the row (the GEMM reads positions
# t * stride + tap): whether the schedule copies panels depends on it.
CONV_STRIDE_ANNOTATION = "conv_stride"
# Where the rows are not strided: the stage's channels are (input channel, kernel row), this many
# kernel rows per input channel, kernel row kh reading kh times the pitch further along the flat
# input. Whether and what the CPU schedule prefetches depends on them (see panel_prefetch).
KERNEL_ROWS_ANNOTATION = "conv_kernel_rows"
KERNEL_ROW_PITCH_ANNOTATION = "conv_kernel_row_pitch"


def _row_phases(x: te.Tensor, layout: _RowLayout) -> te.Tensor:
    """The zero-padded input with its rows grouped by phase (see _RowLayout), each phase flat:
    (N, C * stride_h, padded_height / stride_h * input_row). A kernel of its own, because the
    panel copies of the GEMM then read plain slices of it."""
    batch, channels, height, width = (int(d) for d in x.shape)
    stride_h = layout.strides[0]

    def padded(n, c, f):
        ci, phase = tirx.floordiv(c, stride_h), tirx.floormod(c, stride_h)
        h = tirx.floordiv(f, layout.input_row) * stride_h + phase - layout.pads[0]
        w = tirx.floormod(f, layout.input_row) - layout.pads[1]
        inside = tirx.all(h >= 0, h < height, w >= 0, w < width)
        return tirx.if_then_else(inside, x[n, ci, h, w], tirx.const(0, x.dtype))

    return te.compute(
        (batch, channels * stride_h, layout.padded_height // stride_h * layout.input_row),
        padded,
        name="conv_row_phases",
        attrs={INPUT_ROW_ANNOTATION: layout.input_row},
    )


def _conv2d_gemm(phases: te.Tensor, packed: te.Tensor, layout: _RowLayout) -> te.Tensor:
    """The Conv1d over (ci, kh) channels, each a slice of `phases` at a constant offset."""
    batch, phase_channels, _ = (int(d) for d in phases.shape)
    kernel_h, kernel_w = layout.kernel
    stride_w, dilation_w = layout.strides[1], layout.dilations[1]

    def row_channel(n, c, t):
        ci, kh = tirx.floordiv(c, kernel_h), tirx.floormod(c, kernel_h)
        phase, offset = layout.row_offset(kh)
        return phases[n, ci * layout.strides[0] + phase, t + offset]

    attrs = {CONV_STRIDE_ANNOTATION: stride_w}
    if layout.strides[0] == 1:
        attrs[KERNEL_ROWS_ANNOTATION] = kernel_h
        attrs[KERNEL_ROW_PITCH_ANNOTATION] = layout.input_row * layout.dilations[0]
    rows = te.compute(
        (batch, phase_channels // layout.strides[0] * kernel_h, layout.row_length),
        row_channel,
        name="conv_rows",
        attrs=attrs,
    )
    return packed_gemm(rows, packed, kernel_w, stride_w, dilation_w, layout.positions)


def _crop(builder: relax.BlockBuilder, flat: relax.Expr, batch: int, channels: int, layout: _RowLayout) -> relax.Expr:
    """(N, Cout, positions) -> (N, Cout, H, W): the rows apart, without the extra rows and positions.
    A compute of its own, not a reshape and a strided slice, whose generic index arithmetic (a
    division and a modulo by the flat length per element) kept the padding kernel that FuseOps fuses
    the crop into from vectorizing: 1.45 -> 0.34 ms for 32 channels of 256 x 256 (a UNet's last
    stage)."""
    if layout.grid == layout.out_size:
        return relax.op.reshape(flat, [batch, channels, *layout.grid])
    width = layout.grid[1]
    return builder.call_te(
        lambda x: te.compute(
            (batch, channels, *layout.out_size), lambda n, c, h, w: x[n, c, h * width + w], name="conv_crop"
        ),
        flat,
        primfunc_name_hint="conv_crop",
    )


def _rewrite(builder: relax.BlockBuilder, call: relax.Call, pad_positions: bool) -> tuple[relax.Expr, str]:
    attrs = call.attrs
    x_shape, w_shape = static_shape(call.args[0]), static_shape(call.args[1])
    strides, dilations = [int(s) for s in attrs.strides], [int(d) for d in attrs.dilation]
    padding = [int(p) for p in attrs.padding]
    groups = int(attrs.groups)
    weight = call.args[1]
    packed = builder.emit(
        pack_rows(weight, groups, row_tile(w_shape[0] // groups)),
        name_hint=f"{weight.name}.packed" if isinstance(weight, relax.Var) else "packed_weight",
    )
    line = f"{x_shape}x{w_shape} s{strides} d{dilations} p{padding} g{groups}"
    if call.op.name == "relax.nn.conv1d":
        kernel = w_shape[2]
        out_len = conv_output_size(x_shape[2], kernel, strides[0], dilations[0], sum(padding))
        gemm = builder.call_te(
            _conv1d_gemm, call.args[0], packed, kernel, strides[0], dilations[0], padding[0], out_len,
            padded_positions(out_len) if pad_positions else out_len, primfunc_name_hint="conv_gemm",
        )
        return gemm, line
    layout = _RowLayout(tuple(x_shape[2:]), tuple(w_shape[2:]), tuple(strides), tuple(dilations), tuple(padding))
    phases = builder.emit(
        builder.call_te(lambda x: _row_phases(x, layout), call.args[0], primfunc_name_hint="conv_row_phases")
    )
    flat = builder.emit(
        builder.call_te(lambda x, w: _conv2d_gemm(x, w, layout), phases, packed, primfunc_name_hint="conv_gemm")
    )
    return _crop(builder, flat, x_shape[0], w_shape[0], layout), line


@tvm.transform.module_pass(opt_level=0, name="ConvToGemm")
class ConvToGemm:
    """Rewrite every supported conv1d and conv2d into a packed-weight GEMM; log each rewrite and each
    refusal. With `pad_positions` (CPU targets) a Conv1d's GEMM computes whole vectors of positions
    (padded_positions); GPU kernels take any count."""

    def __init__(self, pad_positions: bool) -> None:
        self.pad_positions = pad_positions

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_calls(
            mod, _selects, unsupported_conv, partial(_rewrite, pad_positions=self.pad_positions), log, "conv as GEMM"
        )
