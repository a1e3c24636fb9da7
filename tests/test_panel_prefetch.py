"""The prefetch of each next input panel in the GEMM of a stride-1 Conv2d on long input rows, and of
the channel rows ahead in a wide panel copy (pipeline/passes/panel_prefetch.py): where each is
added, which lines it asks for, and that the kernel it is added to compiles to prefetch
instructions and computes what onnxruntime does."""

import platform

import pytest
import tvm
import tvm_ffi
from tvm.sym import Analyzer

from pipeline.build import build
from pipeline.passes.panel_prefetch import CACHE_LINE_BYTES, COPY_AHEAD_ANNOTATION, COPY_AHEAD_CHANNELS
from pipeline.target import resolve_target

from .conftest import conv_model, cpu_scheduled, onnx_file_build_options, tir_loops

# Rows of 300 columns (the GEMM's rows 304 positions, 1216 bytes apart), batch 2, 3 input channels.
LONG_ROWS = ((2, 3, 4, 300), 5, (3, 3), {"pads": [1, 1, 1, 1]})
FLOATS_PER_LINE = CACHE_LINE_BYTES // 4
# A Conv1d k1 (no halo: its input panels are copied wide) of 16 channels on 16384 positions: on 2
# cores 8 panels of 2048 positions, each channel's run in a panel 8 KiB.
WIDE_COPY = ((1, 16, 16384), 16, (1,), {})


def _gemm_kernel(model) -> tvm.tirx.PrimFunc:
    (kernel,) = [f for gv, f in cpu_scheduled(model).functions.items() if "conv_gemm" in gv.name_hint]
    return kernel


def _prefetches(stmt) -> list:
    calls = []
    tvm_ffi.structural_walk(stmt, [(tvm.ir.expr.Call, calls.append)], order="pre")
    return [call for call in calls if call.op.name == "tirx.prefetch"]


def _evaluated(expr, values: dict) -> int:
    """`expr` with its variables (by name) given values, as a number."""

    def value(var):
        return tvm.tirx.const(values[var.name], str(var.ty)) if var.name in values else var

    bound = tvm_ffi.structural_map(expr, (tvm.tirx.Var, value))
    result = Analyzer().simplify(bound)
    assert isinstance(result, tvm.tirx.IntImm), result
    return int(result.value)


