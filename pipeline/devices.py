"""Whether this machine can run a build for a target, and the device code a GPU build holds.

A CUDA build must hold code the driver loads (a fatbin, or PTX it can JIT), never only kernel
source: TVM falls back to source silently when its CUDA runtime cannot load (see cuda_driver).
A CPU build for another CPU (built here for a server with AVX-512, say) must not run here: its
first vector instruction would kill the process with SIGILL, nothing said.
"""

from __future__ import annotations

import os
from pathlib import Path

import tvm
from tvm.target import codegen

from . import cuda_driver
from .artifact import DeviceCode
from .errors import BuildError, DeviceError
from .target import host_cpu_target

# The first word of every fatbin (0xBA55ED50, little-endian); PTX names its architecture like this.
FATBIN_MAGIC = b"\x50\xed\x55\xba"
PTX_TARGET = b".target sm_"
CUDA_SOURCE_MARKER = b"__global__"

# LLVM lists tuning hints (fast-*, slow-*, prefer-256-bit) among a CPU's features; these prefixes
# name the instruction sets a kernel may use.
ISA_FEATURE_PREFIXES = (
    "sse", "ssse3", "avx", "fma", "f16c", "bmi", "amx", "gfni", "vaes", "vpclmulqdq", "popcnt", "lzcnt",
    "movbe", "adx", "sha", "aes", "pclmul", "xop", "neon", "sve", "fullfp16", "bf16", "i8mm", "dotprod",
)
PORTABLE_CPU_TARGET = '{"kind": "llvm", "mcpu": "x86-64-v3"}'


def compile_environment(kind: str) -> None:
    """Before a CUDA compile: nvcc makes a fatbin for the target's arch (NVRTC needs a driver
    library that links against the real one), and importing tvm.support.nvcc registers the
    callback TVM's codegen calls."""
    if kind == "cuda":
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
        import tvm.support.nvcc  # noqa: F401 - registers tvm_callback_cuda_compile


def module_kinds(module) -> set[str]:
    """The kinds of a runtime module and of everything it imports (a CUDA build: llvm, cuda)."""
    kinds = {module.kind}
    for imported in module.imports:
        kinds |= module_kinds(imported)
    return kinds


def inspect_device_code(library: Path, target_config: dict) -> DeviceCode:
    """What GPU code the exported `library` holds; BuildError if it has none the driver can load."""
    data = library.read_bytes()
    formats = [name for name, marker in (("fatbin", FATBIN_MAGIC), ("ptx", PTX_TARGET)) if marker in data]
    if not formats or CUDA_SOURCE_MARKER in data:
        raise BuildError(
            f"{library} holds CUDA kernel source instead of compiled device code: TVM's CUDA runtime "
            f"could not load here ({_driver_hint()}). Install gcc and binutils (nm) so the stand-in "
            f"libcuda.so.1 can be built, or build on a machine with the NVIDIA driver"
        )
    try:
        kinds = module_kinds(tvm.runtime.load_module(str(library)))
    except Exception as exc:  # TVM raises its own error types for modules it cannot load
        raise BuildError(f"{library} cannot be loaded back ({str(exc).strip().splitlines()[-1]})") from exc
    if "cuda" not in kinds:
        raise BuildError(f"{library} has no CUDA module among its imports ({sorted(kinds)}); the build is broken")
    return DeviceCode("cuda", target_config["arch"], formats[0], target_config.get("host", {}))


def _driver_hint() -> str:
    state = cuda_driver.driver_library
    if state == "driver":
        return "the NVIDIA driver is installed"
    if state == "stand-in":
        return "a stand-in libcuda.so.1 is loaded"
    return "no libcuda.so.1, real or stand-in, could be loaded"


def _compute_capability(arch: str) -> tuple[int, int]:
    digits = arch[len("sm_"):].rstrip("af")
    return int(digits[:-1]), int(digits[-1])


def _isa_features(target: tvm.target.Target) -> set[str]:
    return {f for f in codegen.llvm_get_cpu_features(target) if f.startswith(ISA_FEATURE_PREFIXES)}


def foreign_cpu_triple(config: dict) -> str | None:
    """The LLVM triple of a CPU target whose architecture is not this machine's, else None."""
    triple = str(tvm.target.Target(config).attrs.get("mtriple", "") or "")
    if triple and triple.split("-")[0] != codegen.llvm_get_system_triple().split("-")[0]:
        return triple
    return None


def _missing_cpu(config: dict) -> str | None:
    foreign = foreign_cpu_triple(config)
    if foreign is not None:
        host_arch = codegen.llvm_get_system_triple().split("-")[0]
        return f"its code is for {foreign.split('-')[0]} and this machine is {host_arch}"
    target = tvm.target.Target(config)
    host = host_cpu_target().tvm_target()
    lacking = _isa_features(target) - _isa_features(host)
    if lacking:
        return f"its code may use {', '.join(sorted(lacking))}, which this machine's CPU ({host.mcpu}) lacks"
    return None


def _missing_gpu(arch: str) -> str | None:
    device = tvm.cuda(0)
    if not device.exist:
        return f"this machine has no CUDA device ({_driver_hint()})"
    major, minor = (int(v) for v in device.compute_version.split("."))
    want_major, want_minor = _compute_capability(arch)
    # Device code for sm_XY runs on compute capability X.Z with Z >= Y, never on another major.
    if major != want_major or minor < want_minor:
        return (
            f"its device code is for {arch}, and this machine's {device.device_name} has compute "
            f"capability {major}.{minor}"
        )
    return None


def missing_device(config: dict) -> str | None:
    """Why this machine cannot run code built for the target `config` (a TargetSpec's config, as
    the manifest records it), or None if it can."""
    return _missing_cpu(config) if config["kind"] == "llvm" else _missing_gpu(config["arch"])


def runs_on(config: dict) -> str:
    """Where code for the target `config` runs, for messages that send the user there."""
    return "a machine with that CPU" if config["kind"] == "llvm" else "a machine with the GPU"


def require_device(config: dict, what: str) -> None:
    reason = missing_device(config)
    if reason is None:
        return
    if config["kind"] == "llvm":
        rebuild = (
            f"build it for this one (--target cpu), or for an instruction-set level all your machines "
            f"have (e.g. --target '{PORTABLE_CPU_TARGET}')"
        )
        raise DeviceError(f"{what} is built for CPU {config.get('mcpu', 'generic')} and cannot run here: "
                          f"{reason}. Run it on {runs_on(config)}, or {rebuild}")
    raise DeviceError(
        f"{what} is built for {config['kind']} {config['arch']} and cannot run here: {reason}. Run it on "
        f"{runs_on(config)}, or build it for this one (--target cpu, or --target cuda --arch sm_<XY>)"
    )
