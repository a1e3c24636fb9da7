"""Run a GPU build's kernels on this machine's CPU, to check their schedules where the GPU is absent.

A scheduled TIR kernel computes what its loops compute when run in order: binding a loop to a GPU
block or thread says who runs which iteration, not what is computed. With every bound loop made a
plain loop, a kernel computes on the CPU what it computes on the GPU. A cooperative copy into
shared memory (a loop bound to the same threads, nested inside the compute's thread loops) then
fills the whole tile once per thread instead of each thread's share: redundant, same values.
Shared and local buffers become stack buffers of the CPU function. The blocks of a grid are
independent (no block reads what another writes in the same launch), so the block loop with the
most iterations runs in parallel on the CPU's cores; its buffers are allocated per iteration.

So a wrong index, bound, predicate or fused epilogue in a GPU schedule (ours, dlight's, a tuning
record's) shows as a wrong output on a machine without the GPU. What this cannot show: a missing
barrier, a fault of the CUDA code generator or of nvcc, and speed.
"""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx

from .cpu_threads import on_kernel_thread
from .runtime import numpy_outputs


def _widest_block_loop(func: tirx.PrimFunc) -> tirx.Var | None:
    block_loops = []

    def visit(loop: tirx.For) -> None:
        if loop.thread_binding is not None and loop.thread_binding.thread_tag.startswith("blockIdx"):
            block_loops.append(loop)

    tvm_ffi.structural_walk(func.body, [(tirx.For, visit)])
    if not block_loops:
        return None
    return max(block_loops, key=lambda loop: int(loop.extent) if isinstance(loop.extent, tirx.IntImm) else 0).loop_var


def host_kernel(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with its widest GPU block loop parallel over the CPU's cores and every other loop
    bound to a block, virtual thread or thread a serial loop."""
    parallel = _widest_block_loop(func)

    def plain_loop(loop: tirx.For) -> tirx.For:
        if loop.kind != tirx.ForKind.THREAD_BINDING:
            return loop
        kind = tirx.ForKind.PARALLEL if loop.loop_var.same_as(parallel) else tirx.ForKind.SERIAL
        return tirx.For(
            loop.loop_var, loop.min, loop.extent, kind, loop.body, None, loop.annotations, loop.step, loop.span
        )

    return tvm_ffi.structural_map(func, [(tirx.For, plain_loop)])


def host_module(mod: tvm.IRModule) -> tvm.IRModule:
    """A scheduled GPU module whose kernels run on the host (`host_kernel`); its Relax functions unchanged."""
    host = tvm.IRModule({}, attrs=mod.attrs)
    for gv, func in mod.functions.items():
        host[gv] = host_kernel(func) if isinstance(func, tirx.PrimFunc) else func
    return host


def run(
    executable: tvm.runtime.Executable, inputs: list[np.ndarray], weights: list[np.ndarray], output_count: int
) -> list[np.ndarray]:
    """Run `main` of a host-compiled `host_module` on the graph inputs and the prepared weights."""
    host = tvm.cpu()
    vm = relax.VirtualMachine(executable, host)
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a), host) for a in [*inputs, *weights]]
    return on_kernel_thread(lambda: numpy_outputs(vm["main"](*tensors), output_count))
