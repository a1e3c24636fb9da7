"""TVM runs our CPU kernels on one thread per physical core unless the user chose a count."""

import os

from pipeline import cpu_threads


def test_physical_cores_are_within_the_allowed_cpus():
    assert 1 <= cpu_threads.physical_cores() <= len(cpu_threads.allowed_cpus())


def test_a_count_the_user_chose_is_kept(monkeypatch):
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cpu_threads.configure_tvm_threads()
    assert "TVM_NUM_THREADS" not in os.environ


def test_without_a_choice_tvm_gets_the_physical_cores(monkeypatch):
    for name in cpu_threads.THREAD_COUNT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cpu_threads.configure_tvm_threads()
    assert os.environ["TVM_NUM_THREADS"] == str(cpu_threads.physical_cores())


def test_this_process_runs_tvm_on_the_requested_threads():
    """Importing pipeline (conftest does) before any TVM kernel runs sizes TVM's pool."""
    requested = next(os.environ[n] for n in cpu_threads.THREAD_COUNT_VARIABLES if os.environ.get(n))
    assert cpu_threads.check_tvm_threads() == int(requested)
