import math

import pytest

from pipeline.build import build
from pipeline.graphs import GraphSelection
from pipeline.tuning import ScheduleStore, TuneOptions, tune
from pipeline.target import resolve_target
from pipeline.errors import TuningError

from .conftest import TINY_FRAMES, tiny_build_options


def test_two_trial_tune_writes_records_that_the_next_build_applies(tmp_path):
    schedules = tmp_path / "schedules"
    selection = GraphSelection(graph="convt5", config="tiny", latent_frames=TINY_FRAMES)
    first = tune(TuneOptions(selection=selection, trials_per_task=2, schedules=schedules))
    store = ScheduleStore(resolve_target("cpu"), schedules)
    assert store.exists() and first.records_added > 0 and first.records_total == first.records_added
    assert all(task.trials >= 1 for task in first.tasks)

    result = build(tiny_build_options(tmp_path / "art", schedules, "convt5"))
    assert result.passed
    measured = sorted(task.name for task in first.tasks if math.isfinite(task.best_ms))
    assert "convt_gemm" in measured
    assert result.manifest.tuning.tuned == measured
    assert result.manifest.tuning.records_sha256 == store.sha256()

    second = tune(TuneOptions(selection=selection, trials_per_task=1, schedules=schedules))
    assert second.records_total == first.records_total + second.records_added


def test_corrupt_records_are_a_clear_error(tmp_path):
    store = ScheduleStore(resolve_target("cpu"), tmp_path)
    store.dir.mkdir(parents=True)
    for path in store.files:
        path.write_text("{not json\n")
    with pytest.raises(TuningError, match="cannot be read"):
        store.open()
