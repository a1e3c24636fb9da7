"""CUDA builds: compile-only checks that run anywhere nvcc is, and GPU checks where a GPU is."""

import shutil

import pytest
import tvm
import tvm_ffi

import pipeline.build as build_module
from pipeline import cuda_driver, devices, host_emulation
from pipeline.artifact import read_manifest
from pipeline.build import BuildOptions, build, check_on_host, compile_module
from pipeline.conformance import case_model, load_cases
from pipeline.errors import (
    BuildError,
    DeviceError,
    TargetError,
    TuningError,
    UnverifiedArtifactError,
    VerificationError,
)
from pipeline.graphs import GraphSelection
from pipeline.importer import import_onnx
from pipeline.lowering import lower
from pipeline.passes import default_gpu_schedule
from pipeline.passes.default_gpu_schedule import (
    LARGE_TILE,
    MIN_BLOCKS,
    THREADS_PER_BLOCK,
    DefaultGPUSchedule,
    gemm_config,
)
from pipeline.runtime import load
from pipeline.target import resolve_target
from pipeline.tuning import ScheduleStore, TuneOptions, tune
from pipeline.verify import DEFAULT_INPUT_SEED, Tolerance, verify_artifact

from .conftest import (
    CONV2D_CASES,
    DEPTHWISE_CONV_CASES,
    GROUPED_CONV_CASES,
    KERNEL_EQUALS_STRIDE,
    MATMUL_CASES,
    NORMALIZATION_CASES,
    TINY_FRAMES,
    conv_model,
    convt_bn_relu_model,
    matmul_model,
    normalization_model,
    tiny_build_options,
    tir_loops,
    unrolled_extents,
)

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
GPU_PRESENT = tvm.cuda(0).exist
# convt3 of SAO on 64 latent frames: a 2048 x 4096 GEMM, 512 blocks of the large GPU tile.
LARGE_TILE_FRAMES = 64


def _device_arch() -> str:
    return "sm_" + tvm.cuda(0).compute_version.replace(".", "")


@pytest.fixture(scope="module")
def cuda_build(tmp_path_factory, empty_schedules):
    target = {"kind": "cuda", "arch": _device_arch() if GPU_PRESENT else "sm_90"}
    out = tmp_path_factory.mktemp("cuda-artifacts")
    return build(tiny_build_options(out, empty_schedules, "convt5", target=target, emulate_on_host=True))


@needs_nvcc
def test_cuda_library_holds_compiled_device_code(cuda_build):
    code = cuda_build.manifest.device_code
    assert code is not None and code.kind == "cuda" and code.format in ("fatbin", "ptx")
    assert cuda_build.manifest.target.config["host"] == {"kind": "llvm"}
    assert "convt_gemm" in cuda_build.manifest.tuning.kernels  # the zero-waste lowering, as on CPU
    # Checked again from the file, independently of what the build recorded.
    data = (cuda_build.artifact / cuda_build.manifest.library).read_bytes()
    assert devices.FATBIN_MAGIC in data or devices.PTX_TARGET in data
    assert devices.CUDA_SOURCE_MARKER not in data


@needs_nvcc
def test_cuda_build_records_its_kernels_run_on_the_host(cuda_build):
    recorded = read_manifest(cuda_build.artifact).host_emulation
    assert recorded == cuda_build.manifest.host_emulation and recorded.passed
    assert recorded.reference.startswith("onnxruntime") and recorded.outputs[0].max_rel_error < 1e-5
    assert not cuda_build.failed


@needs_nvcc
@pytest.mark.skipif(GPU_PRESENT, reason="checks the refusal on a machine without a CUDA device")
def test_without_a_gpu_the_build_is_pending_and_loading_says_why(cuda_build):
    assert cuda_build.pending and cuda_build.latency is None and cuda_build.manifest.verification is None
    assert cuda_build.artifact.name == "cuda-sm_90"
    with pytest.raises(DeviceError, match="no CUDA device"):
        load(cuda_build.artifact)


@pytest.mark.skipif(GPU_PRESENT, reason="checks the refusal on a machine without a CUDA device")
def test_without_a_gpu_tuning_for_it_is_refused_at_once(empty_schedules):
    options = TuneOptions(GraphSelection(graph="convt5", config="tiny", latent_frames=2), target="cuda",
                          schedules=empty_schedules)
    with pytest.raises(TuningError, match="no CUDA device.*machine with the GPU"):
        tune(options)


def test_a_library_with_only_cuda_source_is_refused(tmp_path):
    library = tmp_path / "model.so"
    library.write_bytes(b"\x7fELF...extern \"C\" __global__ void convt_gemm_kernel(float* x) {}")
    with pytest.raises(BuildError, match="kernel source instead of compiled device code"):
        devices.inspect_device_code(library, resolve_target("cuda").config)


