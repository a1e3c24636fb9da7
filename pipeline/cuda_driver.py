"""Make CUDA builds real on machines without the NVIDIA driver.

TVM's CUDA runtime library links `libcuda.so.1`. Where the driver is absent that library cannot
load, and TVM then *silently* builds CUDA targets into a module holding kernel source only, which
runs nowhere. Loading a stand-in `libcuda.so.1` first lets TVM's CUDA runtime load, so nvcc
compiles the kernels into a fatbin. The stand-in defines the driver functions TVM's library
imports, each returning CUDA_ERROR_NO_DEVICE: nothing can run on it, and `tvm.cuda().exist`
stays false. It is compiled here with gcc (never shipped as a binary) into the user's cache.

This must run before TVM is imported, so it imports nothing of TVM; `pipeline/__init__.py` calls
`load_driver_library` first thing. Where the real driver is installed, it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

DRIVER_SONAME = "libcuda.so.1"
CUDA_ERROR_NO_DEVICE = 100

# "driver": the real one; "stand-in": ours; None: neither (no CUDA runtime in TVM, or no gcc/nm).
driver_library: str | None = None


def _tvm_cuda_runtime() -> Path | None:
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libtvm_runtime_cuda.so"
    return path if path.is_file() else None


def _driver_symbols(runtime: Path) -> list[str]:
    """The driver API functions (cu*, unversioned) that TVM's CUDA runtime imports."""
    listing = subprocess.run(
        ["nm", "-D", "--undefined-only", str(runtime)], check=True, capture_output=True, text=True
    ).stdout
    names = (line.split()[-1] for line in listing.splitlines() if line.strip())
    return sorted(n for n in names if n.startswith("cu") and not n.startswith("cuda") and "@" not in n)


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "oobleck-tvm-pipeline" / "cuda-stand-in"


def stand_in_path(runtime: Path) -> Path:
    """Where the stand-in for this TVM runtime library lives (keyed by its size and mtime)."""
    stat = runtime.stat()
    return _cache_dir() / f"{stat.st_size}-{int(stat.st_mtime)}" / DRIVER_SONAME


def build_stand_in(runtime: Path) -> Path:
    """Compile the stand-in driver library for `runtime` (cached); returns its path."""
    target = stand_in_path(runtime)
    if target.is_file():
        return target
    source = "".join(f"int {name}(void) {{ return {CUDA_ERROR_NO_DEVICE}; }}\n" for name in _driver_symbols(runtime))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        c_file = Path(scratch) / "libcuda_stand_in.c"
        c_file.write_text(source)
        built = Path(scratch) / DRIVER_SONAME
        subprocess.run(
            ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{DRIVER_SONAME}", "-o", str(built), str(c_file)],
            check=True, capture_output=True,
        )
        built.replace(target)  # atomic: a concurrent process sees the old file or the whole new one
    return target


def load_driver_library() -> str | None:
    """Load the real driver if there is one, else the stand-in; sets and returns `driver_library`."""
    global driver_library
    if ctypes.util.find_library("cuda"):
        driver_library = "driver"
        return driver_library
    runtime = _tvm_cuda_runtime()
    if runtime is None or not (shutil.which("gcc") and shutil.which("nm")):
        return None
    try:
        # Loaded globally under the driver's soname, it satisfies TVM's dependency on libcuda.so.1.
        ctypes.CDLL(str(build_stand_in(runtime)), mode=ctypes.RTLD_GLOBAL)
    except (OSError, subprocess.CalledProcessError):
        return None
    driver_library = "stand-in"
    return driver_library
