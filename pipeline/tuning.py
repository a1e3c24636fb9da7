"""MetaSchedule tuning with a per-task budget, and the committed record store `schedules/<target-key>/`.

Tuning writes into a private staging database; its successful records are merged into the store
when tuning ends, also when it is interrupted, through a copy that replaces the store files only
once complete, so the store is never left half-written and never loses earlier records.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.analysis import estimate_tir_flops
from tvm.ir.utils import derived_object

from . import devices
from .artifact import AppliedSchedules
from .data_files import data_folder, inside_installed_package
from .errors import TuningError
from .graphs import GraphSelection
from .importer import import_onnx
from .lowering import DEFAULT_LOWERING, kernel_names, lower
from .passes.default_cpu_schedule import has_final_schedule
from .target import TargetSpec, resolve_target

log = logging.getLogger(__name__)
# MetaSchedule's own logger (tvm.s_tir.meta_schedule.logging); its handlers are named under it.
META_SCHEDULE_LOGGER = "tvm.s_tir.meta_schedule"

SCHEDULES_DIR = data_folder("schedules")
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
# MetaSchedule files failed builds and runs with this run time.
FAILED_RUN_SECS = 1e9
BUILD_TIMEOUT_SEC = 90


class ScheduleStore:
    """The tuning records of one target: `<root>/<target-key>/database_{workload,tuning_record}.json`."""

    def __init__(self, target: TargetSpec, root: Path | str = SCHEDULES_DIR) -> None:
        self.target = target
        self.dir = Path(root) / target.key

    @property
    def files(self) -> tuple[Path, Path]:
        return self.dir / WORKLOAD_FILE, self.dir / RECORD_FILE

    def exists(self) -> bool:
        return all(p.is_file() for p in self.files)

    def sha256(self) -> str | None:
        if not self.exists():
            return None
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def open(self, directory: Path | None = None) -> ms.database.JSONDatabase:
        directory = directory or self.dir
        try:
            return ms.database.JSONDatabase(work_dir=str(directory), allow_missing=True)
        except Exception as exc:  # TVM raises InternalError/ValueError on unparsable lines
            raise TuningError(
                f"the tuning records in {directory} cannot be read ({str(exc).strip().splitlines()[-1]}); "
                f"restore them from git (git checkout -- {directory}) or delete the folder to start afresh"
            ) from exc

    def kernel_count(self) -> int:
        """Kernels with a record: the store keeps one, the best, per kernel."""
        return len(self.open()) if self.exists() else 0

    def apply(self, mod: tvm.IRModule) -> tuple[tvm.IRModule, AppliedSchedules]:
        """Give each fused kernel that has a record its best tuned schedule."""
        kernels = kernel_names(mod)
        if not self.exists():
            return mod, AppliedSchedules(str(self.dir), None, kernels, [])
        database = self.open()
        with self.target.tvm_target(), database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        tuned = sorted(
            gv.name_hint
            for gv, func in mod.functions.items()
            if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None
            and bool(func.attrs.get("tirx.is_scheduled", False))
        )
        return mod, AppliedSchedules(str(self.dir), self.sha256(), kernels, tuned)

    def merge(self, staging: ms.database.Database) -> int:
        """Merge staging's successful records into the store, which keeps the best record of each
        kernel (the one `build` applies): the other measured schedules took 97% of its size, and
        the store travels to the GPU machine beside a TVM that fills most of the 64 MiB allowed.
        Returns how many records were merged."""
        records = [
            r for r in staging.get_all_tuning_records()
            if r.run_secs and max(float(s) for s in r.run_secs) < FAILED_RUN_SECS
        ]
        if not records:
            return 0
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{self.target.key}.merge-", dir=self.dir.parent))
        try:
            everything, best = scratch / "all", scratch / "best"
            everything.mkdir()
            best.mkdir()
            if self.exists():
                for path in self.files:
                    shutil.copy2(path, everything / path.name)
            database = self.open(everything)
            for record in records:
                workload = database.commit_workload(record.workload.mod)
                database.commit_tuning_record(
                    ms.database.TuningRecord(
                        record.trace, workload, record.run_secs, record.target, record.args_info
                    )
                )
            database.dump_pruned(self.open(best))
            del database
            self.dir.mkdir(parents=True, exist_ok=True)
            # Workloads first: a stop between the two renames leaves unused workloads, never
            # records that point at a missing workload.
            for path in self.files:
                (best / path.name).replace(path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return len(records)


@dataclass
class TaskProgress:
    name: str
    trials: int = 0
    best_ms: float = math.inf


@dataclass
class TuneResult:
    target_key: str
    store: Path
    tasks: list[TaskProgress]
    # Successful measurements merged into the store, and the kernels it now holds a record for.
    records_merged: int
    kernels_with_records: int
    seconds: float
    interrupted: bool = False


@derived_object
class _ProgressReporter(ms.measure_callback.PyMeasureCallback):
    """Logs task i of n, trials done and the best latency so far after every measured batch."""

    def __init__(self, progress: list[TaskProgress], trials_per_task: int) -> None:
        self.progress = progress
        self.trials_per_task = trials_per_task
        self.started = time.time()

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        if not runner_results:
            return
        task = self.progress[task_id]
        task.trials += len(runner_results)
        for result in runner_results:
            if result.error_msg is None and result.run_secs:
                secs = sum(float(s) for s in result.run_secs) / len(result.run_secs)
                task.best_ms = min(task.best_ms, secs * 1e3)
        best = f"{task.best_ms:.3f} ms" if math.isfinite(task.best_ms) else "none valid yet"
        log.info(
            "task %d/%d %s: %d/%d trials, best %s (%.0f s elapsed)",
            task_id + 1, len(self.progress), task.name, task.trials, self.trials_per_task, best,
            time.time() - self.started,
        )


# xgb: MetaSchedule's XGBoost model, trained on the measurements as they come in; random: no model.
COST_MODELS = ("xgb", "random")


@dataclass
class TuneOptions:
    selection: GraphSelection
    target: str | dict | TargetSpec = "cpu"
    trials_per_task: int = 64
    cost_model: str = "xgb"
    seed: int | None = 0
    lowering: str = DEFAULT_LOWERING
    schedules: Path = field(default=SCHEDULES_DIR)


@contextmanager
def _meta_schedule_logging():
    """MetaSchedule configures its logger with logging.config.dictConfig, naming every handler
    already on it, and fails on one it did not make itself (an unnamed one: "'NoneType' object has
    no attribute 'format'"), such as an application's or the two that pytest adds to every logger
    that does not propagate, which made a second `tune` in one test run fail. Those handlers are
    taken off while it tunes and put back after."""
    logger = logging.getLogger(META_SCHEDULE_LOGGER)
    foreign = [h for h in logger.handlers if not (h.get_name() or "").startswith(META_SCHEDULE_LOGGER + ".")]
    for handler in foreign:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in foreign:
            logger.addHandler(handler)


def _unmeasurable(kernel: tvm.IRModule) -> str | None:
    """Why MetaSchedule would fail on this kernel, or None. Its task scheduler first counts each
    kernel's FLOPs, and that counter knows no expression-level Let: the Snake's sine_squared binds
    its intermediates with Let, and `tune` of any Oobleck block or the decoder died there ("Do not
    have a default for prim.Let") before measuring anything."""
    try:
        estimate_tir_flops(kernel)
    except tvm.error.InternalError as exc:
        return f"its FLOP counter refuses the kernel: {str(exc).splitlines()[-1]}"
    return None


def tune(options: TuneOptions) -> TuneResult:
    """Tune the fused kernels of a graph and merge the records into `schedules/<target-key>/`.

    Kernels with a final schedule of ours for the target (the ConvTranspose GEMM on CPU) are skipped,
    and so are those MetaSchedule cannot take (_unmeasurable): each keeps its default schedule.

    Every task gets `trials_per_task` trials (the global budget is that times the task count), so
    no task is starved by cheaper ones; the next build of the same graph and target applies them.
    """
    if options.trials_per_task < 1:
        raise TuningError(f"trials per task must be at least 1, got {options.trials_per_task}")
    if options.cost_model not in COST_MODELS:
        raise TuningError(f"unknown cost model {options.cost_model!r}: choose one of {COST_MODELS}")
    if inside_installed_package(options.schedules):
        raise TuningError(
            f"tune merges its records into {options.schedules}, inside the installed package, where the next "
            f"install or upgrade would delete them: give a folder of your own (--schedules DIR, and the same "
            f"to build), or run from the project's checkout (pip install -e .), whose schedules/ is committed"
        )
    source = options.selection.resolve()
    target = resolve_target(options.target)
    missing = devices.missing_device(target.config)
    if missing is not None:
        raise TuningError(
            f"tuning for {target.key} measures every candidate on that device, and {missing}: run `tune` on "
            f"{devices.runs_on(target.config)} (`build` works here, with the records already in {options.schedules})"
        )
    # MetaSchedule imports xgboost only when it first trains the model, after the first batch of
    # candidates has been built and measured: without this check that is minutes of device time lost.
    if options.cost_model == "xgb" and importlib.util.find_spec("xgboost") is None:
        raise TuningError(
            "the xgb cost model needs xgboost, which is not installed here: install the project's "
            "dependencies (pip install -e ., which brings xgboost-cpu), or tune with --cost-model random"
        )
    started = time.time()
    lowered = lower(import_onnx(source.model).mod, target, options.lowering).main
    tvm_target = target.tvm_target()
    extracted = []
    for task in ms.relax_integration.extract_tasks(lowered, tvm_target):
        if target.kind == "llvm" and has_final_schedule(task.dispatched[0]["main"]):
            log.info("%s keeps our CPU schedule; MetaSchedule does not tune it", task.task_name)
        elif (refused := _unmeasurable(task.dispatched[0])) is not None:
            log.info("%s keeps our schedule; MetaSchedule cannot tune it (%s)", task.task_name, refused)
        else:
            extracted.append(task)
    store = ScheduleStore(target, options.schedules)
    staging_dir = Path(tempfile.mkdtemp(prefix="pipeline-tune-"))
    with _meta_schedule_logging():
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted, work_dir=str(staging_dir), seed=options.seed
        )
    if not contexts:
        raise TuningError("this graph has no kernels left to tune")
    progress = [TaskProgress(ctx.task_name) for ctx in contexts]
    log.info(
        "tuning %d tasks for %s, %d trials each (%d in all); records go to %s",
        len(contexts), target.key, options.trials_per_task, options.trials_per_task * len(contexts), store.dir,
    )
    staging = ms.database.JSONDatabase(work_dir=str(staging_dir))
    interrupted = False
    try:
        with _meta_schedule_logging():
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(staging_dir),
                max_trials_global=options.trials_per_task * len(contexts),
                max_trials_per_task=options.trials_per_task,
                num_trials_per_iter=min(64, options.trials_per_task),
                database=staging,
                # Workers start by importing TVM, which takes seconds on a busy 2-core machine; the
                # default 30 s per build then kills and restarts them in a loop.
                builder=ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_SEC),
                cost_model=options.cost_model,
                measure_callbacks=[
                    *ms.measure_callback.MeasureCallback.create("default"),
                    _ProgressReporter(progress, options.trials_per_task),
                ],
            )
    except KeyboardInterrupt:
        interrupted = True
        log.warning("tuning interrupted: keeping the records measured so far")
    finally:
        try:
            added = store.merge(staging)
        except Exception:
            log.error("could not merge the new records; they are kept in %s", staging_dir)
            raise
        shutil.rmtree(staging_dir, ignore_errors=True)
    result = TuneResult(
        target.key, store.dir, progress, added, store.kernel_count(), time.time() - started, interrupted
    )
    log.info(
        "merged %d measured schedules into %s, which keeps the best of each kernel (%d kernels) in %.0f s",
        added, store.dir, result.kernels_with_records, result.seconds,
    )
    return result
