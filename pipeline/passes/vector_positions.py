"""Whole vectors of positions for the CPU GEMMs (ConvTranspose, Conv1d, MatMul).

The CPU micro-kernel takes vectors of as many lanes (up to the target's) as divide the positions a
GEMM computes, since a partial vector would put a bounds test in its innermost loop and LLVM then
emits scalar code. On a count no vector width divides that was one lane: on the Zen 4, convt1 of
the SAO decoder on 33 latent frames 34.8 ms against 10.4 on 32, a Conv1d to 131073 positions
584 ms against 83 on 131072, a Linear layer to 1153 features 10.2 ms against 1.18 to 1152. So on a
CPU these GEMMs compute `padded_positions`, reading zeros past their input (`zero_extended`), and
keep the positions the graph asked for (`cropped`, a last stage of the same kernel) where anything
reads them. GPU kernels take any count.
"""

from __future__ import annotations

from tvm import te, tirx

from .kernel_blocks import ceil_div

# Lanes of the widest vector of positions a CPU micro-kernel takes (AVX-512's 16 fp32).
VECTOR_POSITIONS = 16
# Where little is added, a multiple of up to this many positions, so that the micro-kernel's
# columns (2 vectors) and the wide panels of the CPU schedule divide the positions too.
WIDEST_POSITION_MULTIPLE = 256
# At most 1/PADDING_SHARE more positions for a multiple wider than one vector.
PADDING_SHARE = 64


def padded_positions(positions: int) -> int:
    """The positions a CPU GEMM computes for `positions`: a multiple of VECTOR_POSITIONS, or of up to
    WIDEST_POSITION_MULTIPLE where that adds at most 1/PADDING_SHARE; below VECTOR_POSITIONS the
    next power of two. Counts that are such multiples already stay as they are."""
    if positions < VECTOR_POSITIONS:
        return 1 << (positions - 1).bit_length()
    multiple = VECTOR_POSITIONS
    while (
        multiple < WIDEST_POSITION_MULTIPLE
        and (_round_up(positions, 2 * multiple) - positions) * PADDING_SHARE <= positions
    ):
        multiple *= 2
    return _round_up(positions, multiple)


def _round_up(value: int, multiple: int) -> int:
    return ceil_div(value, multiple) * multiple


def zero_extended(x: te.Tensor, positions: int, name: str) -> te.Tensor:
    """`x` (..., length) read as `positions` >= length positions, zeros past its end: a stage that
    the CPU schedule inlines into its copy of each input panel."""
    *outer, length = (int(d) for d in x.shape)
    if positions == length:
        return x
    return te.compute(
        (*outer, positions),
        lambda *i: tirx.if_then_else(i[-1] < length, x(*i), tirx.const(0, x.dtype)),
        name=name,
    )


def cropped(product: te.Tensor, positions: int, name: str) -> te.Tensor:
    """The first `positions` of a GEMM's output (..., padded positions)."""
    *outer, computed = (int(d) for d in product.shape)
    if positions == computed:
        return product
    return te.compute((*outer, positions), lambda *i: product(*i), name=name)
