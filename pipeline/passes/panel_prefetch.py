"""Software prefetch for the CPU GEMMs: of the next input panel, for the GEMM of a stride-1 Conv2d,
which reads its input in place (see conv_gemm's _RowLayout and the CPU schedule's _row_stride); and,
in the copy of a wide input panel, of the channel rows ahead of the one copied (copy_ahead).

Each panel of that GEMM reads a short run of positions (its width, 32 with AVX-512, and the taps'
reach) in each kernel row of each input channel of the flat padded input; kernel row kh reads kh
input rows further on than row 0. The run that kernel row KH - 1, the furthest on, reads is new;
the others read what it read KH - 1 ... 1 input rows (a few panels) earlier, and find it in
cache. Where the input rows are long, each input channel's kernel rows lie in different 4 KiB
pages, and the hardware prefetchers, which follow streams within a page and only so many of them,
left many of those new lines to be fetched when the loads missed (our reading: this VM has no
performance counters to confirm it): a 3 x 3 Conv2d of 64 to 64 channels ran its GEMM at 179
GFLOP/s on 256 x 256, 212 on 128 x 128. So there, at the start of each panel, the kernel asks for
the lines that the next panel's furthest kernel row will read (`llvm.prefetch`, which never
faults), into L2.

GEMM times, builds alternated in one process (2 cores, Zen 4), without -> with, 3 x 3 kernels:
- rows of 258 positions (256 x 256): 64 -> 32 channels 15.5 -> 12.7 ms, 64 -> 64 27.1 -> 23.7,
  32 -> 64 13.1 -> 11.8, 32 -> 32 7.0 -> 6.5, 3 -> 32 1.54 -> 1.45; rows of 514 (128 x 512),
  32 -> 32: 7.1 -> 6.3; a UNet at 256 x 256 (all its kernels) 96.0 -> 93.0;
- rows of 130 (128 x 128, 512 x 128; 64 -> 32, 128 -> 32, 32 -> 32, 64 -> 64): -0.9% to +1.6%,
  hence PREFETCH_MIN_ROW_BYTES; a 1 x 1 Conv2d (no kernel row behind another) 10% slower (32 -> 2
  on 256 x 256). Prefetching every kernel row instead of the furthest was slower (64 -> 32: 12.0
  against 11.5 ms), into L1 instead of L2 too (12.8 against 11.8), two or four panels ahead the
  same as one;
- with the AVX2 micro-kernel (target x86-64-v3 on the same machine, panels of 16 positions), rows
  of 258: 64 -> 32 15.1 -> 14.4 ms, 32 -> 32 7.3 -> 6.7, 64 -> 64 29.1 -> 28.9.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.sym import Analyzer

from .conv_gemm import KERNEL_ROW_PITCH_ANNOTATION, KERNEL_ROWS_ANNOTATION
from .matmul_gemm import CACHE_LINE_BYTES

# Kernel rows at least this far apart along the flat input (256 fp32 positions) are prefetched.
PREFETCH_MIN_ROW_BYTES = 1024
# The CPU schedule marks with this annotation (its value: the input's channel count) the loop of a
# wide panel copy that walks one channel's run of positions, vector by vector (see copy_ahead).
COPY_AHEAD_ANNOTATION = "pipeline_copy_ahead_channels"
COPY_AHEAD_CHANNELS = 8
# Copies whose run per channel is at least a page (4 KiB: 1024 fp32 positions) get it.
COPY_AHEAD_MIN_RUN_BYTES = 4096


@dataclass(frozen=True)
class PanelPrefetch:
    """The GEMM's input stage, as a load of the kernel's input in terms of the stage's iterators
    (batch, channel, position), whose channels are `kernel_rows` kernel rows of each of
    `input_channels`; and how the parallel loop walks its panels: its index is (row block, batch,
    panel), each panel computes `width` positions and reads `reach` of them (its taps reach past its
    last position), the stage holds `length` positions per channel."""

    load: tvm.ir.expr.TensorLoad
    iterators: tuple[tirx.Var, tirx.Var, tirx.Var]
    input_channels: int
    kernel_rows: int
    batches: int
    panels: int
    width: int
    reach: int
    length: int

    def __call__(self, func: tirx.PrimFunc) -> tirx.PrimFunc:
        """`func` with this prefetch at the top of the body of its parallel loop."""
        return tvm_ffi.structural_map(func, (tirx.For, self._prefetch_first), order="pre")

    def _prefetch_first(self, loop: tirx.For) -> tirx.For:
        if loop.kind != tirx.ForKind.PARALLEL:
            return loop
        body = tirx.SeqStmt([self._next_panel(loop.loop_var, str(loop.loop_var.ty)), loop.body])
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding, loop.annotations)

    def _next_panel(self, index: tirx.Var, dtype: str) -> tirx.Stmt:
        """For each input channel, a prefetch of every line of positions that the next panel's last
        kernel row reads (the same panel's at its batch's last panel: each core runs a contiguous
        range of the parallel loop)."""
        panel = tirx.floormod(index, self.panels)
        batch = tirx.floormod(tirx.floordiv(index, self.panels), self.batches)
        start = tirx.min(panel + 1, self.panels - 1) * self.width
        input_channel = tirx.Var("prefetch_channel", dtype)
        channel = input_channel * self.kernel_rows + (self.kernel_rows - 1)
        lanes = CACHE_LINE_BYTES // _element_bytes(self.load)
        # The reach's first position may lie anywhere in its line: its last position's line too.
        offsets = sorted({*range(0, self.reach, lanes), self.reach - 1})
        prefetches = [
            _prefetch_into_l2(self._load_at(batch, channel, tirx.min(start + offset, self.length - 1)))
            for offset in offsets
        ]
        return tirx.For(
            input_channel,
            tirx.const(0, dtype),
            tirx.const(self.input_channels, dtype),
            tirx.ForKind.SERIAL,
            tirx.stmt_seq(*prefetches),
        )

    def _load_at(self, batch, channel, position) -> tvm.ir.expr.TensorLoad:
        """The input stage's load at (batch, channel, position), its indices simplified (the
        channel's (input channel, kernel row) split folds away)."""
        load = _substituted(self.load, self.iterators, (batch, channel, position))
        return _simplified_load(load.source, load.indices)


