"""`tune`: MetaSchedule with a per-task trial budget; records merge into schedules/<target-key>/."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..tuning import COST_MODELS, SCHEDULES_DIR, TuneOptions, tune
from .options import add_graph_arguments, add_target_arguments, graph_selection, target_choice

HELP = "tune a graph's kernels with MetaSchedule and merge the records into schedules/<target-key>/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_graph_arguments(parser, required=True)
    add_target_arguments(parser)
    parser.add_argument("--trials", type=int, default=64, help="trials per task (default 64)")
    parser.add_argument("--cost-model", choices=COST_MODELS, default="xgb", help="MetaSchedule cost model")
    parser.add_argument("--schedules", type=Path, default=SCHEDULES_DIR, help="tuning records root (default schedules/)")


def run(args: argparse.Namespace) -> int:
    result = tune(
        TuneOptions(
            selection=graph_selection(args), target=target_choice(args), lowering=args.lowering, trials_per_task=args.trials,
            cost_model=args.cost_model, schedules=args.schedules,
        )
    )
    print(f"{'task':40s} {'trials':>6s} {'best (ms)':>10s}")
    for task in result.tasks:
        best = f"{task.best_ms:.3f}" if math.isfinite(task.best_ms) else "-"
        print(f"{task.name:40s} {task.trials:6d} {best:>10s}")
    state = "interrupted; " if result.interrupted else ""
    print(
        f"{state}merged {result.records_merged} measured schedules into {result.store}, which keeps the best "
        f"of each of {result.kernels_with_records} kernels; {result.seconds:.0f} s"
    )
    return 130 if result.interrupted else 0
