"""Our GPU schedules for kernels where no tuning record applies; dlight's, then TVM's thread
binding, for the rest. A GPU kernel without bound threads fails to compile, so every kernel leaves
here scheduled.

- col2im and the depthwise stencil: one thread per output element, its few taps unrolled. dlight
  files them under GeneralReduction (a sum over taps), which runs each output's sum across a
  256-thread block: 2 of 256 threads busy for the Oobleck layers, one block per output element.
- The GEMMs (convt_gemm, conv_gemm with its fused epilogue): dlight's Matmul rule, which stages
  tiles of both operands in shared memory and accumulates a register tile per thread. Its CUDA
  tile gives each thread 4 x 4 outputs: two 16-byte shared-memory loads feed 16 FMAs. Where the
  grid still fills the GPU we give each thread 8 x 8 (a 128 x 128 block tile): four loads feed
  64 FMAs, half the shared-memory traffic per multiply-add (ptxas: 198 registers, no spills,
  12 KiB of shared memory for the Oobleck GEMMs). Not yet timed on a GPU.
- A GEMM dlight's Matmul rule does not take (grouped; one output row or one position): a thread
  per output, like col2im.
- Elementwise and anything else: dlight's rules in order, then DefaultGPUSchedule.
MetaSchedule records, where present, replace all of it: kernels marked `tirx.is_scheduled` are
left alone.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl

from .kernel_blocks import ceil_div, first_block_named, inline_chain_after, reduction_rank

THREADS_PER_BLOCK = 256
# The large tile runs one block per multiprocessor (its 198 registers x 256 threads). A grid of
# fewer than two blocks per multiprocessor of an H100/H200 (132) would leave much of the GPU idle
# in its last wave, so smaller GEMMs keep dlight's tile and its many small blocks.
MULTIPROCESSORS = 132
MIN_BLOCKS = 2 * MULTIPROCESSORS

LARGE_TILE = dl.gpu.Matmul.Config(
    block_size_x=16,
    block_size_y=16,
    micro_size_x=8,
    micro_size_y=8,
    micro_size_k=8,
    vector_size=4,
    unroll=256,
    use_shared=True,
    storage_align=True,
    inner_x=False,
)


def gemm_config(output_shape: tuple[int, ...], target: tvm.target.Target) -> dl.gpu.Matmul.Config:
    """The large tile where the GEMM's output (batch..., rows, columns) still gives MIN_BLOCKS
    blocks of it, else dlight's own tile for the target."""
    *batch, rows, columns = output_shape
    blocks = ceil_div(rows, LARGE_TILE.block_size_x * LARGE_TILE.micro_size_x) * ceil_div(
        columns, LARGE_TILE.block_size_y * LARGE_TILE.micro_size_y
    )
    for extent in batch:
        blocks *= extent
    return LARGE_TILE if blocks >= MIN_BLOCKS else dl.gpu.Matmul().get_configs(target)


class _SizedMatmul(dl.gpu.Matmul):
    def __init__(self, output_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.output_shape = output_shape

    def get_configs(self, target: tvm.target.Target) -> dl.gpu.Matmul.Config:
        return gemm_config(self.output_shape, target)


def _schedule_gemm(func: tirx.PrimFunc, name: str, target: tvm.target.Target) -> s_tir.Schedule:
    """dlight's Matmul with gemm_config's tile. Where dlight sees no matmul in it (a grouped GEMM;
    one output row, as a Conv1d to one channel, HiFi-GAN's last; one position, as a ConvTranspose
    on one latent frame), a thread per output: dlight's GEMV rule, next in line, staged a Conv1d's
    whole padded input in shared memory (2 MiB for 16 channels of 32768 positions, where a block
    has 48 KiB), which nvcc refused."""
    sch = s_tir.Schedule(func)
    shape = tuple(int(d) for d in sch.get(sch.get_sblock(name)).writes[0].source.shape)
    scheduled = _SizedMatmul(shape).apply(func, target, False)
    return scheduled if scheduled is not None else _schedule_per_output(func, name, unroll_sum=False)


def _schedule_per_output(func: tirx.PrimFunc, name: str, unroll_sum: bool = True) -> s_tir.Schedule:
    """A sum per output (col2im and the depthwise stencil: a few taps, unrolled; a GEMM dlight does
    not take): threads over the outputs of the kernel's last stage in order, so a warp writes
    consecutive outputs; the sum computed per output in a register. The stages before it (the
    stencil's padding: a bounds test per read instead) and the elementwise chain after it are
    inlined: the chain's later stages had been left outside every thread, where TVM compiles them
    into the host function (a ConvTranspose2d + BatchNorm + ReLU's divide, multiply, add and max)."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(block).name_hint for block in blocks]
    for stage in blocks[: names.index(name)]:
        sch.compute_inline(stage)
    inline_chain_after(sch, name)
    gather = sch.get_sblock(name)
    consumers = sch.get_consumers(gather)
    outer = consumers[0] if len(consumers) == 1 else gather
    spatial = sch.get_loops(outer)
    if outer == gather:
        spatial = spatial[: len(spatial) - reduction_rank(sch, gather)]
    blocks, threads = sch.split(sch.fuse(*spatial), factors=[None, THREADS_PER_BLOCK])
    sch.bind(blocks, "blockIdx.x")
    sch.bind(threads, "threadIdx.x")
    if outer != gather:
        sch.compute_at(gather, threads)
        sch.set_scope(gather, 0, "local")
    # The gather's loops inside the thread loop are its taps; a tap loop of one step (a kernel no
    # longer than its stride) has vanished where it was computed at the consumer's threads.
    taps = sch.get_loops(gather)[2:]
    if taps:
        sch.decompose_reduction(gather, taps[0])
    for tap in taps if unroll_sum else []:
        sch.unroll(tap)
    return sch


_SCHEDULES = {
    "convt_gemm": lambda func, target: _schedule_gemm(func, "convt_gemm", target),
    "conv_gemm": lambda func, target: _schedule_gemm(func, "conv_gemm", target),
    "convt_col2im": lambda func, _target: _schedule_per_output(func, "convt_col2im"),
    "conv_depthwise": lambda func, _target: _schedule_per_output(func, "conv_depthwise"),
}


def _our_schedule(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc | None:
    name = first_block_named(s_tir.Schedule(func), _SCHEDULES)
    if name is None:
        return None
    scheduled = _SCHEDULES[name](func, target)
    return None if scheduled is None else scheduled.mod["main"]


@tvm.transform.module_pass(opt_level=0, name="DefaultGPUSchedule")
class DefaultGPUSchedule:
    """Schedule every kernel without a tuning record for the current GPU target (`with target:`)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = tvm.target.Target.current(allow_none=False)
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled", False)):
                continue
            scheduled = _our_schedule(func, target)
            if scheduled is not None:
                mod[gv] = scheduled.with_attr("tirx.is_scheduled", True)
        return tvm.transform.Sequential(
            [
                dl.ApplyDefaultSchedule(
                    dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
                ),
                s_tir.transform.DefaultGPUSchedule(),
            ],
            name="dlight-and-thread-binding",
        )(mod)