def _substituted(expr, variables, values):
    """`expr` with each of `variables` replaced by its value."""

    def value(var: tirx.Var) -> tirx.Expr:
        return next((v for variable, v in zip(variables, values) if variable.same_as(var)), var)

    return tvm_ffi.structural_map(expr, (tirx.Var, value))


def _simplified_load(source, indices) -> tvm.ir.expr.TensorLoad:
    analyzer = Analyzer()
    return tirx.BufferLoad(source, [analyzer.simplify(index) for index in indices])


def _prefetch_into_l2(load: tvm.ir.expr.TensorLoad) -> tirx.Stmt:
    """A prefetch of the line that `load` reads: for reading, into L2 (prefetcht1 on x86, prfm
    pldl2keep on AArch64), data."""
    return tirx.Evaluate(tirx.call_intrin("void", "tirx.prefetch", tirx.address_of(load), 0, 2, 1))


def _element_bytes(load: tvm.ir.expr.TensorLoad) -> int:
    return tvm.DataType(str(load.ty)).bits // 8


def next_panel_prefetch(input_stage: s_tir.SBlock, batches: int, width: int, positions: int) -> PanelPrefetch | None:
    """The prefetch for a GEMM whose input stage (conv_rows, before it is inlined into the GEMM's
    reads) is `input_stage`, of `positions` computed in panels of `width`; None where its kernel rows
    are strided, fewer than two or closer than PREFETCH_MIN_ROW_BYTES."""
    kernel_rows = int(input_stage.annotations.get(KERNEL_ROWS_ANNOTATION, 1))
    pitch = int(input_stage.annotations.get(KERNEL_ROW_PITCH_ANNOTATION, 0))
    load = input_stage.body.value
    if kernel_rows < 2 or pitch * _element_bytes(load) < PREFETCH_MIN_ROW_BYTES:
        return None
    _, channels, length = (int(extent) for extent in input_stage.writes[0].source.shape)
    return PanelPrefetch(
        load=load,
        iterators=tuple(iterator.var for iterator in input_stage.iter_vars),
        input_channels=channels // kernel_rows,
        kernel_rows=kernel_rows,
        batches=batches,
        panels=positions // width,
        width=width,
        reach=width + length - positions,
        length=length,
    )


def copy_ahead(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with, in every loop marked COPY_AHEAD_ANNOTATION, a prefetch (into L2) of the line
    that the copy reads COPY_AHEAD_CHANNELS channels further on, at the same position (clamped to
    the last channel, so that it never leaves the input).

    A wide panel copy (a GEMM without a halo: the residual units' Conv1d k1, every ConvTranspose)
    reads, channel after channel, a run of positions that is a page of its own where the panel
    holds 1024 positions, and the hardware prefetchers start over at each (our reading, as above).
    Kernel times, builds alternated, T = 32: block5's three k1 Conv1d 40.47 -> 38.43 ms, block4's
    19.27 -> 18.93; the ConvTranspose GEMMs of convt5 21.84 -> 21.35, convt4 20.81 -> 20.50,
    block4 20.10 -> 19.87, block5 21.09 -> 21.19. In a first test block3's k1 (runs of 2 KiB)
    gained 1%; 4 channels ahead did a little less than 8 (best times: one of block5's k1 12.46
    against 12.44 ms, its ConvTranspose 20.98 against 20.61); prefetching the whole next panel
    while the current one is computed gained nothing."""
    return tvm_ffi.structural_map(func, (tirx.For, _copy_ahead), order="pre")


def _copy_ahead(loop: tirx.For) -> tirx.For:
    if COPY_AHEAD_ANNOTATION not in loop.annotations:
        return loop
    channels = int(loop.annotations[COPY_AHEAD_ANNOTATION])
    vector_loop = loop.body
    realize = vector_loop.body
    loads = []
    tvm_ffi.structural_walk(realize.block.body, [(tvm.ir.expr.TensorLoad, loads.append)])
    (load,) = loads
    # At each vector's first lane: with AVX-512 a vector is a 64-byte line, asked for once.
    first_lane = tirx.const(0, str(vector_loop.loop_var.ty))
    values = [_substituted(value, [vector_loop.loop_var], [first_lane]) for value in realize.iter_values]
    iterators = [iterator.var for iterator in realize.block.iter_vars]
    batch, channel, position = (_substituted(index, iterators, values) for index in load.indices)
    ahead = tirx.min(channel + COPY_AHEAD_CHANNELS, channels - 1)
    prefetch = _prefetch_into_l2(_simplified_load(load.source, (batch, ahead, position)))
    annotations = {k: v for k, v in loop.annotations.items() if k != COPY_AHEAD_ANNOTATION}
    body = tirx.SeqStmt([prefetch, loop.body])
    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding, annotations)
