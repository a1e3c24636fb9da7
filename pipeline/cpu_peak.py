"""The CPU's practical fp32 peak for bench's "% peak": the best GFLOP/s of a large numpy matmul.

OpenBLAS (numpy's BLAS) picks its kernels from the CPU model, and gives a model newer than the
library older kernels: OpenBLAS 0.3.31 runs its AVX2 (Haswell) kernels on a Zen 5, at 217 GFLOP/s
on 2 cores where its AVX-512 (SkylakeX) kernels reach 392-415, and our GEMMs read up to 167% of
that "peak". So the matmul also runs with the widest kernels the CPU's flags allow. The choice is made
when the library loads, so each runs in a fresh process; this file runs there as a script and
imports nothing of ours (the package would import TVM).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

# OpenBLAS core types whose fp32 GEMM kernels differ, widest first, each with the flags
# (/proc/cpuinfo names) its kernels need.
OPENBLAS_CORE_TYPES = (
    ("SkylakeX", frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"})),
    ("Haswell", frozenset({"avx2", "fma"})),
)


@dataclass(frozen=True)
class Peak:
    gflops: float
    # How it was measured, for the report.
    what: str


def matmul_gflops(size: int, repeats: int) -> float:
    """Best of `repeats` fp32 size³ matmuls through numpy on all cores, after one warm-up."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b
    best_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best_s = min(best_s, time.perf_counter() - start)
    return 2 * size**3 / best_s / 1e9


def _with_core_type(core_type: str, size: int, repeats: int) -> float:
    result = subprocess.run(
        [sys.executable, __file__, str(size), str(repeats)],
        env={**os.environ, "OPENBLAS_CORETYPE": core_type},
        capture_output=True, text=True, check=True,
    )
    return float(result.stdout)


def widest_core_type(cpu_flags: set[str] | None) -> str | None:
    """The OpenBLAS core type with the widest kernels a CPU with `cpu_flags` runs; None when the
    flags are unknown, since forcing kernels the CPU lacks would kill the process (SIGILL)."""
    if cpu_flags is None:
        return None
    return next((core_type for core_type, needs in OPENBLAS_CORE_TYPES if needs <= cpu_flags), None)


def measure_peak(cpu_flags: set[str] | None, size: int = 2048, repeats: int = 5) -> Peak:
    """The better of numpy's own choice of kernels and the widest OpenBLAS kernels `cpu_flags` allow."""
    what = f"numpy fp32 matmul {size}^3 on the CPU"
    best = Peak(matmul_gflops(size, repeats), what)
    core_type = widest_core_type(cpu_flags)
    if core_type is not None:
        forced = _with_core_type(core_type, size, repeats)
        if forced > best.gflops:
            best = Peak(forced, f"{what}, OpenBLAS {core_type} kernels")
    return best


if __name__ == "__main__":
    print(matmul_gflops(int(sys.argv[1]), int(sys.argv[2])))
