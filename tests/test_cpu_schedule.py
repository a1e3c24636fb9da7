"""The CPU GEMM schedule's choices: the micro-kernel for the target's vector registers, the
weight streams on few positions, the width of the input panels, the work of each core."""

import numpy as np
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto, helper, numpy_helper

from pipeline.build import build
from pipeline.conformance import ConformanceCase, case_model
from pipeline.graphs import IR_VERSION, OPSET, make_graph
from pipeline.passes import default_cpu_schedule
from pipeline.passes.default_cpu_schedule import (
    MIN_PANEL_BALANCE,
    MIN_PANELS_PER_CORE,
    PANEL_BUDGET_BYTES,
    VectorUnit,
    _balanced,
    _subpanels,
    _tiles_per_block,
    micro_kernel,
    weight_streams,
)
from pipeline.passes.vector_positions import VECTOR_POSITIONS, padded_positions
from pipeline.target import resolve_target

from .conftest import (
    KERNEL_EQUALS_STRIDE,
    MATMUL_CASES,
    conv_model,
    convt_bn_relu_model,
    cpu_scheduled,
    matmul_model,
    onnx_file_build_options,
    tiny_build_options,
    tir_loops,
    unrolled_extents,
)

SUBPANEL_128_CHANNELS = 128 * 32 * 4  # 32 positions of 128 fp32 channels
AVX512 = VectorUnit.of(tvm.target.Target({"kind": "llvm", "mcpu": "rocketlake"}))
AVX2 = VectorUnit.of(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}))
SSE = VectorUnit.of(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"}))


def test_the_vector_unit_follows_the_target():
    assert (AVX512.lanes, AVX512.registers) == (16, 32)
    assert (AVX2.lanes, AVX2.registers) == (8, 16)
    assert (SSE.lanes, SSE.registers) == (4, 16)
    arm = VectorUnit.of(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}))
    assert (arm.lanes, arm.registers) == (4, 32)


def test_the_micro_kernel_is_sized_to_the_registers():
    assert (micro_kernel(2048, 8, AVX512).rows, micro_kernel(2048, 8, AVX512).columns) == (8, 32)
    assert (micro_kernel(2048, 8, AVX2).rows, micro_kernel(2048, 8, AVX2).columns) == (4, 16)
    for unit in (AVX512, AVX2, SSE):
        for positions in (8, 24, 2048, 8192 + 8):
            for row_tile in (8, 4, 2):
                tile = micro_kernel(positions, row_tile, unit)
                assert positions % tile.columns == 0 and tile.columns % tile.lanes == 0
                assert tile.rows * tile.columns // tile.lanes <= unit.accumulators
                assert tile.lanes <= unit.lanes and row_tile % tile.rows == 0


def test_a_short_row_tile_gets_more_vectors():
    assert micro_kernel(2048, 2, AVX512).columns == 8 * 16
    assert micro_kernel(2048, 2, AVX2).columns == 4 * 8


def test_weight_streams_leave_registers_for_the_input():
    """A Conv1d k3 of 256 channels on 8 positions streams its weight: its micro-kernel unrolls 2
    row tiles (16 accumulators of one vector), not 4 (32: every AVX-512 register, the input vector
    then had none and two accumulators lived on the stack)."""
    assert weight_streams(8) == 2
    model, _, _ = conv_model((1, 256, 8), 256, (3,), {"pads": [1, 1]})
    scheduled = cpu_scheduled(model, {"kind": "llvm", "mcpu": "znver4", "num-cores": 2})
    assert set(unrolled_extents(scheduled, "conv_gemm")) == {2 * 8, 1}


def test_a_panel_grows_to_the_budget():
    assert _subpanels(4096, SUBPANEL_128_CHANNELS, cores=2) == PANEL_BUDGET_BYTES // SUBPANEL_128_CHANNELS
    assert _subpanels(4096, PANEL_BUDGET_BYTES, cores=2) == 1


def test_a_panel_divides_the_positions():
    assert _subpanels(4096 + 8, SUBPANEL_128_CHANNELS, cores=2) == 8
    assert _subpanels(4095, SUBPANEL_128_CHANNELS, cores=2) == 1


