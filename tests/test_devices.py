"""A CPU build for instructions this machine lacks is built, never run: running it would kill the
process with SIGILL. The build is pending, and loading, verifying or benching it says why. The
host target itself leaves out what a hypervisor hides of its CPU model."""

import platform
import shutil

import pytest
from tvm.target import codegen

import pipeline.build
from pipeline import target
from pipeline.bench import BenchOptions, bench
from pipeline.build import build
from pipeline.devices import missing_device
from pipeline.errors import BuildError, DeviceError
from pipeline.passes.default_cpu_schedule import VectorUnit
from pipeline.runtime import load
from pipeline.target import hidden_features, resolve_target
from pipeline.verify import verify_artifact

from .conftest import tiny_build_options

x86_only = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 targets")
ELF_MACHINE_AARCH64 = 183
# No CPU has both: XOP ended with AMD's Excavator, before AVX-512 came to AMD (Zen 4).
IMPOSSIBLE_CPU = {"kind": "llvm", "mcpu": "x86-64", "mattr": ["+xop", "+avx512f"], "num-cores": 2}


def test_this_machine_runs_its_own_cpu_target():
    assert missing_device(resolve_target("cpu").config) is None


@x86_only
def test_a_lower_instruction_set_level_runs_here():
    assert missing_device({"kind": "llvm", "mcpu": "x86-64"}) is None


@x86_only
def test_another_cpu_architecture_is_refused():
    assert "aarch64" in missing_device({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})


AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-v1", "num-cores": 4}
AARCH64_CXX = "aarch64-linux-gnu-g++"


@x86_only
def test_a_build_for_another_architecture_needs_its_cross_compiler_and_says_so_first(
    tmp_path, empty_schedules, monkeypatch
):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pipeline.build, "compile_module", lambda *args: pytest.fail("compiled without a linker"))
    with pytest.raises(BuildError, match=f"cross compiler for aarch64-linux-gnu.*{AARCH64_CXX}.*apt install"):
        build(tiny_build_options(tmp_path, empty_schedules, "convt5", target=AARCH64))
    assert not (tmp_path / "convt5").exists()


@x86_only
@pytest.mark.skipif(shutil.which(AARCH64_CXX) is None, reason=f"needs {AARCH64_CXX} (apt install g++-aarch64-linux-gnu)")
def test_a_build_for_another_architecture_links_an_aarch64_library_and_is_pending(tmp_path, empty_schedules):
    result = build(tiny_build_options(tmp_path, empty_schedules, "convt5", target=AARCH64))
    assert result.pending and result.manifest.verification is None
    library = next(result.artifact.glob("model-*.so")).read_bytes()
    assert library[:4] == b"\x7fELF" and int.from_bytes(library[18:20], "little") == ELF_MACHINE_AARCH64
    with pytest.raises(DeviceError, match="aarch64"):
        load(result.artifact)


@x86_only
def test_a_build_for_instructions_this_cpu_lacks_is_pending_and_refused(tmp_path, empty_schedules):
    result = build(tiny_build_options(tmp_path, empty_schedules, "convt5", target=IMPOSSIBLE_CPU))
    assert result.pending and result.latency is None and result.manifest.verification is None
    host_cpu = codegen.llvm_get_system_cpu()
    with pytest.raises(DeviceError, match=f"lacks.*{host_cpu}|{host_cpu}.*lacks"):
        load(result.artifact)
    with pytest.raises(DeviceError, match="--target cpu"):
        verify_artifact(result.artifact)


@x86_only
def test_bench_for_instructions_this_cpu_lacks_says_so_before_building(tmp_path):
    with pytest.raises(DeviceError, match="machine with that CPU"):
        bench(BenchOptions(graphs=["convt4"], config="tiny", target=IMPOSSIBLE_CPU, out=tmp_path, artifacts=tmp_path))
    assert not any(tmp_path.iterdir())


AVX2_FLAGS = {"sse2", "avx", "avx2", "fma"}


def test_instruction_sets_a_hypervisor_hides_are_taken_off_the_model():
    assert hidden_features("rocketlake", AVX2_FLAGS) == ["-avx512f"]
    assert hidden_features("rocketlake", AVX2_FLAGS | {"avx512f"}) == []
    assert hidden_features("znver3", AVX2_FLAGS) == []
    assert hidden_features("rocketlake", None) == []  # no /proc/cpuinfo: trust the model


@x86_only
def test_the_host_target_of_a_masked_cpu_gets_the_avx2_micro_kernel(monkeypatch):
    monkeypatch.setattr(target.codegen, "llvm_get_system_cpu", lambda: "rocketlake")
    monkeypatch.setattr(target, "cpuinfo_flags", lambda: AVX2_FLAGS)
    host = target.host_cpu_target(num_cores=2)
    assert host.config["mattr"] == ["-avx512f"] and host.key == "llvm-rocketlake-avx512f-2c"
    assert VectorUnit.of(host.tvm_target()).lanes == 8
    assert "avx512f" in missing_device({"kind": "llvm", "mcpu": "rocketlake"})


def test_target_features_are_part_of_the_key():
    plain = resolve_target({"kind": "llvm", "mcpu": "x86-64", "num-cores": 2})
    with_avx2 = resolve_target({"kind": "llvm", "mcpu": "x86-64", "mattr": ["+avx2"], "num-cores": 2})
    assert (plain.key, with_avx2.key) == ("llvm-x86-64-2c", "llvm-x86-64+avx2-2c")


def test_cpuinfo_gives_the_flags_and_the_model_name(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B45\nflags\t\t: sse2 avx avx2 fma\n\nprocessor\t: 1\n")
    monkeypatch.setattr(target, "CPUINFO", cpuinfo)
    assert target.cpu_model_name() == "AMD EPYC 9B45" and target.cpuinfo_flags() == AVX2_FLAGS
    monkeypatch.setattr(target, "CPUINFO", tmp_path / "missing")
    assert target.cpu_model_name() is None and target.cpuinfo_flags() is None
