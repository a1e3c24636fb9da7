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
    parser.add_argument(
        "--emulate-on-host", action="store_true",
        help="GPU targets: also run the kernels as scheduled for the GPU on this CPU and compare with onnxruntime, "
        "which checks the GPU schedules where the GPU is absent (slow: about 2 GFLOP/s on 2 cores)",
    )
    parser.add_argument(
        "--no-float64-check", dest="float64_check", action="store_false",
        help="named graphs: skip comparing ours and onnxruntime with the float64 numpy reference "
        "(about half the build time of the SAO decoder at T=128)",
    )


def _status(result: BuildResult) -> str:
    status = "pending" if result.pending else "✗" if result.failed else "✓"
    host = result.manifest.host_emulation
    return status if host is None else f"{status}, emulated {'✓' if host.passed else '✗'}"


def summary_table(results: list[BuildResult]) -> str:
    rows = [(
        "graph", "latency (ms, median [min-max])", "max abs err", "max rel err", "vs float64: ours / onnxruntime",
        "ok", "tuned kernels", "artifact",
    )]
    for r in results:
        checked = r.manifest.verification or r.manifest.host_emulation
        latency = "-" if r.latency is None else f"{r.latency.median_ms:.2f} [{r.latency.min_ms:.2f}-{r.latency.max_ms:.2f}]"
        abs_error = rel_error = exact = "-"
        if checked is not None:
            worst = max(checked.outputs, key=lambda o: o.max_rel_error)
            abs_error, rel_error = f"{worst.max_abs_error:.2e}", f"{worst.max_rel_error:.2e}"
        if checked is not None and checked.float64:
            check = checked.float64[0]
            exact = f"{check.ours_rms_rel_error:.1e} / {check.onnxruntime_rms_rel_error:.1e}"
        rows.append((
            r.graph,
            latency,
            abs_error,
            rel_error,
            exact,
            _status(r),
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
        raise_on_mismatch=False, emulate_on_host=args.emulate_on_host, float64_check=args.float64_check,
    )
    if args.graph or args.onnx:
        results = [build(options)]
    else:
        results = build_many(list(DEFAULT_GRAPHS), options)
    for r in results:
        verification, host = r.manifest.verification, r.manifest.host_emulation
        if r.pending:
            print(f"{r.graph}: {r.manifest.verification_pending}")
        else:
            print(f"{r.graph}: verified against {verification.reference}, inputs seeded {verification.input_seed}")
        if host is not None:
            print(f"{r.graph}: its GPU kernels run on this CPU, against {host.reference}: "
                  f"{'✓' if host.passed else '✗'}")
    print(summary_table(results))
    failed = [r.graph for r in results if r.failed]
    if failed:
        print(f"FAILED verification: {', '.join(failed)} (kept for inspection in <target-key>.failed/)")
        return 1
    return 0
