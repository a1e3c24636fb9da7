import platform
import re

import numpy as np
import pytest
import tvm

from pipeline.fma_peak import DECAY, compile_fma_loop, fma_peak_gflops
from pipeline.target import resolve_target


@pytest.fixture(scope="module")
def host_loop():
    return compile_fma_loop(resolve_target("cpu"))


def test_the_loop_computes_every_chain_on_every_thread(host_loop):
    executable, shape = host_loop
    out = tvm.runtime.tensor(np.full(shape, -1.0, dtype="float32"))
    iterations = 1000
    executable["fma_loop"](out, iterations)
    _, chains, _ = shape
    start = np.arange(chains) / chains
    # acc <- acc * DECAY + (1 - DECAY) tends to 1: after n steps 1 + (start - 1) * DECAY^n.
    expected = 1 + (start - 1) * DECAY**iterations
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(expected[None, :, None], shape), rtol=1e-5)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="reads x86 assembly")
def test_the_loop_is_fused_multiply_adds_only(host_loop):
    executable, _ = host_loop
    assembly = executable.mod.inspect_source("asm")
    # A multiply and an add per step would halve the rate measured.
    assert re.search(r"vfmadd\w*ps", assembly)
    assert not re.search(r"\bv(mul|add)ps\b", assembly)


def test_fma_peak_is_measured(host_loop):
    assert fma_peak_gflops(host_loop, repeats=2) > 0