def test_stand_in_driver_exports_what_tvm_imports():
    if cuda_driver.driver_library != "stand-in":
        pytest.skip(f"the stand-in is only used without the NVIDIA driver (here: {cuda_driver.driver_library})")
    runtime = cuda_driver._tvm_cuda_runtime()
    symbols = cuda_driver._driver_symbols(runtime)
    assert "cuModuleLoadData" in symbols and "cuLaunchKernelEx" in symbols
    assert cuda_driver.stand_in_path(runtime).is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_PRESENT, reason="needs a CUDA GPU")
def test_on_a_gpu_the_build_is_verified_against_onnxruntime(cuda_build):
    assert cuda_build.passed, cuda_build.manifest.verification
    assert verify_artifact(cuda_build.artifact).passed
    load(cuda_build.artifact)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_PRESENT, reason="needs a CUDA GPU")
def test_on_a_gpu_an_artifact_for_another_major_arch_is_refused(tmp_path, empty_schedules):
    major = int(tvm.cuda(0).compute_version.split(".")[0])
    other = "sm_80" if major != 8 else "sm_90"
    result = build(tiny_build_options(tmp_path, empty_schedules, "convt5", target={"kind": "cuda", "arch": other}))
    assert result.pending
    with pytest.raises(DeviceError, match="compute capability"):
        load(result.artifact)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_PRESENT, reason="needs a CUDA GPU")
def test_on_a_gpu_bench_compares_with_pytorch_cudnn(tmp_path, empty_schedules):
    pytest.importorskip("torch", reason="the PyTorch baseline needs torch")
    from pipeline.bench import BenchOptions, bench

    report = bench(BenchOptions(
        graphs=["convt5"], config="tiny", latent_frames=2, target={"kind": "cuda", "arch": _device_arch()},
        schedules=empty_schedules, artifacts=tmp_path / "artifacts", out=tmp_path / "bench", repeats=2,
    ))
    (row,) = report.rows
    assert report.baseline.startswith("PyTorch") and "TF32 off" in report.baseline
    assert report.machine["gpu"] and row.baseline_max_rel_error < 1e-4 and row.tvm.median_ms > 0