def test_panels_split_evenly_over_the_cores_where_they_can():
    """A Linear layer's 1152 columns (36 column tiles of 384 channels): 9 panels of 4 had left one
    of 2 cores idle a ninth of the time (1.19 ms); 18 panels of 2, 1.08."""
    subpanel = 384 * 32 * 4
    assert _subpanels(36, subpanel, cores=2) == 2
    for column_tiles in range(1, 200):
        for cores in (2, 3, 4):
            count = _subpanels(column_tiles, subpanel, cores)
            assert count == 1 or _balanced(column_tiles // count, cores, MIN_PANEL_BALANCE), (column_tiles, cores)


def test_every_core_keeps_panels_to_run():
    assert [_subpanels(512, SUBPANEL_128_CHANNELS, cores) for cores in (2, 16, 64, 128)] == [32, 8, 2, 1]
    assert 512 // 8 >= MIN_PANELS_PER_CORE * 16


@pytest.mark.parametrize("graph", ["block3", "decoder"])
def test_a_micro_kernel_of_part_of_a_row_tile_is_exact(tmp_path, empty_schedules, graph):
    """Generic x86-64 (SSE: 16 registers) takes each 8-row tile in two 4-row parts, whatever this
    machine's own vector unit is; every x86-64 machine runs that code."""
    target = {"kind": "llvm", "mcpu": "x86-64", "num-cores": 2}
    result = build(tiny_build_options(tmp_path, empty_schedules, graph, target=target))
    assert result.passed, result.manifest.verification


def test_row_blocks_split_where_the_panels_leave_cores_idle():
    assert _tiles_per_block(128, panels=8, most=32, cores=2) == 32
    assert _tiles_per_block(32, panels=1, most=32, cores=2) == 16
    assert _tiles_per_block(32, panels=8, most=128, cores=16) == 16
    for cores in (2, 3, 16, 64):
        for row_tiles in (1, 7, 32, 128):
            for panels in (1, 3, 8):
                tiles = _tiles_per_block(row_tiles, panels, 32, cores)
                assert 1 <= tiles <= 32
                assert tiles == 1 or _balanced(-(-row_tiles // tiles) * panels, cores)


def test_row_blocks_are_equal_and_no_larger_than_the_rows():
    """A block of more tiles than there are (36 for 16: a 128-channel k7 Conv1d) ran 20 idle,
    predicated iterations per panel; 40 tiles in blocks of 36 left a block of 4."""
    assert _tiles_per_block(16, panels=2048, most=36, cores=2) == 16
    assert _tiles_per_block(40, panels=8, most=36, cores=2) == 20
    for row_tiles in range(1, 80):
        for most in (16, 32, 36):
            tiles = _tiles_per_block(row_tiles, 64, most, 2)
            blocks = -(-row_tiles // tiles)
            assert tiles <= min(row_tiles, most)
            assert blocks * tiles - row_tiles < blocks, (row_tiles, most, tiles)


def _parallel_extents(func: tvm.tirx.PrimFunc) -> list[int]:
    return [int(loop.extent) for loop in tir_loops(func) if loop.kind == tvm.tirx.ForKind.PARALLEL]


def test_every_gemm_keeps_sixteen_cores_busy():
    """SAO block1 on a chunk of 32 frames: its Conv1d k7 GEMMs have 8 input panels, which alone
    kept 8 of 16 cores busy; with the row blocks in the parallel loop every core has work."""
    sixteen_cores = {"kind": "llvm", "mcpu": "znver4", "num-cores": 16}
    scheduled = cpu_scheduled(make_graph("block1", latent_frames=32).model, sixteen_cores)
    gemms = {gv.name_hint: f for gv, f in scheduled.functions.items() if "gemm" in gv.name_hint}
    assert len(gemms) == 5  # the ConvTranspose, the k7 of each dilation, the k1 all three units share
    for name, func in gemms.items():
        assert _balanced(max(_parallel_extents(func)), 16), (name, _parallel_extents(func))


@pytest.mark.parametrize("graph", ["block2", "block3"])
def test_row_blocks_split_for_many_cores_are_exact(tmp_path, empty_schedules, graph, monkeypatch):
    """Tiny blocks built for 16 cores split their row blocks down to 1 and 2 tiles; run here on
    however many threads this machine has, they still match onnxruntime."""
    splits = []

    def recorded(row_tiles, panels, most, cores):
        splits.append((most, _tiles_per_block(row_tiles, panels, most, cores)))
        return splits[-1][1]

    monkeypatch.setattr(default_cpu_schedule, "_tiles_per_block", recorded)
    target = {**resolve_target("cpu").config, "num-cores": 16}
    result = build(tiny_build_options(tmp_path, empty_schedules, graph, target=target))
    assert any(tiles < most for most, tiles in splits), splits
    assert result.passed, result.manifest.verification


def test_a_col2im_of_one_tap_unrolls_no_output_loop():
    """Its tap loops have one step each and vanish where the gather is computed per output: the
    schedule unrolled the output's rows and columns in their place (4096 copies of the body for a
    64 x 64 output, 34 s in LLVM)."""
    scheduled = cpu_scheduled(case_model(KERNEL_EQUALS_STRIDE))
    assert unrolled_extents(scheduled, "col2im") == []


def test_a_col2im_runs_its_whole_fused_chain_in_parallel(tmp_path, empty_schedules):
    """ConvTranspose2d, BatchNormalization, Relu (a DCGAN layer): FuseOps puts the col2im and four
    elementwise ops after it in one kernel. Every stage is computed inside the col2im's parallel
    loop; left as loop nests of their own they ran serially (8.3 ms of such a kernel, 1.9 inlined)."""
    model = convt_bn_relu_model()
    scheduled = cpu_scheduled(model)
    (name, kernel), = [(gv.name_hint, f) for gv, f in scheduled.functions.items() if "col2im" in gv.name_hint]
    assert "divide" in name and "relu" in name
    outermost = [loop for loop in tir_loops(kernel) if loop.kind == tvm.tirx.ForKind.PARALLEL]
    assert len(outermost) == 1
    assert len(tir_loops(kernel)) == len(tir_loops(kernel.with_body(outermost[0])))  # no loop outside it
    path = tmp_path / "convt_bn_relu.onnx"
    path.write_bytes(model.SerializeToString())
    assert build(onnx_file_build_options(path, tmp_path / "out", empty_schedules)).passed


def test_the_epilogue_of_a_one_chunk_gemm_reads_its_register_tile(tmp_path, empty_schedules):
    """x + Conv1d k1(relu(x)), the residual unit's tail: the sum over 16 channels is one chunk, and
    the residual add reads the accumulator tile itself, not a copy of it in a second buffer (one
    copy fewer per tile: the Oobleck block5 k1 GEMM 41.19 -> 40.55 ms, builds alternated)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 16, 1)).astype(np.float32) / 4
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Conv", ["r", "w"], ["c"]),
            helper.make_node("Add", ["x", "c"], ["y"]),
        ],
        "residual_tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 256])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    (kernel,) = [f for gv, f in cpu_scheduled(model).functions.items() if "conv_gemm" in gv.name_hint]
    sch = tvm.s_tir.Schedule(kernel)
    epilogue = sch.get(sch.get_child_blocks(sch.get_sblock("root"))[-1])
    reads = {region.source.name for region in epilogue.reads}
    assert "conv_gemm_intermediate_local" in reads, (epilogue.name_hint, reads)
    assert 'T.sblock("conv_gemm_intermediate_local")' not in kernel.script()  # the write-back copy
    path = tmp_path / "residual_tail.onnx"
    path.write_bytes(model.SerializeToString())
    assert build(onnx_file_build_options(path, tmp_path / "out", empty_schedules)).passed


def test_a_conv1d_with_taps_copies_wide_panels_with_their_halo(tmp_path, empty_schedules):
    """A Conv1d k7 of dilation 3 (16 channels, 8192 positions) on 2 cores: each copied panel holds
    32 micro-kernel panels of 32 positions and the halo (18) in one run per channel, copied once,
    where it held one micro-kernel panel (50 positions: the halo copied again for every 32)."""
    model, _, _ = conv_model((1, 16, 8192), 16, (7,), {"dilations": [3], "pads": [9, 9]})
    two_cores = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}
    (kernel,) = [f for gv, f in cpu_scheduled(model, two_cores).functions.items() if "conv_gemm" in gv.name_hint]
    sch = tvm.s_tir.Schedule(kernel)
    *_, channels, positions = sch.get_loops(sch.get_sblock("conv_pad_global"))
    assert (int(sch.get(channels).extent), int(sch.get(positions).extent)) == (16, 32 * 32 + 18)
    path = tmp_path / "dilated_k7.onnx"
    path.write_bytes(model.SerializeToString())
    assert build(onnx_file_build_options(path, tmp_path / "out", empty_schedules)).passed


def _conv_silu_conv_model():
    """Conv2d 3 x 3, SiLU, Conv2d 3 x 3 on 16 x 16: the SiLU lands in the second Conv2d's padding
    kernel, whose padded rows (18) are not whole vectors."""
    rng = np.random.default_rng(0)
    first = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) / 6
    second = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) / 8
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["a"], ["gate"]),
            helper.make_node("Mul", ["a", "gate"], ["silu"]),
            helper.make_node("Conv", ["silu", "w2"], ["y"], pads=[1, 1, 1, 1]),
        ],
        "conv_silu_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [numpy_helper.from_array(first, "w1"), numpy_helper.from_array(second, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def test_a_padding_kernel_computes_its_fused_chain_a_row_at_a_time_vectorized(tmp_path, empty_schedules):
    """Inlined into the padding, the chain (here a SiLU) ran scalar over rows of 130 for 128 columns:
    2.2 ms of a GroupNorm + SiLU padding kernel (64 channels of 128 x 128), 0.2 ms a row at a time."""
    model = _conv_silu_conv_model()
    scheduled = cpu_scheduled(model)
    ((name, kernel),) = [
        (gv.name_hint, f)
        for gv, f in scheduled.functions.items()
        if "sigmoid" in gv.name_hint and "row_phases" in gv.name_hint
    ]
    outermost = [loop for loop in tir_loops(kernel) if loop.kind == tvm.tirx.ForKind.PARALLEL]
    assert len(outermost) == 1
    assert len(tir_loops(kernel)) == len(tir_loops(kernel.with_body(outermost[0])))  # no loop outside it
    assert any(loop.kind == tvm.tirx.ForKind.VECTORIZED for loop in tir_loops(kernel)), name
    path = tmp_path / "conv_silu_conv.onnx"
    path.write_bytes(model.SerializeToString())
    assert build(onnx_file_build_options(path, tmp_path / "out", empty_schedules)).passed


def test_a_kernel_with_several_outputs_runs_each_in_parallel(tmp_path, empty_schedules):
    """An Add and a Split into three (attention's q, k, v): one kernel with three outputs, which
    had kept TVM's single-threaded loops."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "bias"], ["biased"]),
            helper.make_node("Split", ["biased"], ["q", "k", "v"], axis=1, num_outputs=3),
        ],
        "split",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 48, 64])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 16, 64]) for name in "qkv"],
        [numpy_helper.from_array(np.random.default_rng(0).standard_normal((1, 48, 1)).astype(np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)
    scheduled = cpu_scheduled(model)
    ((name, kernel),) = [(gv.name_hint, f) for gv, f in scheduled.functions.items() if "split" in gv.name_hint]
    assert [loop.kind for loop in tir_loops(kernel)].count(tvm.tirx.ForKind.PARALLEL) == 3, name
    path = tmp_path / "split.onnx"
    path.write_bytes(model.SerializeToString())
    assert build(onnx_file_build_options(path, tmp_path / "out", empty_schedules)).passed


def test_the_crop_after_a_conv2d_reads_the_gemm_output_without_division():
    """A reshape and a strided slice indexed the flat GEMM output with a division and a modulo by
    its length per element, and the padding kernel they fused into ran them lane by lane (1.45 ms
    where the crop's own compute takes 0.34, a UNet's last stage)."""
    scheduled = cpu_scheduled(_conv_silu_conv_model())
    (kernel,) = [f for gv, f in scheduled.functions.items() if "sigmoid" in gv.name_hint and "row_phases" in gv.name_hint]
    loads = []
    tvm_ffi.structural_walk(kernel.body, [(tvm.ir.expr.TensorLoad, loads.append)], order="pre")
    # The GEMM output is the kernel's only 3-D input: (batch, channels, positions).
    indices = [index for load in loads if len(load.source.shape) == 3 for index in load.indices]
    divisions = []
    for index in indices:
        tvm_ffi.structural_walk(index, [(tvm.tirx.FloorDiv, divisions.append), (tvm.tirx.FloorMod, divisions.append)])
    assert indices and not divisions, indices


def test_a_transpose_runs_in_tiles_of_vectors(tmp_path, empty_schedules):
    """(48, 32) -> (32, 48): vectors along the output's rows, in tiles of as many output rows, so each
    line of the input serves the whole tile from L1. Flattened, each vector gathered 16 lines and met
    each again 16 output rows later: 0.23 ms for a 384 x 256 transpose, 0.06 tiled."""
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1])],
        "transpose",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 48, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 48])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    lanes = VectorUnit.of(resolve_target("cpu").tvm_target()).lanes
    scheduled = cpu_scheduled(model)
    ((name, kernel),) = [(gv.name_hint, f) for gv, f in scheduled.functions.items() if "transpose" in gv.name_hint]
    *_, parallel, tiles, rows, vector = [(loop.kind, int(loop.extent)) for loop in tir_loops(kernel)]
    assert parallel[0] == tvm.tirx.ForKind.PARALLEL and parallel[1] == 32 // lanes, name
    assert tiles[1] == 48 // lanes and rows[1] == lanes and vector == (tvm.tirx.ForKind.VECTORIZED, lanes)
    path = tmp_path / "transpose.onnx"
    path.write_bytes(model.SerializeToString())
    assert build(onnx_file_build_options(path, tmp_path / "out", empty_schedules)).passed


