import pytest

from pipeline import cpu_peak
from pipeline.cpu_peak import widest_core_type
from pipeline.target import cpuinfo_flags

AVX512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"}


def test_forces_the_widest_kernels_the_flags_allow_and_none_they_do_not():
    assert widest_core_type(AVX512 | {"avx2", "fma", "sse4_2"}) == "SkylakeX"
    # AVX-512F alone (Knights Landing) lacks what OpenBLAS's SkylakeX kernels use.
    assert widest_core_type({"avx512f", "avx2", "fma"}) == "Haswell"
    assert widest_core_type({"sse4_2", "avx"}) is None
    assert widest_core_type(None) is None


@pytest.mark.parametrize("forced_gflops, named", [(1e6, True), (0.0, False)])
def test_peak_is_the_better_of_numpys_choice_and_the_forced_kernels(monkeypatch, forced_gflops, named):
    monkeypatch.setattr(cpu_peak, "_with_core_type", lambda core_type, size, repeats: forced_gflops)
    peak = cpu_peak.measure_peak(AVX512 | {"avx2", "fma"}, size=256, repeats=3)
    assert peak.what.startswith("numpy fp32 matmul 256^3")
    assert ("OpenBLAS SkylakeX kernels" in peak.what) == named
    assert (peak.gflops == forced_gflops) == named and peak.gflops > 0


@pytest.mark.skipif(widest_core_type(cpuinfo_flags()) is None, reason="this CPU runs no OpenBLAS kernels we force")
def test_forced_kernels_run_in_a_fresh_process():
    assert cpu_peak._with_core_type(widest_core_type(cpuinfo_flags()), 256, 2) > 0