def _gpu_scheduled_kernels(graph: str, config: str = "tiny", latent_frames: int = TINY_FRAMES) -> dict:
    target = resolve_target("cuda")
    source = GraphSelection(graph=graph, config=config, latent_frames=latent_frames).resolve()
    lowered = lower(import_onnx(source.model).mod, target)
    with target.tvm_target():
        scheduled = DefaultGPUSchedule()(lowered.main)
    return {gv.name_hint: f for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def _thread_extents(func) -> dict[str, int]:
    return _bound_threads(func.body)


def _bound_threads(stmt) -> dict[str, int]:
    extents = {}

    def visit(loop):
        if loop.thread_binding is not None:
            extents[loop.thread_binding.thread_tag] = int(loop.extent)

    tvm_ffi.structural_walk(stmt, [(tvm.tirx.For, visit)], order="post")
    return extents


def _loop_nests_outside_gpu_threads(func) -> int:
    """How many of a GPU kernel's top-level loop nests bind no thread: TVM compiles them into the
    host function, where they read device memory."""
    body = func.body.block.body
    nests = body.seq if isinstance(body, tvm.tirx.SeqStmt) else [body]
    return sum(1 for nest in nests if not _bound_threads(nest))


def test_gpu_schedule_tiles_every_gemm_in_shared_memory_and_gives_col2im_a_thread_per_output():
    kernels = _gpu_scheduled_kernels("block1")
    gemms = [name for name in kernels if "gemm" in name]
    assert any("convt_gemm" in name for name in gemms) and any("conv_gemm" in name for name in gemms)
    for name in gemms:  # dlight's Matmul rule; its serial fallback has no shared memory
        assert 'scope="shared"' in kernels[name].script(), name
    (col2im,) = [f for name, f in kernels.items() if "col2im" in name]
    outputs = 1
    for extent in col2im.params[-1].shape:  # the kernel's output buffer
        outputs *= int(extent)
    threads = _thread_extents(col2im)
    assert threads.keys() == {"blockIdx.x", "threadIdx.x"} and threads["threadIdx.x"] == THREADS_PER_BLOCK
    assert threads["blockIdx.x"] == -(-outputs // THREADS_PER_BLOCK)
    assert 'scope="shared"' not in col2im.script()


def test_gpu_gemm_tile_grows_only_where_the_grid_still_fills_the_gpu():
    target = resolve_target("cuda").tvm_target()
    large_rows = LARGE_TILE.block_size_x * LARGE_TILE.micro_size_x
    large_columns = LARGE_TILE.block_size_y * LARGE_TILE.micro_size_y
    assert gemm_config((1, 2048, 8192), target) == LARGE_TILE  # convt3 at T = 128: 16 x 64 blocks
    # convt1 at T = 128: 16384 rows x 128 positions would be 128 large blocks, too few for 132 SMs.
    assert gemm_config((1, 16384, 128), target) != LARGE_TILE
    assert gemm_config((MIN_BLOCKS, large_rows, large_columns), target) == LARGE_TILE
    assert gemm_config((MIN_BLOCKS - 1, large_rows, large_columns), target) != LARGE_TILE


@needs_nvcc
def test_cuda_build_with_the_large_gemm_tile_holds_device_code(tmp_path, empty_schedules):
    options = BuildOptions(
        selection=GraphSelection(graph="convt3", config="sao", latent_frames=LARGE_TILE_FRAMES),
        target="cuda", out=tmp_path, schedules=empty_schedules,
    )
    options.emulate_on_host = True
    result = build(options)  # on a GPU, also verified against onnxruntime
    assert result.manifest.device_code.format in ("fatbin", "ptx")
    assert result.passed if GPU_PRESENT else result.pending
    assert result.manifest.host_emulation.passed, result.manifest.host_emulation


def _assert_cuda_build_computes_what_onnxruntime_does(model, schedules) -> None:
    """nvcc accepts every kernel, and the kernels as scheduled for the GPU, run on this
    CPU, agree with onnxruntime."""
    target = resolve_target("cuda")
    imported = import_onnx(model)
    compiled = compile_module(imported.mod, target, ScheduleStore(target, schedules))
    assert "cuda" in devices.module_kinds(compiled.executable.mod)
    outside = {
        gv.name_hint: _loop_nests_outside_gpu_threads(func)
        for gv, func in compiled.scheduled.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc)
    }
    assert not any(outside.values()), outside
    weights = compiled.prepare_weights(imported.params)
    check = check_on_host(compiled, weights, imported, model, DEFAULT_INPUT_SEED, Tolerance())
    assert check.passed, check


@needs_nvcc
@pytest.mark.parametrize("case", [c for c in load_cases() if c.expect == "✓"], ids=lambda c: c.name)
def test_every_conformance_case_builds_for_cuda_and_its_gpu_schedules_are_right(case, empty_schedules):
    """Every ConvTranspose variant (1-3-D, groups, dilations, pads) gets a GPU schedule nvcc accepts
    and that computes the right outputs."""
    _assert_cuda_build_computes_what_onnxruntime_does(case_model(case), empty_schedules)


@needs_nvcc
@pytest.mark.parametrize("graph", ["convt1", "block1", "decoder"])
def test_oobleck_graphs_build_for_cuda_and_their_gpu_schedules_are_right(graph, empty_schedules):
    _assert_cuda_build_computes_what_onnxruntime_does(
        GraphSelection(graph=graph, config="tiny", latent_frames=TINY_FRAMES).resolve().model, empty_schedules
    )


# A Conv1d to one channel (HiFi-GAN's last), which dlight's matmul rule does not take: its GEMV
# rule staged the whole padded input (here 64 KiB) in a block's shared memory (48 KiB).
ONE_ROW_CONV_CASES = {"1d_to_one_channel": ((1, 16, 1024), 1, (7,), {"pads": [3, 3]})}
# Every Conv case of the CPU tests, named by kind: Conv2d, grouped, depthwise; and the one above.
CONV_CASES = {
    f"{kind}-{name}": case
    for kind, cases in (
        ("conv2d", CONV2D_CASES),
        ("grouped", GROUPED_CONV_CASES),
        ("depthwise", DEPTHWISE_CONV_CASES),
        ("one_row", ONE_ROW_CONV_CASES),
    )
    for name, case in cases.items()
}


@needs_nvcc
@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_convolutions_build_for_cuda_and_their_gpu_schedules_are_right(name, empty_schedules):
    """Conv2d's GEMM (its padded-row input kernel, the GEMM through dlight's matmul rule, the crop);
    the depthwise stencil, and the GEMMs dlight's matmul rule does not take (grouped, one row): a
    thread per output."""
    x_shape, cout, kernel, attrs = CONV_CASES[name]
    _assert_cuda_build_computes_what_onnxruntime_does(conv_model(x_shape, cout, kernel, attrs)[0], empty_schedules)


@needs_nvcc
@pytest.mark.parametrize("name", sorted(MATMUL_CASES))
def test_matmuls_build_for_cuda_and_their_gpu_schedules_are_right(name, empty_schedules):
    """One matrix pair through dlight's matmul rule; a batch of them, whose packed operand is
    indexed by the batch, and the broadcast ones."""
    _assert_cuda_build_computes_what_onnxruntime_does(matmul_model(*MATMUL_CASES[name])[0], empty_schedules)


@needs_nvcc
@pytest.mark.parametrize("name", sorted(NORMALIZATION_CASES))
def test_normalizations_build_for_cuda_and_their_gpu_schedules_are_right(name, empty_schedules):
    _assert_cuda_build_computes_what_onnxruntime_does(normalization_model(name)[0], empty_schedules)


@needs_nvcc
def test_a_gpu_col2im_runs_its_whole_fused_chain_on_gpu_threads(empty_schedules):
    """A BatchNorm's divide, multiply, add and the Relu after the gather were left as loop nests
    outside every thread, which TVM compiled into the host function."""
    _assert_cuda_build_computes_what_onnxruntime_does(convt_bn_relu_model(), empty_schedules)


def test_a_gpu_col2im_of_one_tap_unrolls_no_output_loop():
    target = resolve_target("cuda")
    lowered = lower(import_onnx(case_model(KERNEL_EQUALS_STRIDE)).mod, target)
    with target.tvm_target():
        scheduled = DefaultGPUSchedule()(lowered.main)
    assert unrolled_extents(scheduled, "col2im") == []


def _one_block_short(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """The kernel with its grid one block short along blockIdx.x: the bug a wrong bound makes."""

    def shorten(loop):
        if loop.thread_binding is None or loop.thread_binding.thread_tag != "blockIdx.x":
            return loop
        return tvm.tirx.For(loop.loop_var, loop.min, loop.extent - 1, loop.kind, loop.body, loop.thread_binding,
                            loop.annotations, loop.step, loop.span)

    return tvm_ffi.structural_map(func, [(tvm.tirx.For, shorten)])


@needs_nvcc
def test_a_wrong_gpu_schedule_fails_the_build_on_a_machine_without_the_gpu(tmp_path, empty_schedules, monkeypatch):
    real_schedule = build_module.DefaultGPUSchedule

    def schedule_with_a_short_col2im_grid():
        def apply(mod):
            mod = real_schedule()(mod)
            for gv, func in list(mod.functions.items()):
                if "col2im" in gv.name_hint:
                    mod[gv] = _one_block_short(func)
            return mod
        return apply

    monkeypatch.setattr(build_module, "DefaultGPUSchedule", schedule_with_a_short_col2im_grid)
    options = tiny_build_options(tmp_path, empty_schedules, "convt5", target="cuda", emulate_on_host=True)
    with pytest.raises(VerificationError, match=r"GPU kernels run on this CPU \(a GPU schedule is wrong\)"):
        build(options)
    kept = tmp_path / "convt5" / "cuda-sm_90.failed"
    assert not read_manifest(kept).host_emulation.passed and not (tmp_path / "convt5" / "cuda-sm_90").exists()
    with pytest.raises(UnverifiedArtifactError, match="a GPU schedule is wrong"):
        load(kept)


@needs_nvcc
def test_a_kernel_nvcc_refuses_fails_the_build_with_nvccs_reason(empty_schedules, monkeypatch):
    """dlight's GEMV schedule of a Conv1d to one channel, as before our own took it: nvcc's output
    ends in ptxas statistics, which the error had quoted instead of the error above them."""
    monkeypatch.setattr(default_gpu_schedule, "_schedule_per_output", lambda *args, **kwargs: None)
    model = conv_model(*ONE_ROW_CONV_CASES["1d_to_one_channel"])[0]
    target = resolve_target("cuda")
    with pytest.raises(BuildError, match="ptxas error.*uses too much shared data"):
        compile_module(import_onnx(model).mod, target, ScheduleStore(target, empty_schedules))


def test_emulating_a_cpu_build_on_the_host_is_refused(tmp_path, empty_schedules):
    with pytest.raises(TargetError, match="for GPU targets.*drop --emulate-on-host"):
        build(tiny_build_options(tmp_path, empty_schedules, "convt5", emulate_on_host=True))


def test_host_kernels_keep_every_loop_bind_none_to_the_gpu_and_run_the_widest_block_loop_in_parallel():
    for name, func in _gpu_scheduled_kernels("block1").items():
        host = host_emulation.host_kernel(func)
        blocks = [extent for tag, extent in _thread_extents(func).items() if tag.startswith("blockIdx")]
        assert blocks, name
        assert not _thread_extents(host), name
        assert [int(loop.extent) for loop in tir_loops(host)] == [int(loop.extent) for loop in tir_loops(func)], name
        (parallel,) = [loop for loop in tir_loops(host) if loop.kind == tvm.tirx.ForKind.PARALLEL]
        assert int(parallel.extent) == max(blocks), name