def test_each_panel_prefetches_the_lines_the_next_panel_reads_first():
    """At the top of every iteration of the parallel loop (batch, panel), for every input channel,
    every cache line that the next panel's last kernel row reads: input row r + 2 of the padded
    input for output row r, 34 positions (32 and the taps' reach) further on, in the same batch entry."""
    model, _, _ = conv_model(*LONG_ROWS)
    kernel = _gemm_kernel(model)
    (parallel,) = [loop for loop in tir_loops(kernel) if loop.kind == tvm.tirx.ForKind.PARALLEL]
    channels = parallel.body.seq[0]
    assert isinstance(channels, tvm.tirx.For) and int(channels.extent) == 3
    prefetches = _prefetches(channels)
    assert prefetches and _prefetches(kernel.body) == prefetches  # nowhere else
    input_buffer = prefetches[0].args[0].args[0].source
    _, _, length = (int(d) for d in input_buffer.ty.shape)
    row = 304  # the GEMM's row width, a multiple of 32 positions at least as wide as the padded row
    iterations, panels = int(parallel.extent), int(parallel.extent) // 2
    width = 4 * row // panels  # positions per panel: 4 rows of output, in `panels` panels
    for index in range(iterations):
        batch, panel = divmod(index, panels)
        following = min(panel + 1, panels - 1)
        for channel in range(3):
            values = {parallel.loop_var.name: index, channels.loop_var.name: channel}
            addresses = [tuple(_evaluated(i, values) for i in call.args[0].args[0].indices) for call in prefetches]
            assert {(b, c) for b, c, _ in addresses} == {(batch, channel)}
            assert all(0 <= position < length for _, _, position in addresses)
            lines = {position // FLOATS_PER_LINE for _, _, position in addresses}
            first = following * width + 2 * row
            read = {position // FLOATS_PER_LINE for position in range(first, first + width + 2)}
            assert read <= lines, (index, channel)


@pytest.mark.parametrize(
    "case",
    [
        ((1, 3, 4, 100), 5, (3, 3), {"pads": [1, 1, 1, 1]}),  # rows 416 bytes apart
        ((1, 3, 4, 300), 5, (1, 1), {}),  # one kernel row: nothing read again
        ((1, 3, 4, 300), 5, (1, 3), {"pads": [0, 1, 0, 1]}),
        ((1, 3, 8, 300), 5, (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # panels copied
    ],
    ids=["short_rows", "1x1", "one_kernel_row", "strided"],
)
def test_no_prefetch_where_the_hardware_keeps_up_or_the_rows_are_copied(case):
    model, _, _ = conv_model(*case)
    assert _prefetches(_gemm_kernel(model).body) == []


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="checks x86 prefetch instructions")
def test_the_prefetches_compile_to_prefetcht1():
    """Into L2 (prefetcht1): prefetching into L1 measured slower."""
    model, _, _ = conv_model(*LONG_ROWS)
    kernel = _gemm_kernel(model).with_attr("global_symbol", "main")
    executable = tvm.compile(tvm.IRModule({"main": kernel}), target=resolve_target("cpu").tvm_target())
    assembly = executable.mod.inspect_source("asm")
    assert "prefetcht1" in assembly and "prefetcht0" not in assembly


@pytest.mark.parametrize("case", [LONG_ROWS, WIDE_COPY], ids=["conv2d_next_panel", "conv1d_copy_ahead"])
def test_a_gemm_that_prefetches_is_exact(case, tmp_path, empty_schedules):
    model, _, _ = conv_model(*case)
    path = tmp_path / "conv.onnx"
    path.write_bytes(model.SerializeToString())
    result = build(onnx_file_build_options(path, tmp_path / "out", empty_schedules))
    assert result.passed, result.manifest.verification


def test_a_wide_panel_copy_prefetches_the_same_positions_channels_ahead():
    kernel = _gemm_kernel(conv_model(*WIDE_COPY)[0])
    (prefetch,) = _prefetches(kernel.body)
    address = prefetch.args[0].args[0]
    (parallel,) = [loop for loop in tir_loops(kernel) if loop.kind == tvm.tirx.ForKind.PARALLEL]
    (copy,) = [  # the loop over a channel's vectors, the prefetch first in its body
        loop
        for loop in tir_loops(kernel)
        if isinstance(loop.body, tvm.tirx.SeqStmt) and isinstance(loop.body.seq[0], tvm.tirx.Evaluate)
    ]
    (channel,) = [loop for loop in tir_loops(kernel) if loop.body.same_as(copy)]
    panels, width = int(parallel.extent), 16384 // int(parallel.extent)
    assert int(channel.extent) == 16 and int(copy.extent) * 16 == width >= 1024  # runs of 4 KiB or more
    assert COPY_AHEAD_ANNOTATION not in kernel.script()
    for panel in (0, panels - 1):
        for c in (0, 7, 8, 15):
            for vector in (0, int(copy.extent) - 1):
                values = {parallel.loop_var.name: panel, channel.loop_var.name: c, copy.loop_var.name: vector}
                indices = [_evaluated(index, values) for index in address.indices]
                assert indices == [0, min(c + COPY_AHEAD_CHANNELS, 15), panel * width + vector * 16], (values, indices)


@pytest.mark.parametrize(
    "case",
    [((1, 16, 2048), 16, (1,), {}), ((1, 16, 16384), 16, (3,), {"pads": [1, 1]})],
    ids=["runs_of_1_kib", "halo"],
)
def test_no_copy_prefetch_for_short_runs_or_panels_with_a_halo(case):
    assert _prefetches(_gemm_kernel(conv_model(*case)[0]).body) == []
