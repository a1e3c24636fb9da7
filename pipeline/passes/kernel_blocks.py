"""What our CPU and GPU schedules ask of a kernel's blocks: which of the blocks they schedule it
holds (our TE computes name them: convt_gemm, conv_gemm, convt_col2im), and their reductions."""

from __future__ import annotations

from collections.abc import Iterable

from tvm import s_tir, tirx
from tvm.s_tir.schedule import ScheduleError


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
