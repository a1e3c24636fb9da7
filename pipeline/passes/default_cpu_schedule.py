"""A usable CPU schedule for our ConvTranspose kernels where no tuning record applies.

Without one, TVM runs the GEMM as written: the reduction over input channels innermost, striding
through the weight and the input, on one core. This moves the channel loop outside the taps and
positions, so each step is a vectorized multiply-add over a contiguous row held in cache, and
spreads the (batch, output channel) rows over the cores. MetaSchedule records, where present, replace it:
kernels marked `tirx.is_scheduled` are left alone.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

VECTOR_LANES = 16


def _parallel_rows(sch: s_tir.Schedule, block) -> list:
    """Fuse the (batch, channel) loops of a block and run them in parallel; return the other loops."""
    n, c, *rest = sch.get_loops(block)
    sch.parallel(sch.fuse(n, c))
    return rest


def _schedule_gemm(sch: s_tir.Schedule) -> None:
    block = sch.get_sblock("convt_gemm")
    *spatial, channel = _parallel_rows(sch, block)
    rank = len(spatial) // 2
    taps, positions = spatial[:rank], spatial[rank:]
    # (co, ci, k, l): the weight row w[ci, co, :] is contiguous, and the k x L accumulator
    # block of one output channel stays in L1 across the whole channel loop.
    sch.reorder(channel, *taps, *positions)
    inner = sch.fuse(*positions) if len(positions) > 1 else positions[0]
    _, lanes = sch.split(inner, factors=[None, VECTOR_LANES])
    sch.vectorize(lanes)
    sch.decompose_reduction(block, channel)


def _schedule_col2im(sch: s_tir.Schedule) -> None:
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if len(sch.get_loops(block)) >= 2:
            _parallel_rows(sch, block)


_SCHEDULES = {"convt_gemm": _schedule_gemm, "convt_col2im": _schedule_col2im}


def _has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # ScheduleError: no block of that name in this kernel
        return False
    return True


@tvm.transform.module_pass(opt_level=0, name="DefaultConvTransposeCPUSchedule")
class DefaultConvTransposeCPUSchedule:
    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updated = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled", False)):
                continue
            sch = s_tir.Schedule(func)
            for name, schedule in _SCHEDULES.items():
                if _has_block(sch, name):
                    schedule(sch)
                    updated[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        for gv, func in updated.items():
            mod[gv] = func
        return mod
