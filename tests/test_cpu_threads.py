"""TVM runs our CPU kernels on one thread per physical core unless the user chose a count."""

import logging
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


def test_a_count_beyond_the_cpus_is_not_reported_as_missed(monkeypatch, caplog):
    """TVM runs at most one thread per CPU it may use; asking for more is no sign that its pool
    started too early. Asking for as many as there are CPUs and getting fewer is."""
    threads = cpu_threads.tvm_threads()
    monkeypatch.setenv("TVM_NUM_THREADS", str(threads + 2))
    monkeypatch.setattr(cpu_threads, "allowed_cpus", lambda: set(range(threads)))
    with caplog.at_level(logging.WARNING, logger="pipeline.cpu_threads"):
        assert cpu_threads.check_tvm_threads() == threads
    assert "asked for" not in caplog.text
    monkeypatch.setattr(cpu_threads, "allowed_cpus", lambda: set(range(threads + 2)))
    with caplog.at_level(logging.WARNING, logger="pipeline.cpu_threads"):
        cpu_threads.check_tvm_threads()
    assert "asked for" in caplog.text
