"""What our CPU and GPU schedules ask of a kernel's blocks: which of the blocks they schedule it
holds (our TE computes name them: convt_gemm, conv_gemm, convt_col2im, conv_depthwise), their
reductions, and the elementwise chains FuseOps put around them; and the rounding up they share."""

from __future__ import annotations

from collections.abc import Iterable

from tvm import s_tir, tirx
from tvm.s_tir.schedule import ScheduleError


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except ScheduleError:  # no block of that name in this kernel
        return False
    return True


def first_block_named(sch: s_tir.Schedule, names: Iterable[str]) -> str | None:
    """The first of `names` that is a block of the kernel, or None."""
    return next((name for name in names if has_block(sch, name)), None)


def reduction_rank(sch: s_tir.Schedule, block) -> int:
    """How many reduction iterators a block has (col2im: one tap loop per spatial dimension)."""
    return sum(1 for iv in sch.get(block).iter_vars if iv.iter_type == tirx.IterVar.CommReduce)


def inline_chain_after(sch: s_tir.Schedule, name: str) -> None:
    """Inline into the kernel's last stage the elementwise chain FuseOps put after block `name`
    (bias; a BatchNorm's subtract, divide, multiply, add; an activation): every later stage that
    writes only the kernel's intermediate buffers. Its only consumer is then the stage that
    writes the output, and no stage of the chain is left as a loop nest of its own (on a CPU
    those ran serially, on a GPU outside any thread)."""
    root = sch.get_sblock("root")
    intermediate = list(sch.get(root).alloc_buffers)
    blocks = sch.get_child_blocks(root)
    names = [sch.get(block).name_hint for block in blocks]
    for block in blocks[names.index(name) + 1:]:
        if all(any(region.source.same_as(buffer) for buffer in intermediate) for region in sch.get(block).writes):
            sch.compute_inline(block)
