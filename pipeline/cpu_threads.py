"""How many threads TVM's CPU kernels run on.

TVM sizes its thread pool once, when the first parallel kernel runs, from TVM_NUM_THREADS (or
OMP_NUM_THREADS), else from half the logical CPUs on x86, assuming two hyper-threads per core. On
a machine without SMT (this project's 2-vCPU VM) that is half the cores: our GEMMs ran on one
thread while onnxruntime used two (convt1's GEMM: 154 GFLOP/s on one thread, 293 on two). So
before TVM starts its pool we size it from the physical cores this process may run on, unless
the user has chosen a count.

The pool belongs to the thread that ran the first kernel. A process forked after that (Python's
multiprocessing with "fork", a pre-forking server) inherits the pool without its worker threads,
and its next kernel waits for them forever: a forked child calling a model its parent had run hung
(measured). A thread started in the child gets a pool of its own, so there `on_kernel_thread`
runs kernels on one such thread; every call of ours into a TVM VM goes through it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

# TVM reads the first of these that is set.
THREAD_COUNT_VARIABLES = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")


def allowed_cpus() -> set[int]:
    """The logical CPUs this process may run on (CPU affinity: containers, taskset)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


@functools.cache
def physical_cores() -> int:
    """Physical cores among the allowed CPUs: hyper-threads of one core count once. Read once per
    process: every target resolution asks, and sysfs holds two files per CPU."""
    cpus = allowed_cpus()
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:  # no sysfs topology (not Linux, or a restricted container)
            return len(cpus)
    return len(cores)


def configure_tvm_threads() -> None:
    """Ask TVM for one thread per physical core, unless TVM_NUM_THREADS/OMP_NUM_THREADS is set.
    Takes effect only if TVM has not run a parallel kernel in this process yet."""
    if not any(os.environ.get(name) for name in THREAD_COUNT_VARIABLES):
        os.environ["TVM_NUM_THREADS"] = str(physical_cores())


def tvm_threads() -> int:
    """The threads TVM's pool runs CPU kernels on (creates the pool if it does not exist yet)."""
    import tvm

    return int(tvm.runtime.num_threads())


def check_tvm_threads() -> int:
    """TVM's thread count; warns where it is below the count asked for (up to the CPUs this
    process may use), which happens when TVM started its thread pool before `pipeline` was imported."""
    threads = tvm_threads()
    requested = next((os.environ[name] for name in THREAD_COUNT_VARIABLES if os.environ.get(name)), None)
    # TVM runs no more threads than the CPUs it may use (TVM_NUM_THREADS=4 on 2 CPUs gave 2).
    if requested is not None and requested.isdigit() and threads < min(int(requested), len(allowed_cpus())):
        log.warning(
            "TVM runs CPU kernels on %d thread(s), not the %s asked for: TVM started its thread pool "
            "before `pipeline` was imported. Import pipeline before running any TVM kernel, or set "
            "TVM_NUM_THREADS=%s in the environment before starting Python", threads, requested, requested,
        )
    return threads


Result = TypeVar("Result")

# Set in a forked child: (whether this process was forked, its kernel thread, the lock creating it).
_forked = False
_kernel_thread: ThreadPoolExecutor | None = None
_kernel_thread_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _forked, _kernel_thread, _kernel_thread_lock
    _forked, _kernel_thread, _kernel_thread_lock = True, None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def on_kernel_thread(call: Callable[[], Result]) -> Result:
    """`call()`, which runs TVM CPU kernels: here, or in a forked process on a thread started
    after the fork, whose TVM thread pool works (see the module docstring)."""
    global _kernel_thread
    if not _forked:
        return call()
    with _kernel_thread_lock:
        if _kernel_thread is None:
            _kernel_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tvm-kernels")
    return _kernel_thread.submit(call).result()
