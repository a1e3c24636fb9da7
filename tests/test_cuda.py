"""CUDA builds: compile-only checks that run anywhere nvcc is, and GPU checks where a GPU is."""

import shutil

import pytest
import tvm

from pipeline import cuda_driver, devices
from pipeline.build import build
from pipeline.errors import BuildError, DeviceError, TuningError
from pipeline.graphs import GraphSelection
from pipeline.runtime import load
from pipeline.target import resolve_target
from pipeline.tuning import TuneOptions, tune
from pipeline.verify import verify_artifact

from .conftest import tiny_build_options

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
GPU_PRESENT = tvm.cuda(0).exist


def _device_arch() -> str:
    return "sm_" + tvm.cuda(0).compute_version.replace(".", "")


@pytest.fixture(scope="module")
def cuda_build(tmp_path_factory, empty_schedules):
    target = {"kind": "cuda", "arch": _device_arch() if GPU_PRESENT else "sm_90"}
    out = tmp_path_factory.mktemp("cuda-artifacts")
    return build(tiny_build_options(out, empty_schedules, "convt5", target=target))


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
