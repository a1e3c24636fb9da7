"""Our CPU schedules for kernels where no tuning record applies: the GEMMs, col2im, the depthwise
stencil, elementwise kernels, softmax and the normalizations.

The GEMM gets a register-blocked micro-kernel: an accumulator tile of output rows x COLUMN_VECTORS
vectors of positions stays in registers for a chunk of the input-channel loop (then is added to the
tile's total: see _partial_sums), and each channel step is one broadcast per row from the packed
weight (contiguous, see convtranspose_gemm) times COLUMN_VECTORS vector loads of the input. The
tile is sized to the target's vector registers (VectorUnit): 8 rows x 2 vectors of 16 lanes with
AVX-512, 4 rows x 2 vectors of 8 with AVX2. The outermost, parallel loop is:
- rows, where the whole (zero-padded) input fits in L2 and the weight is larger (the first Oobleck
  layer; on small chunks also the Conv1d of the first blocks): the input is first copied once
  (into contiguous column panels where the positions allow), the weight streams from memory once;
- (blocks of rows whose weight fits in L2) x (position panels) otherwise, each core taking a run
  of panels of one row block; each panel of the input is first copied to a contiguous buffer,
  because input rows a power-of-two apart collide in the same cache sets (without the copy
  convt5's GEMM ran at 19 GFLOP/s, with it 76-88). Where that loop is too short for the cores
  (few positions on many cores), the row blocks are made smaller (_tiles_per_block).
  A panel spans several micro-kernel panels, so the copy and the epilogue walk long runs of each
  row: without a halo (ConvTranspose, Conv1d k1) stored one after another (PANEL_BUDGET_BYTES),
  with one (a Conv1d k7) as one run per channel (HALO_PANEL_BUDGET_BYTES).
MetaSchedule records, where present, replace it: kernels marked `tirx.is_scheduled` are left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.schedule import ScheduleError
from tvm.target import codegen

from .conv_gemm import CONV_STRIDE_ANNOTATION, INPUT_ROW_ANNOTATION
from .depthwise_conv import ROW_STRIDE_ANNOTATION
from .kernel_blocks import ceil_div, first_block_named, inline_chain_after, reduction_rank
from .matmul_gemm import TRANSPOSED_OPERAND_STAGE
from .panel_prefetch import COPY_AHEAD_ANNOTATION, COPY_AHEAD_MIN_RUN_BYTES, copy_ahead, next_panel_prefetch

COLUMN_VECTORS = 2
# The rows of a micro-kernel that streams several row tiles of its weight (see weight_streams).
STREAM_ROWS = 16


@dataclass(frozen=True)
class VectorUnit:
    """The fp32 SIMD registers of a CPU target: `lanes` per register, `registers` of them; and
    below how many positions a GEMM that streams its weight once does better with one micro-kernel
    per several weight streams (see weight_streams), as measured: 64 on a Rocket Lake (AVX-512),
    16 on a Zen 3 (AVX2: convt1's GEMM at 8 positions 7.9 -> 5.9 ms, at 16 10.2 against 11.6)."""

    lanes: int
    registers: int
    streaming_below: int

    @classmethod
    def of(cls, target: tvm.target.Target) -> VectorUnit:
        if codegen.target_has_features("avx512f", target):
            return cls(lanes=16, registers=32, streaming_below=64)
        if codegen.target_has_features("avx", target):
            return cls(lanes=8, registers=16, streaming_below=16)
        if str(target.attrs.get("mtriple", "")).startswith("aarch64") or codegen.target_has_features("neon", target):
            return cls(lanes=4, registers=32, streaming_below=16)
        return cls(lanes=4, registers=16, streaming_below=8)

    @property
    def accumulators(self) -> int:
        """Registers the GEMM tile may hold: half of them, the rest carry the operands and
        addresses. A full tile with AVX2 (8 rows x 2 vectors: 16 of its 16 registers) spilled:
        convt3's GEMM at T = 32 took 54 ms on a Zen 3, against 25-29 ms with 4 rows x 2 vectors
        and 51 with 8 rows x 1 vector (as many accumulators, but a broadcast per multiply-add)."""
        return self.registers // 2

    @property
    def micro_rows(self) -> int:
        return self.accumulators // COLUMN_VECTORS


# Half of the 2 MiB per-core L2 of the machines we measured on; the rest holds an input panel
# and what streams through. 0.5 MiB measured slower on convt3/convt4, 2 MiB no better. On a Zen 5
# (1 MiB of L2 per core) 0.5 and 1 MiB measured the same (convt3, convt4, block3, block4 at T = 32).
L2_BUDGET_BYTES = 1 << 20
# Every row block copies the input panels again: below 32 row tiles (256 rows) the copies cost
# more than the weight's cache misses (a 1024-channel k7 Conv1d with 4 tiles ran at 55 GFLOP/s).
MIN_TILES_PER_BLOCK = 32


# Where the input panels go outermost, one panel copied at a time holds several micro-kernel
# column panels (subpanels) up to this size, and each row tile sweeps them all. The copy and the
# epilogue (bias, residual add, store) then run along columns x subpanels contiguous positions of
# each row instead of one micro-kernel's columns. Per-kernel times at T = 32 with AVX-512 (32
# columns): block5's Conv1d k1 (128 channels) 14.4 -> 8.1 ms, its ConvTranspose GEMM 16.9 ->
# 12.6; block4's k1 6.9 -> 4.0, block3's 4.1 -> 3.4. 256 KiB was as good on block4 and slower on
# block5, 1 MiB slower on block4.
PANEL_BUDGET_BYTES = 512 << 10
# A stride-1 Conv1d with taps reads past its panel's edge (a halo), so its panel holds the
# subpanels' positions and the halo in one run per channel (not subpanel after subpanel) and the
# copy reads the halo once per panel instead of once per subpanel; the subpanels' rows then lie
# further apart in the copy. Kernel times of the k7 Conv1d at T = 32, builds alternated, one
# subpanel -> this budget: block5 (128 channels, 8 subpanels), dilation 1 / 3 / 9, 74.4 / 74.5 /
# 76.3 -> 71.5 / 71.2 / 71.8 ms, in the decoder 71.4 / 71.2 / 72.5 -> 68.7 / 67.9 / 68.7; block4
# (256 channels, 4 subpanels, dilation 9) 37.2 -> 35.1 (64 KiB 35.4, 256 35.3, 512 36.0); block3
# (512 channels, 2 subpanels) 34.3 -> 34.3 (64 KiB 33.9).
# With the AVX2 micro-kernel (target znver3 on the same machine: 16 subpanels of 16 positions),
# block5's (dilation 1) 86.2 -> 83.9 ms.
HALO_PANEL_BUDGET_BYTES = 128 << 10
MIN_PANELS_PER_CORE = 4
# The share of the cores' time the panels of a GEMM must keep busy (see _subpanels).
MIN_PANEL_BALANCE = 0.95
# The share of the cores' time the parallel loop of a GEMM must keep busy (see _tiles_per_block).
MIN_BALANCE = 0.9
# A transposed operand's panel is copied in blocks of this many channels (see _copy_transposed).
TRANSPOSED_COPY_CHANNELS = 64
# How many products one partial sum of a GEMM adds up (see _partial_sums).
PARTIAL_SUM_TERMS = 256
# A row reduction sums in one partial sum per vector lane where the row holds at least this many
# vectors.
MIN_PARTIAL_SUM_STEPS = 4


def _parallel_rows(sch: s_tir.Schedule, block) -> list:
    """Fuse the (batch, channel) loops of a block and run them in parallel; return the other loops."""
    n, c, *rest = sch.get_loops(block)
    sch.parallel(sch.fuse(n, c))
    return rest


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _element_bytes(region) -> int:
    return tvm.DataType(region.source.dtype).bits // 8


def _bytes(region) -> int:
    count = 1
    for dim in region.source.shape:
        count *= int(dim)
    return count * _element_bytes(region)


def _lanes(extent: int, most: int) -> int:
    """The most lanes, up to `most`, in whole vectors of `extent` positions."""
    lanes = most
    while lanes > 1 and extent % lanes:
        lanes //= 2
    return lanes


@dataclass(frozen=True)
class MicroKernel:
    """rows x columns outputs accumulated in registers, the columns as vectors of `lanes`."""

    rows: int
    columns: int
    lanes: int


def micro_kernel(positions: int, row_tile: int, unit: VectorUnit) -> MicroKernel:
    """Vectors of up to unit.lanes lanes, all dividing the positions. A partial vector would put a
    bounds test in the innermost loop and LLVM then emits scalar code: convt1's GEMM on a chunk of
    8 latent frames (8 positions) ran at 46 GFLOP/s with 16-lane vectors, at 61 with 8-lane ones
    (where its 128 MB weight stream bounds it). As many vectors as the unit's accumulators allow
    for the rows: where a row tile is short (a Conv1d to 2 channels), more vectors."""
    rows = min(row_tile, unit.micro_rows)
    lanes = _lanes(positions, unit.lanes)
    vectors = max(1, unit.accumulators // rows)
    while vectors > 1 and positions % (lanes * vectors):
        vectors //= 2
    return MicroKernel(rows, lanes * vectors, lanes)


def weight_streams(row_tile: int) -> int:
    """Where the GEMM streams its weight from memory once (rows outermost) over few positions, one
    micro-kernel takes this many row tiles, i.e. weight streams a row tile's weight apart, and one
    vector of positions: STREAM_ROWS accumulators. First measured on a Rocket Lake (AVX-512) and a
    Zen 3 (AVX2) on convt1's GEMM (16384 x 2048 weight) alone, one accumulator per register then
    won: with AVX-512 4 streams, at 8 positions 7.4 -> 3.8 ms (1 stream -> 4), at 16 9.1 -> 4.4,
    at 32 10.4 -> 8.2; with AVX2 2 streams, at 8 positions 7.3 -> 5.9-6.7 ms (4 streams: 7.8).
    On a Zen 4, the Conv1d of the first Oobleck block (1024 channels) ran far slower with 4 streams
    than with 2: the 32 accumulators leave the input vector no register and LLVM keeps two of them
    on the stack, loaded and stored every step. Kernel times (builds alternated), 4 -> 2 streams:
    block1's k7 at T = 1 (8 positions) 1.05 / 0.99 / 0.91 -> 0.79 / 0.71 / 0.80 ms, its k1 0.27 ->
    0.09; at T = 4 (32 positions) the k7 3.67 -> 2.37, the k1 0.50 -> 0.31; convt1's GEMM 3.56 ->
    3.64 at T = 1, 4.27 -> 4.45 at T = 4. In the decoder, where each weight comes from memory once
    per call: block1's k7 3.01 / 3.04 / 3.03 -> 2.21 / 2.23 / 2.40 ms at T = 4, 1.03 / 1.07 / 1.11
    -> 0.94 / 0.94 / 1.00 at T = 1 (in a second run 0.05-0.07 ms faster each), convt1's GEMM 3.74
    -> 3.76 (T = 1). A DCGAN's ConvTranspose GEMMs (alone, batch 1 and 16): from the latent (one
    position, no vector) 0.024 -> 0.036 and 0.37 -> 0.59 ms, the next 0.345 -> 0.313 and 5.82 ->
    5.20. Arm's 32 NEON registers had taken 4 streams too; not measured there."""
    return max(1, STREAM_ROWS // row_tile)


def _subpanels(column_tiles: int, subpanel_bytes: int, cores: int, budget: int = PANEL_BUDGET_BYTES) -> int:
    """How many micro-kernel column panels one copied input panel holds: a power of two that
    divides the column tiles, keeps the copy within `budget` bytes and leaves at least
    MIN_PANELS_PER_CORE panels, the parallel loop, per core, spread evenly enough over the cores
    (MIN_PANEL_BALANCE). A Linear layer's 1152 columns (36 column tiles of 384 channels) in 9
    panels of 4 left one of 2 cores idle a ninth of the time: 1.19 ms, in 18 panels 1.08."""
    count = 1
    while (
        2 * count * subpanel_bytes <= budget
        and column_tiles % (2 * count) == 0
        and column_tiles // (2 * count) >= MIN_PANELS_PER_CORE * cores
        and _balanced(column_tiles // (2 * count), cores, MIN_PANEL_BALANCE)
    ):
        count *= 2
    return count


def _balanced(items: int, cores: int, share: float = MIN_BALANCE) -> bool:
    """Whether `items` equal parallel iterations keep `cores` threads busy `share` of the time."""
    return items >= share * cores * ceil_div(items, cores)


def _tiles_per_block(row_tiles: int, panels: int, most: int, cores: int) -> int:
    """Row tiles per row block where the input panels go outermost: the fewest equal blocks of at
    most `most` tiles (a block larger than the rows, or a short last block, ran idle predicated
    iterations: a 128-channel k7 Conv1d on 65536 positions, 16 tiles in a block of 36, 70.6 ->
    69.4 ms), or where the parallel loop (row blocks x panels) would then leave cores idle (few
    positions on many cores), as many equal row blocks as balance it. Every row block copies its
    panels again, which measured cheaper than idle cores: an 8192-channel k3 Conv1d on 32
    positions (one panel, 32 tiles), build medians on 2 cores: 3.86 ms in 1 row block, 1.97 in 2,
    2.05 in 4, 2.19 in 8, 2.56 in 32."""
    fewest = ceil_div(row_tiles, most)
    if _balanced(fewest * panels, cores):
        return ceil_div(row_tiles, fewest)
    for blocks in range(fewest + 1, row_tiles + 1):
        tiles = ceil_div(row_tiles, blocks)
        if _balanced(ceil_div(row_tiles, tiles) * panels, cores):
            return tiles
    return 1


def _partial_sums(sch: s_tir.Schedule, block, reduction: list) -> tuple:
    """Split the GEMM's reduction into chunks of at most PARTIAL_SUM_TERMS products (whole input
    channels, all their taps), each summed in a register tile of its own and then added to the
    tile's total, which stays in memory (rfactor), as BLAS blocks its reduction. One fp32
    accumulator over a reduction of n products rounds n times in sequence, an error growing as
    sqrt(n); in chunks of b as sqrt(b) + sqrt(n / b). Over the 7168 products of block1's k7 Conv1d
    a numpy emulation of the FMA sequence measured a relative rms error against float64 of 1.5e-6
    in one sum, 2.9e-7 in chunks of 224; the whole SAO decoder (T = 32) went from 3.2e-5 to 1.1e-5,
    onnxruntime's being 1.2e-5. The total stays out of registers: beside the chunk's tile it made
    LLVM spill the chunk's accumulators in the channel loop. Returns the block that multiplies and
    adds (the chunk's sum) and the reduction loop left on `block` (over chunks); where the
    reduction fits in one chunk, `block` and `reduction` as they were."""
    channels = _extent(sch, reduction[0])
    taps = 1
    for loop in reduction[1:]:
        taps *= _extent(sch, loop)
    chunk = 1
    while 2 * chunk * taps <= PARTIAL_SUM_TERMS and channels % (2 * chunk) == 0:
        chunk *= 2
    # Too short a chunk (an odd channel count) would cost more in additions than it saves.
    if chunk == channels or chunk * taps < PARTIAL_SUM_TERMS // 8:
        return block, reduction
    chunks, _ = sch.split(reduction[0], factors=[None, chunk])
    partial = sch.rfactor(chunks, 0)
    sch.set_scope(partial, 0, "local")
    return partial, sch.get_loops(block)[-1:]


def _schedule_gemm(
    sch: s_tir.Schedule, name: str, unit: VectorUnit, cores: int
) -> Callable[[tirx.PrimFunc], tirx.PrimFunc] | None:
    """Also for conv_gemm, whose kernel holds a zero-padding stage before the GEMM (inlined into
    the panel copy) and the fused elementwise ops after it (bias, Snake, residual add), which are
    inlined into one stage computed per tile, while the tile is in cache. Returns what to add to
    the scheduled kernel, which the schedule's primitives cannot write: the prefetch of a GEMM that
    reads its input in place (panel_prefetch's PanelPrefetch) or copies it in wide panels
    (copy_ahead), or None."""
    root_blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    epilogue = root_blocks[root_blocks.index(name) + 1:]
    block = sch.get_sblock(name)
    padding = sch.get_producers(block)
    data, packed_weight = sch.get(block).reads
    row_tile = int(packed_weight.source.shape[-1])
    # One loop each for rows and positions (the GEMM is written flat): fusing loops here would
    # make the accumulator's write-back region a bounding box that overwrites other tiles.
    gemm, reduction = _partial_sums(sch, block, sch.get_loops(block)[3:])
    chunked = gemm is not block
    batch, rows, positions, *_ = sch.get_loops(block)
    batches = _extent(sch, batch)
    rows_outside = L2_BUDGET_BYTES >= _bytes(data) and _bytes(packed_weight) > _bytes(data)
    position_count = _extent(sch, positions)
    halo = int(data.source.shape[-1]) - position_count
    tile = micro_kernel(position_count, row_tile, unit)
    columns, lanes, micro_rows = tile.columns, tile.lanes, tile.rows
    streams = weight_streams(row_tile)
    tiles_per_group = int(packed_weight.source.shape[1])
    if rows_outside and position_count < unit.streaming_below and tiles_per_group % streams == 0:
        columns, micro_rows = lanes, row_tile * streams
    else:
        streams = 1
    row_tiles, row = sch.split(rows, factors=[None, row_tile * streams])
    # Where the unit holds fewer rows than a packed tile, the micro-kernel takes the tile in parts.
    row_parts = []
    if micro_rows < row_tile * streams:
        part, row = sch.split(row, factors=[None, micro_rows])
        row_parts.append(part)
    subpanels = 1
    if rows_outside:
        panels, column = sch.split(positions, factors=[None, columns])
        inner = panels
        sch.reorder(batch, row_tiles, panels, *row_parts, *reduction, row, column)
    else:
        channels = int(packed_weight.source.shape[2])
        if halo == 0:
            subpanel_bytes = channels * columns * _element_bytes(data)
            subpanels = _subpanels(position_count // columns, subpanel_bytes, cores)
        # Not a Conv2d's GEMM, whose stage reads its rows in place or in phases (see _row_stride),
        # nor a strided Conv1d, whose input is not its positions and a halo.
        elif _conv_rows_stage(sch, padding) is None and halo < position_count:
            subpanel_bytes = int(data.source.shape[1]) * columns * _element_bytes(data)
            subpanels = _subpanels(position_count // columns, subpanel_bytes, cores, HALO_PANEL_BUDGET_BYTES)
        else:
            subpanels = 1
        panels, subpanel, column = sch.split(positions, factors=[None, subpanels, columns])
        tiles_per_block = _tiles_per_block(
            _extent(sch, row_tiles),
            _extent(sch, batch) * _extent(sch, panels),
            max(MIN_TILES_PER_BLOCK, L2_BUDGET_BYTES // (channels * row_tile * _element_bytes(packed_weight))),
            cores,
        )
        row_blocks, row_tiles = sch.split(row_tiles, factors=[None, tiles_per_block])
        inner = subpanel
        sch.reorder(row_blocks, batch, panels, row_tiles, subpanel, *row_parts, *reduction, row, column)
    # Subpanels stored one after another in the copy; with a halo they overlap, and the panel stays
    # one run per channel.
    stacked_subpanels = subpanels if halo == 0 else 1
    sch.parallel(sch.fuse(batch, row_tiles) if rows_outside else sch.fuse(row_blocks, batch, panels))
    if chunked:
        # Each chunk's sum is computed where the tile adds it, in a register tile of its own.
        sch.compute_at(gemm, reduction[0])
        spatial, partial_reduction = _loops_inside(sch, gemm, reduction[0])
        sch.reorder(*partial_reduction, *spatial)
        # Unit loops vanish under compute_at: a tile of one position has no column loop.
        partial_row, partial_column = (spatial.pop(0) if _extent(sch, loop) > 1 else None for loop in (row, column))
    stride = _row_stride(sch, padding)
    transposed = any(sch.get(stage).name_hint == TRANSPOSED_OPERAND_STAGE for stage in padding)
    panel = sch.cache_read(gemm, 0, "global") if stride != 1 else None
    prefetch = None
    if panel is None and not rows_outside:
        prefetch = next_panel_prefetch(_conv_rows_stage(sch, padding), batches, columns * subpanels, position_count)
    for stage in padding:
        sch.compute_inline(stage)
    if panel is not None:
        _place_panel(sch, panel, block, rows_outside, stacked_subpanels, columns, stride)
        if transposed:
            _copy_transposed(sch, panel, int(data.source.shape[1]))
    tile_loop = row_parts[0] if row_parts else inner
    copies = [] if panel is None else [panel]
    if not chunked:
        accumulator = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(accumulator, tile_loop)
        copies.append(accumulator)
    for stage in epilogue[:-1]:
        sch.compute_inline(sch.get_sblock(stage))
    if epilogue:
        copies.append(sch.get_sblock(epilogue[-1]))
        sch.reverse_compute_at(copies[-1], tile_loop)
        if not chunked:
            # The epilogue reads the register tile itself, not a copy of it in a second buffer.
            sch.compute_inline(accumulator)
            copies.remove(accumulator)
    _unroll_tile(sch, row, column, lanes)
    sch.decompose_reduction(block, reduction[0])
    if chunked:
        _unroll_tile(sch, partial_row, partial_column, lanes)
        sch.decompose_reduction(gemm, partial_reduction[0])
    for copy in copies:
        innermost = sch.get_loops(copy)[-1]
        # Unit loops vanish under compute_at, so the innermost loop can be one shared with others.
        own_loop = len(sch.get_child_blocks(innermost)) == 1
        # A panel copy's channel count varies where row blocks and groups do not align (grouped
        # ConvTranspose cut into row blocks for the cores); such a copy stays scalar.
        extent = sch.get(innermost).extent
        if own_loop and isinstance(extent, tirx.IntImm) and extent.value % lanes == 0:
            vectors, vector = sch.split(innermost, factors=[None, lanes])
            sch.vectorize(vector)
            run_bytes = columns * subpanels * _element_bytes(data)
            if copy is panel and stacked_subpanels > 1 and not transposed and run_bytes >= COPY_AHEAD_MIN_RUN_BYTES:
                sch.annotate(vectors, COPY_AHEAD_ANNOTATION, int(data.source.shape[1]))
                prefetch = copy_ahead
    return prefetch


def _place_panel(
    sch: s_tir.Schedule, panel, block, rows_outside: bool, subpanels: int, columns: int, stride: int | None
) -> None:
    """Where the copy of the input panels runs: once per panel of a row block, or once for the
    whole input where rows go outermost. A strided Conv2d's panel is copied as `stride` phases
    (positions i * stride + r, r = 0 .. stride - 1, each phase contiguous), so that the GEMM's
    vectors of positions t * stride + tap are contiguous in one phase: read in place they were
    strided loads: a 3 x 3 Conv2d of stride 2 (64 to 128 channels, 128 x 128) took 4.4 ms against
    6.7 (medians, side by side on 2 cores)."""
    if not rows_outside:
        if stride is not None and stride > 1:
            sch.transform_layout(panel, ("write", 0), lambda n, c, p: (n, c, p % stride, p // stride))
        elif subpanels > 1:
            sch.transform_layout(panel, ("write", 0), lambda n, c, p: (n, p // columns, c, p % columns))
        sch.compute_at(panel, sch.get_loops(block)[0])
    elif _extent(sch, positions_loop := sch.get_loops(panel)[-1]) % columns == 0:
        # One copy of the whole input, column panels contiguous: each micro-kernel then reads one
        # 64-byte line per channel instead of a strided piece of an input row.
        sch.transform_layout(panel, ("write", 0), lambda n, c, p: (n, p // columns, c, p % columns))
        n, c, _ = sch.get_loops(panel)
        panel_index, column_index = sch.split(positions_loop, factors=[None, columns])
        sch.reorder(n, panel_index, c, column_index)
        sch.parallel(sch.fuse(n, panel_index))


def _copy_transposed(sch: s_tir.Schedule, panel, channel_count: int) -> None:
    """A panel of a transposed operand (`q @ k.transpose(-1, -2)`, read through its TE stage) is
    copied position by position along a block of channels, contiguous in the source, instead of
    channel by channel across positions: those are rows of the source, a power of two apart, which
    collide in the same L1 sets, so every element read missed L1. The copy's writes of a block stay
    in cache. 256 x 1024 times (1024 x 1024)ᵀ, kernel times side by side: 3.86 ms copied across
    positions, 2.70 along all channels, 2.55 in blocks of 32, 64 or 128, 2.82 in blocks of 16
    (untransposed: 2.45). A source of one channel (a product over K = 1) is contiguous along its
    positions already, and its copy has no channel loop (a unit loop vanishes under compute_at):
    reordering the loops there had failed the build."""
    if channel_count == 1:
        return
    *_, channels, positions = sch.get_loops(panel)
    if _extent(sch, channels) > TRANSPOSED_COPY_CHANNELS:
        channel_blocks, channels = sch.split(channels, factors=[None, TRANSPOSED_COPY_CHANNELS])
        sch.reorder(channel_blocks, positions, channels)
    else:
        sch.reorder(positions, channels)


def _row_stride(sch: s_tir.Schedule, stages: list) -> int | None:
    """The stride along the row of a Conv2d GEMM's input stage (conv_rows), None for other GEMMs.
    With stride 1 the GEMM reads that stage in place, without copying panels: it is a slice of the
    padded input at an offset per channel, so a copy would neither hoist bounds tests nor make
    strided reads contiguous, and its 34-position panels (32 and a halo of 2, not whole vectors)
    were copied element by element. Measured without the copy, side by side on 2 cores: a 3 x 3
    Conv2d of 64 channels on 128 x 128 6.7 against 8.2 ms, of 32 channels on 256 x 256 8.7
    against 11.2, of 256 channels on 32 x 32 6.4 against 6.8."""
    rows = _conv_rows_stage(sch, stages)
    return None if rows is None else int(rows.annotations[CONV_STRIDE_ANNOTATION])


def _conv_rows_stage(sch: s_tir.Schedule, stages: list):
    """The Conv2d GEMM's input stage (conv_rows) among `stages`, as a block, or None."""
    return next((sch.get(stage) for stage in stages if sch.get(stage).name_hint == "conv_rows"), None)


def _unroll_tile(sch: s_tir.Schedule, row, column, lanes: int) -> None:
    """A register tile: rows unrolled, columns as unrolled vectors of `lanes` (None: no such loop)."""
    if row is not None:
        sch.unroll(row)
    if column is not None:
        vectors, lane = sch.split(column, factors=[None, lanes])
        sch.unroll(vectors)
        sch.vectorize(lane)


def _loops_inside(sch: s_tir.Schedule, block, outer) -> tuple[list, list]:
    """The loops of `block` inside the loop `outer`, as (spatial, reduction), each in loop order."""
    loops = sch.get_loops(block)
    start = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(outer))) + 1
    inside = loops[start:]
    if not inside:
        return [], []
    realize = sch.get(inside[-1]).body
    reduction_vars = [
        value
        for iter_var, value in zip(realize.block.iter_vars, realize.iter_values)
        if iter_var.iter_type == tirx.IterVar.CommReduce
    ]
    is_reduction = [any(sch.get(loop).loop_var.same_as(var) for var in reduction_vars) for loop in inside]
    return (
        [loop for loop, reduces in zip(inside, is_reduction) if not reduces],
        [loop for loop, reduces in zip(inside, is_reduction) if reduces],
    )


def _schedule_col2im(sch: s_tir.Schedule) -> None:
    """Rows in parallel; the gather is computed per element of its consumer (the fused bias add),
    with its few taps unrolled so the compiler folds the bounds tests into straight-line code."""
    gather = sch.get_sblock("convt_col2im")
    # Left as loop nests of their own, all but the first stage of the chain after the gather ran
    # serially over the whole output (a DCGAN layer's col2im kernel, 64 channels of 32 x 32,
    # batch 16: 8.3 ms).
    inline_chain_after(sch, "convt_col2im")
    consumers = sch.get_consumers(gather)
    if len(consumers) == 1:
        rest = _parallel_rows(sch, consumers[0])
        sch.compute_at(gather, rest[-1])
        outer = 1 + len(rest)
    else:
        outer = 1 + len(_parallel_rows(sch, gather)) - reduction_rank(sch, gather)
    # Counted from the outside: a tap loop of one step (a kernel no longer than its stride) vanishes
    # under compute_at, and counting from the inside then unrolled the output's loops (a
    # ConvTranspose2d k2 s2 to 64 x 64: 4096 copies of the body, 34 s in LLVM, minutes for larger).
    taps = sch.get_loops(gather)[outer:]
    if taps:
        sch.decompose_reduction(gather, taps[0])
    for tap in taps:
        sch.unroll(tap)


def _schedule_row_phases(sch: s_tir.Schedule, unit: VectorUnit) -> None:
    """The padded input of a Conv2d GEMM: its flat positions split at the padded row length, so
    row and column need no division per element (flattened, the padding kernel of a 64-channel
    128 x 128 input took 2 ms); rows in parallel, each row's columns vectorized where whole
    vectors fit. What FuseOps fused before it (the previous Conv2d's crop and bias, a
    normalization's scale and shift, the activation) is inlined into one stage, computed a row at a
    time just before the padded row that holds it: that row is unpadded, so its whole vectors run
    vectorized, where inlined into the padding (rows of 130 for 128 columns) the chain ran scalar,
    a SiLU's exp included. Left as loop nests of their own, not in parallel, they had cost more
    still (a UNet decoder's last padding kernel: 1.9 ms, inlined 0.46)."""
    *stages, block = sch.get_child_blocks(sch.get_sblock("root"))
    for stage in stages[:-1]:
        sch.compute_inline(stage)
    n, c, flat = sch.get_loops(block)
    row = int(sch.get(block).annotations[INPUT_ROW_ANNOTATION])
    rows, column = sch.split(flat, factors=[None, row])
    padded_rows = sch.fuse(n, c, rows)
    sch.parallel(padded_rows)
    if row % unit.lanes == 0:
        sch.vectorize(sch.split(column, factors=[None, unit.lanes])[1])
    if stages:
        chain = stages[-1]
        sch.compute_at(chain, padded_rows)
        _vectorize_loop(sch, sch.get_loops(chain)[-1], unit.lanes)


# The most vectors of positions one run of a depthwise stencil's taps accumulates (in registers):
# more would spill with AVX2's 16 registers.
STENCIL_VECTORS = 8
# Where the kernel has at least TALL_STENCIL rows, a run covers STENCIL_ROWS output rows, so each
# input vector loaded feeds the taps of both. A 7 x 7 stencil (96 channels of 56 x 56) took 214-218
# us against 252-253 in one row (4 rows: 238); on 3 x 3 stencils the effect stayed within the
# noise (-8% to +16%), so they keep one row.
STENCIL_ROWS = 2
TALL_STENCIL = 5


def _vectorize_loop(sch: s_tir.Schedule, loop, most: int) -> None:
    """Vectors of up to `most` lanes that divide the loop, where there are any."""
    lanes = _lanes(_extent(sch, loop), most)
    if lanes > 1:
        sch.vectorize(sch.split(loop, factors=[None, lanes])[1])


def _schedule_depthwise(sch: s_tir.Schedule, unit: VectorUnit) -> None:
    """Channels in parallel; each channel's padded input computed once, in cache, so the stencil
    reads it without bounds tests (a strided row stored as the stride's phases, so a vector of
    outputs reads contiguous inputs: a 3 x 3 stencil of stride 2 on 112 x 112 took 141 us against
    252 with strided loads); per output row (two, for a tall kernel) a run of up to STENCIL_VECTORS
    vectors of positions accumulates in registers over all the taps, then the fused epilogue
    (bias, activation) stores it."""
    inline_chain_after(sch, "conv_depthwise")
    stencil, pad = sch.get_sblock("conv_depthwise"), sch.get_sblock("conv_pad")
    epilogue = sch.get_consumers(stencil)
    taps = reduction_rank(sch, stencil)
    loops = sch.get_loops(stencil)
    n, c, *spatial = loops[:-taps]
    tap_loops = loops[-taps:]
    *outer, positions = spatial
    lanes = _lanes(_extent(sch, positions), unit.lanes)
    vectors = _extent(sch, positions) // lanes
    run = max(count for count in range(1, STENCIL_VECTORS + 1) if vectors % count == 0)
    runs, vector, lane = sch.split(positions, factors=[None, run, lanes])
    channel = sch.fuse(n, c)
    sch.parallel(channel)
    row_parts = []
    tall = len(tap_loops) > 1 and _extent(sch, tap_loops[-2]) >= TALL_STENCIL
    if tall and _extent(sch, outer[-1]) % STENCIL_ROWS == 0:
        row_runs, row_part = sch.split(outer[-1], factors=[None, STENCIL_ROWS])
        outer, row_parts = [*outer[:-1], row_runs], [row_part]
    sch.reorder(*outer, runs, *tap_loops, *row_parts, vector, lane)
    accumulator = sch.cache_write(stencil, 0, "local")
    sch.reverse_compute_at(accumulator, runs)
    stores = [accumulator]
    if epilogue:
        sch.reverse_compute_at(epilogue[-1], runs)
        stores.append(epilogue[-1])
    stride = int(sch.get(pad).annotations[ROW_STRIDE_ANNOTATION])
    if stride > 1:
        sch.transform_layout(pad, ("write", 0), lambda *i: (*i[:-1], i[-1] % stride, i[-1] // stride))
    sch.compute_at(pad, channel)
    # Unrolled, the taps of the rows of a run read the same input vectors at the same addresses.
    for loop in (tap_loops if row_parts else tap_loops[-1:]) + row_parts:
        sch.unroll(loop)
    sch.unroll(vector)
    if lanes > 1:
        sch.vectorize(lane)
    sch.decompose_reduction(stencil, tap_loops[0])
    # Unit loops vanish under compute_at (one output position, one padded input column): only a
    # store's or the padding's own loops are split and vectorized.
    for store in stores:
        own, _ = _loops_inside(sch, store, runs)
        if own:
            _vectorize_loop(sch, own[-1], unit.lanes)
    padded, _ = _loops_inside(sch, pad, channel)
    if stride > 1 and padded and _extent(sch, padded[-1]) % stride == 0:
        # Each phase of the padded row is copied as vectors, the last one partial. Vectors of the
        # padding's bounds test measured slower than scalar code on unstrided rows (a 3 x 3
        # stencil on 64 x 64: 203 against 150 us), faster here (stride 2 on 112 x 112: 141
        # against 243; in 1-D 65 against 80).
        index, phase = sch.split(padded[-1], factors=[None, stride])
        sch.reorder(phase, index)
        sch.vectorize(sch.split(index, factors=[None, unit.lanes])[1])


_SCHEDULES = {
    "convt_gemm": lambda sch, unit, cores: _schedule_gemm(sch, "convt_gemm", unit, cores),
    "conv_gemm": lambda sch, unit, cores: _schedule_gemm(sch, "conv_gemm", unit, cores),
    "convt_col2im": lambda sch, _unit, _cores: _schedule_col2im(sch),
    "conv_row_phases": lambda sch, unit, _cores: _schedule_row_phases(sch, unit),
    "conv_depthwise": lambda sch, unit, _cores: _schedule_depthwise(sch, unit),
}
# Kernels whose schedule here beats what MetaSchedule finds in a budget this machine can afford
# (measured: 73-87 GFLOP/s against 18-46 after 32 trials per kernel), so tuning leaves them alone.
FINAL_SCHEDULES = ("convt_gemm", "conv_gemm")


def has_final_schedule(func: tirx.PrimFunc) -> bool:
    return first_block_named(s_tir.Schedule(func), FINAL_SCHEDULES) is not None


def _schedule_elementwise(sch: s_tir.Schedule, unit: VectorUnit) -> None:
    """Kernels without a reduction (the fused Snake activations, reshapes, a split into several
    outputs): everything inlined into the outputs, each output's flattened loop vectorized and in
    parallel. A split (attention's q, k, v: 1.3 ms of a VAE attention block) had kept TVM's
    single-threaded loops. Raises ScheduleError where a stage cannot be inlined; the kernel then
    stays as TVM wrote it."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    outputs = [sch.get(block).name_hint for block in blocks if not sch.get_consumers(block)]
    for stage in blocks:
        if sch.get(stage).name_hint not in outputs:
            sch.compute_inline(stage)
    for output in outputs:
        if _tile_transposed_read(sch, sch.get_sblock(output), unit.lanes):
            continue
        flat = sch.fuse(*sch.get_loops(sch.get_sblock(output)))
        if _extent(sch, flat) % unit.lanes == 0:
            chunks, lanes = sch.split(flat, factors=[None, unit.lanes])
            sch.vectorize(lanes)
            flat = chunks
        sch.parallel(flat)


def _variables(expr) -> list:
    found = []
    tvm_ffi.structural_walk(expr, [(tirx.Var, found.append)])
    return found


def _tile_transposed_read(sch: s_tir.Schedule, block, lanes: int) -> bool:
    """Where an output reads an input transposed (its innermost axis indexes another axis of the
    input, which runs along one of the output's outer axes: a Transpose, as around the LayerNorm
    and Linear layers of a channels-last block), compute it in tiles of lanes x lanes, vectors
    along the output's innermost axis. Flattened, each vector gathered its lanes from lines a row
    of the input apart, and used each line again only `lanes` output rows later, after the whole
    tensor had passed through L1: lndec's transposes of 384 x 256 channels by positions took 0.229
    and 0.220 ms (the second with a residual add), tiled 0.060 and 0.087 (kernel times, builds
    alternated). Returns whether it tiled the output."""
    loops = sch.get_loops(block)
    realize = sch.get(loops[-1]).body
    iterators = [iterator.var for iterator in realize.block.iter_vars]
    for region in realize.block.reads:
        if not len(region.region):
            continue
        used = _variables(region.region[-1].min)
        if len(used) != 1 or used[0].same_as(iterators[-1]):
            continue
        along = next((i for i, var in enumerate(iterators[:-1]) if var.same_as(used[0])), None)
        if along is None or _extent(sch, loops[along]) % lanes or _extent(sch, loops[-1]) % lanes:
            continue
        along_tiles, along_lane = sch.split(loops[along], factors=[None, lanes])
        tiles, lane = sch.split(loops[-1], factors=[None, lanes])
        outer = [*loops[:along], along_tiles, *loops[along + 1:-1]]
        sch.reorder(*outer, tiles, along_lane, lane)
        sch.vectorize(lane)
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        return True
    return False


def _iter_types(sch: s_tir.Schedule, block, wide_only: bool = False) -> list:
    """The iterator types of a block; with `wide_only`, those of one step left out."""
    return [
        iv.iter_type
        for iv in sch.get(block).iter_vars
        if not (wide_only and isinstance(iv.dom.extent, tirx.IntImm) and iv.dom.extent.value == 1)
    ]


def _is_elementwise(sch: s_tir.Schedule) -> bool:
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    return bool(blocks) and all(kind == tirx.IterVar.DataPar for block in blocks for kind in _iter_types(sch, block))


def _reduces(sch: s_tir.Schedule, block) -> bool:
    return tirx.IterVar.CommReduce in _iter_types(sch, block)


def _leading_spatial(sch: s_tir.Schedule, block) -> int:
    kinds = _iter_types(sch, block, wide_only=True)
    return next((i for i, kind in enumerate(kinds) if kind != tirx.IterVar.DataPar), len(kinds))


def _lane_partial_sums(sch: s_tir.Schedule, block, lanes: int) -> str | None:
    """Where a block reduces over its innermost loops, in whole vectors: their fused loop split
    into steps of `lanes` and `lanes` partial results, one per lane (rfactor), which a last step of
    the block adds up. Returns the name of the block of partial results."""
    kinds = _iter_types(sch, block)
    reduced = kinds.count(tirx.IterVar.CommReduce)
    if not reduced or any(kind != tirx.IterVar.CommReduce for kind in kinds[-reduced:]):
        return None
    trailing = sch.get_loops(block)[-reduced:]
    inner = sch.fuse(*trailing) if reduced > 1 else trailing[0]
    if _extent(sch, inner) % lanes or _extent(sch, inner) < MIN_PARTIAL_SUM_STEPS * lanes:
        return None
    return sch.get(sch.rfactor(sch.split(inner, factors=[None, lanes])[1], 0)).name_hint


def _lane_and_steps(sch: s_tir.Schedule, partial) -> tuple:
    """The loops of a block of partial sums over its lanes (its first iterator: see rfactor's
    factor axis) and over the steps of each lane's sum (its reduction)."""
    loops = sch.get_loops(partial)
    lane_var, *_, steps_var = sch.get(loops[-1]).body.iter_values

    def loop_of(var):
        found = [loop for loop in loops if sch.get(loop).loop_var.same_as(var)]
        if not found:
            raise ScheduleError(f"no loop binds {var} alone")
        return found[0]

    return loop_of(lane_var), loop_of(steps_var)


def _schedule_normalization(sch: s_tir.Schedule, unit: VectorUnit) -> None:
    """Softmax and the normalizations: reductions per row (max, sum, mean, variance), then
    elementwise stages. Rows in parallel, every stage computed inside the row's iteration; the
    elementwise stages that feed one consumer are inlined, the others and the output vectorized.
    Each reduction over a row's innermost positions sums in `unit.lanes` partial sums, one per
    lane, whose loop LLVM turns into vector adds: InstanceNorm's mean and variance of 128 channels
    of 64 x 64 took 0.49 ms summed one by one, 0.04 so (CycleGAN's norm kernels 22.9 -> 2.5 ms per
    call). The partial sums are more accurate too (CycleGAN against onnxruntime: max abs difference
    1.3e-5 -> 3.3e-6). Left to TVM's lowering, all of it ran on one thread, unvectorized."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    lead = min(_leading_spatial(sch, block) for block in blocks)
    if not lead:
        raise ScheduleError("no row loop that every stage shares")
    for block in blocks[:-1]:
        if not _reduces(sch, block) and len(sch.get_consumers(block)) == 1:
            sch.compute_inline(block)
    partial = [
        name
        for block in sch.get_child_blocks(sch.get_sblock("root"))
        if (name := _lane_partial_sums(sch, block, unit.lanes)) is not None
    ]
    *stages, output = sch.get_child_blocks(sch.get_sblock("root"))
    loops = sch.get_loops(output)
    wide = [i for i, loop in enumerate(loops) if _extent(sch, loop) > 1]
    outer = loops[: wide[lead - 1] + 1] if lead <= len(wide) else loops
    rows = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(rows)
    if len(loops) > len(outer):
        _vectorize_loop(sch, sch.get_loops(output)[-1], unit.lanes)
    for stage in reversed(stages):
        sch.compute_at(stage, rows, preserve_unit_loops=True)
    for stage in stages:
        if sch.get(stage).name_hint in partial:
            lane, steps = _lane_and_steps(sch, stage)
            sch.reorder(steps, lane)
            sch.decompose_reduction(stage, steps)
            # TVM refuses to vectorize a loop inside its block's reduction; unrolled, LLVM does.
            sch.unroll(lane)
        elif not _reduces(sch, stage):
            _vectorize_loop(sch, sch.get_loops(stage)[-1], unit.lanes)


def _schedule(func: tirx.PrimFunc, unit: VectorUnit, cores: int) -> tirx.PrimFunc | None:
    """`func` with our schedule for `unit` and `cores` threads, or None where we have none for it."""
    sch = s_tir.Schedule(func)
    name = first_block_named(sch, _SCHEDULES)
    if name is not None:
        finish = _SCHEDULES[name](sch, unit, cores)
        return sch.mod["main"] if finish is None else finish(sch.mod["main"])
    try:
        if _is_elementwise(sch):
            _schedule_elementwise(sch, unit)
        else:
            _schedule_normalization(sch, unit)
    except ScheduleError:
        return None
    return sch.mod["main"]


@tvm.transform.module_pass(opt_level=0, name="DefaultCPUSchedule")
class DefaultCPUSchedule:
    """Schedule every kernel without a tuning record that we know how to: the GEMMs, col2im, the
    depthwise stencil, elementwise kernels and normalizations, for an LLVM `target`: its vector
    registers and its num-cores threads.
    Others (if any) are left to TVM's default lowering."""

    def __init__(self, target: tvm.target.Target) -> None:
        self.unit = VectorUnit.of(target)
        self.cores = int(target.attrs["num-cores"])

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updated = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled", False)):
                continue
            scheduled = _schedule(func, self.unit, self.cores)
            if scheduled is not None:
                updated[gv] = scheduled.with_attr("tirx.is_scheduled", True)
        for gv, func in updated.items():
            mod[gv] = func
        return mod