def test_positions_are_padded_to_whole_vectors_and_little_more():
    for positions in [1, 2, 3, 5, 8, 12, 16, 17, 33, 215, 264, 1720, 8193, 131073, 131072]:
        padded = padded_positions(positions)
        assert padded >= positions and padded % min(VECTOR_POSITIONS, padded) == 0, (positions, padded)
        assert padded == positions or positions < 4 * VECTOR_POSITIONS or padded - positions <= positions / 16
    assert padded_positions(131073) % 256 == 0  # wide panels divide it too
    assert [padded_positions(n) for n in (1, 8, 32, 1024)] == [1, 8, 32, 1024]  # whole vectors stay as they are


def _gemm_vector_lanes(model, kernel: str) -> list[int]:
    two_cores = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}
    (func,) = [f for gv, f in cpu_scheduled(model, two_cores).functions.items() if kernel in gv.name_hint]
    return [int(loop.extent) for loop in tir_loops(func) if loop.kind == tvm.tirx.ForKind.VECTORIZED]


@pytest.mark.parametrize(
    "case",
    [
        # The first layer of an Oobleck decoder on a chunk of 33 latent frames.
        ConformanceCase("odd_frames", (1, 64, 33), (64, 32, 16), {"strides": [8], "pads": [4, 4]}, True),
        ConformanceCase("odd_2d", (1, 16, 5, 7), (16, 8, 4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
    ],
    ids=lambda case: case.name,
)
def test_a_convtranspose_gemm_on_an_odd_count_of_positions_runs_in_whole_vectors(tmp_path, empty_schedules, case):
    """On 33 positions (an odd chunk of latent frames) the micro-kernel's vectors had one lane, as
    the largest power of two dividing the positions: scalar code, convt1 of the SAO decoder at T = 33
    34.8 ms against 10.4 at T = 32. Its GEMM now computes 48 positions, the last 15 on zeros."""
    assert max(_gemm_vector_lanes(case_model(case), "convt_gemm")) == 16
    path = tmp_path / f"{case.name}.onnx"
    path.write_bytes(case_model(case).SerializeToString())
    assert build(onnx_file_build_options(path, tmp_path / "out", empty_schedules)).passed


@pytest.mark.parametrize("length, attrs", [(40, {}), (8199, {"dilations": [3], "pads": [9, 9]})])
def test_a_conv1d_on_an_odd_count_of_positions_runs_in_whole_vectors(tmp_path, empty_schedules, length, attrs):
    """A Conv1d k7 to 34 or 8199 positions: the GEMM computes whole vectors (48; 8448, so that wide
    panels divide them too) and the kernel's last stage keeps the output's positions. A Conv1d of 128
    to 256 channels k2 to 131073 positions had taken 584 ms, 7 times its time on 131072."""
    model, _, _ = conv_model((1, 16, length), 16, (7,), attrs)
    assert max(_gemm_vector_lanes(model, "conv_gemm")) == 16
    path = tmp_path / "odd_conv1d.onnx"
    path.write_bytes(model.SerializeToString())
    assert build(onnx_file_build_options(path, tmp_path / "out", empty_schedules)).passed


@pytest.mark.parametrize("case", ["linear_odd_columns", "attention_odd_scores"])
def test_a_matmul_to_an_odd_count_of_columns_runs_in_whole_vectors(case):
    """A Linear layer to 1153 features took 10.2 ms, 8.6 times its time to 1152 (one-lane vectors);
    now 1.35 ms. The results are checked in test_matmul_gemm."""
    model, _, _ = matmul_model(*MATMUL_CASES[case])
    assert max(_gemm_vector_lanes(model, "matmul_gemm")) == 16
