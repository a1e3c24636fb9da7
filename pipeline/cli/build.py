"""`build`: one graph, or with no graph the default build (convt1..convt5 for this CPU)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..artifact import ARTIFACTS_DIR
from ..build import DEFAULT_GRAPHS, BuildOptions, BuildResult, build, build_many
from ..tuning import SCHEDULES_DIR
from .options import add_graph_arguments, add_target_arguments, graph_selection, target_choice

HELP = "compile, verify against onnxruntime and save an artifact (no graph: convt1..convt5)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_graph_arguments(parser, required=False)
    add_target_arguments(parser)
    parser.add_argument("--out", type=Path, default=ARTIFACTS_DIR, help="artifacts root (default artifacts/)")
    parser.add_argument("--schedules", type=Path, default=SCHEDULES_DIR, help="tuning records root")


def summary_table(results: list[BuildResult]) -> str:
    rows = [("graph", "latency (ms, median [min-max])", "max abs err", "max rel err", "ok", "tuned kernels", "artifact")]
    for r in results:
        if r.pending:
            latency = abs_error = rel_error = "-"
        else:
            worst = max(r.manifest.verification.outputs, key=lambda o: o.max_rel_error)
            latency = f"{r.latency.median_ms:.2f} [{r.latency.min_ms:.2f}-{r.latency.max_ms:.2f}]"
            abs_error, rel_error = f"{worst.max_abs_error:.2e}", f"{worst.max_rel_error:.2e}"
        rows.append((
            r.graph,
            latency,
            abs_error,
            rel_error,
            "pending" if r.pending else "✓" if r.passed else "✗",
            f"{len(r.manifest.tuning.tuned)}/{len(r.manifest.tuning.kernels)}",
            str(r.artifact),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    options = BuildOptions(
        selection=graph_selection(args), target=target_choice(args), lowering=args.lowering, out=args.out, schedules=args.schedules,
        raise_on_mismatch=False,
    )
    if args.graph or args.onnx:
        results = [build(options)]
    else:
        results = build_many(list(DEFAULT_GRAPHS), options)
    for r in results:
        verification = r.manifest.verification
        if r.pending:
            print(f"{r.graph}: {r.manifest.verification_pending}")
        else:
            print(f"{r.graph}: verified against {verification.reference}, inputs seeded {verification.input_seed}")
    print(summary_table(results))
    failed = [r.graph for r in results if not r.passed and not r.pending]
    if failed:
        print(f"FAILED verification: {', '.join(failed)} (kept for inspection in <target-key>.failed/)")
        return 1
    return 0
