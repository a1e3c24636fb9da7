"""What the CPU's vector FMA units can do: bench's "% FMA peak", the ceiling no GEMM passes.

bench's "% peak" divides by a numpy matmul, a practical peak: BLAS reaches 88-90% of the FMA units
on this repository's Zen 4 (206-211 GFLOP/s where this loop measured 234), so GEMMs that do as
well as BLAS read 100% and better ones over 100%, which says nothing about the headroom left. This
measures the units themselves: a loop compiled by TVM for the bench's target, on every thread of
TVM's pool, each thread running enough independent multiply-add chains of whole vectors to cover the
FMA latency on every FMA pipe, with nothing but registers in the loop.
"""

from __future__ import annotations

import time

import numpy as np
import tvm
from tvm.script import tirx as T

from .cpu_threads import tvm_threads
from .passes.default_cpu_schedule import VectorUnit
from .target import TargetSpec

# Registers left to the loop's counter and constants; the rest hold one multiply-add chain each.
SPARE_REGISTERS = 4
# Each timed call runs at least this long, so that starting the thread pool's threads is noise.
MIN_CALL_SECONDS = 0.1
# Each chain computes acc = acc * DECAY + (1 - DECAY): it tends to 1 and neither overflows nor
# reaches denormals, whose handling would slow the units down.
DECAY = 0.999


def fma_loop(threads: int, chains: int, lanes: int) -> tvm.tirx.PrimFunc:
    """`iterations` multiply-adds on each of `chains` vectors of `lanes` fp32, on `threads` threads;
    out[thread] holds each chain's result, so the compiler cannot drop the work."""

    @T.prim_func
    def loop(out: T.Buffer((threads, chains, lanes), "float32"), iterations: T.int32):
        T.func_attr({"global_symbol": "fma_loop", "tirx.noalias": True})
        for thread in T.parallel(threads):
            acc = T.alloc_buffer((chains, lanes), "float32", scope="local")
            for chain in T.unroll(chains):
                for lane in T.vectorized(lanes):
                    acc[chain, lane] = T.Cast("float32", chain) / T.float32(chains)
            for _ in range(iterations):
                for chain in T.unroll(chains):
                    for lane in T.vectorized(lanes):
                        acc[chain, lane] = acc[chain, lane] * T.float32(DECAY) + T.float32(1 - DECAY)
            for chain in T.unroll(chains):
                for lane in T.vectorized(lanes):
                    out[thread, chain, lane] = acc[chain, lane]

    return loop


# The loop built for a target, and the shape of its output (threads, chains, lanes).
FmaLoop = tuple[tvm.runtime.Executable, tuple[int, int, int]]


def compile_fma_loop(target: TargetSpec) -> FmaLoop:
    """The loop built for `target`, once per bench (it is timed before and after the graphs)."""
    tvm_target = target.tvm_target()
    unit = VectorUnit.of(tvm_target)
    shape = (tvm_threads(), unit.registers - SPARE_REGISTERS, unit.lanes)
    return tvm.compile(tvm.IRModule({"fma_loop": fma_loop(*shape)}), tvm_target), shape


def fma_peak_gflops(loop: FmaLoop, repeats: int = 5) -> float:
    """The best fp32 GFLOP/s of `repeats` calls of the compiled loop (each MIN_CALL_SECONDS or
    longer), counting a multiply-add as 2 FLOP. Its target must run on this CPU (bench checks that
    first)."""
    executable, shape = loop
    run = executable["fma_loop"]
    out = tvm.runtime.tensor(np.zeros(shape, dtype="float32"))
    flop_per_iteration = 2 * int(np.prod(shape))
    iterations = 1 << 16
    while True:
        start = time.perf_counter()
        run(out, iterations)
        seconds = time.perf_counter() - start
        if seconds >= MIN_CALL_SECONDS:
            break
        iterations *= 2
    best_s = seconds
    for _ in range(repeats - 1):
        start = time.perf_counter()
        run(out, iterations)
        best_s = min(best_s, time.perf_counter() - start)
    return flop_per_iteration * iterations / best_s / 1e9
