"""GPU targets: the device code a built library holds, and whether this machine can run it.

A CUDA build must hold code the driver loads (a fatbin, or PTX it can JIT), never only kernel
source: TVM falls back to source silently when its CUDA runtime cannot load (see cuda_driver).
"""

from __future__ import annotations

import os
from pathlib import Path

import tvm

from . import cuda_driver
from .artifact import DeviceCode
from .errors import BuildError, DeviceError

# The first word of every fatbin (0xBA55ED50, little-endian); PTX names its architecture like this.
FATBIN_MAGIC = b"\x50\xed\x55\xba"
PTX_TARGET = b".target sm_"
CUDA_SOURCE_MARKER = b"__global__"


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


def missing_device(kind: str, arch: str | None) -> str | None:
    """Why this machine cannot run code for (kind, arch), or None if it can."""
    if kind == "llvm":
        return None
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


def require_device(kind: str, arch: str | None, what: str) -> None:
    reason = missing_device(kind, arch)
    if reason is not None:
        raise DeviceError(
            f"{what} is built for {kind} {arch} and cannot run here: {reason}. Run it on a machine with "
            f"such a GPU, or build it for this one (--target cpu, or --target cuda --arch sm_<XY>)"
        )
