"""Side-by-side benchmark: our build, optionally TVM's stock lowering, and onnxruntime, on the same
inputs in one run, with useful GFLOP/s and the share of a peak measured in the same run.

The machine is shared and noisy, so the numbers that mean something are the ratios within a run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .artifact import ARTIFACTS_DIR, package_versions
from .build import BuildOptions, build
from .errors import TargetError
from .graphs import GraphSelection, useful_flops
from .runtime import Timing, load
from .cpu_threads import tvm_threads
from .target import TargetSpec, host_cores, resolve_target
from .tuning import SCHEDULES_DIR
from .verify import seeded_inputs

log = logging.getLogger(__name__)


@dataclass
class BenchOptions:
    graphs: list[str]
    config: str = "sao"
    latent_frames: int = 128
    target: str | dict | TargetSpec = "cpu"
    schedules: Path = SCHEDULES_DIR
    artifacts: Path = ARTIFACTS_DIR
    out: Path = ARTIFACTS_DIR / "bench"
    repeats: int = 10
    # TVM's stock lowering runs for minutes per call on the SAO layers untuned: opt in.
    with_stock: bool = False


@dataclass(frozen=True)
class Measurement:
    median_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, timing: Timing) -> Measurement:
        return cls(timing.median_ms, timing.min_ms, timing.max_ms)

    @classmethod
    def combined(cls, runs: list) -> Measurement:
        """Median of the runs' medians, extremes over all runs (Timing or Measurement alike)."""
        return cls(
            statistics.median(r.median_ms for r in runs), min(r.min_ms for r in runs), max(r.max_ms for r in runs)
        )


@dataclass(frozen=True)
class BenchRow:
    graph: str
    useful_gflop: float
    tvm: Measurement
    onnxruntime: Measurement
    stock: Measurement | None
    tuned_kernels: str
    note: str = ""

    @property
    def ratio_to_onnxruntime(self) -> float:
        return self.tvm.median_ms / self.onnxruntime.median_ms

    def gflops(self, m: Measurement) -> float:
        return self.useful_gflop / (m.median_ms / 1e3)


@dataclass
class BenchReport:
    rows: list[BenchRow]
    peak_gflops: float
    machine: dict
    settings: dict
    versions: dict = field(default_factory=package_versions)


def measure_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of a large matmul through numpy's BLAS on all cores: a practical peak."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def time_onnxruntime(session: ort.InferenceSession, feeds: dict, repeats: int, min_repeat_ms: int = 200) -> Measurement:
    session.run(None, feeds)
    per_call = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            session.run(None, feeds)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed * 1e3 >= min_repeat_ms:
                break
        per_call.append(elapsed / calls * 1e3)
    return Measurement(statistics.median(per_call), min(per_call), max(per_call))


def _same_threads_as(threads: int) -> ort.SessionOptions:
    """onnxruntime on as many threads as our kernels, so the ratio compares kernels, not thread counts."""
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = threads
    return session_options


def _bench_graph(name: str, options: BenchOptions, target: TargetSpec) -> BenchRow:
    base = BuildOptions(
        selection=GraphSelection(graph=name, config=options.config, latent_frames=options.latent_frames),
        target=target, out=options.artifacts, schedules=options.schedules, timing_repeats=1,
    )
    ours = build(base)
    model = load(ours.artifact)
    inputs = seeded_inputs(model.inputs)
    onnx_model = ours.artifact / "model.onnx"
    session = ort.InferenceSession(
        str(onnx_model), _same_threads_as(model.threads), providers=["CPUExecutionProvider"]
    )
    feeds = {s.name: x for s, x in zip(model.inputs, inputs)}
    gflop = useful_flops(onnx.load(str(onnx_model))) / 1e9
    stock, note = None, "stock lowering skipped (minutes per call untuned; --with-stock to include)"
    if options.with_stock:
        stock_build = build(dataclasses.replace(base, lowering="stock", out=options.artifacts / "stock"))
        stock = Measurement.of(load(stock_build.artifact).time(inputs, repeats=3, min_repeat_ms=0))
        note = ""
    # Interleave the two measurements, so that a burst of load elsewhere hits both sides.
    tvm_runs, ort_runs = [], []
    for _ in range(2):
        tvm_runs.append(model.time(inputs, repeats=options.repeats // 2 or 1))
        ort_runs.append(time_onnxruntime(session, feeds, options.repeats // 2 or 1))
    tvm, onnxruntime = Measurement.combined(tvm_runs), Measurement.combined(ort_runs)
    tuning = ours.manifest.tuning
    return BenchRow(name, gflop, tvm, onnxruntime, stock, f"{len(tuning.tuned)}/{len(tuning.kernels)}", note)


def bench(options: BenchOptions) -> BenchReport:
    """Build (or rebuild) each graph, then time ours and onnxruntime side by side; write JSON, Markdown, PNG."""
    target = resolve_target(options.target)
    if target.kind != "llvm":
        raise TargetError(
            f"bench times CPU builds against onnxruntime CPU; {target.key} would be timed against "
            f"PyTorch/cuDNN on the GPU, which this verb does not do yet: use --target cpu"
        )
    peak = measure_peak_gflops()
    log.info("peak: %.1f GFLOP/s (numpy fp32 matmul 2048^3, best of 5)", peak)
    rows = []
    for name in options.graphs:
        row = _bench_graph(name, options, target)
        log.info("%s: ours %.2f ms, onnxruntime %.2f ms, ratio %.2f", name, row.tvm.median_ms,
                 row.onnxruntime.median_ms, row.ratio_to_onnxruntime)
        rows.append(row)
    report = BenchReport(
        rows, peak,
        machine={"cpu": platform.processor() or platform.machine(), "llvm_cpu": target.config.get("mcpu"),
                 "cores": host_cores(), "threads": tvm_threads()},
        settings={"config": options.config, "latent_frames": options.latent_frames, "target": target.key,
                  "repeats": options.repeats},
    )
    write_report(report, options.out)
    return report


def markdown_table(report: BenchReport) -> str:
    lines = [
        f"T = {report.settings['latent_frames']} latent frames, config {report.settings['config']}, target "
        f"{report.settings['target']}, {report.machine['threads']} threads for ours and for onnxruntime; "
        f"peak {report.peak_gflops:.0f} GFLOP/s (fp32 matmul, same run).",
        "",
        "| graph | useful GFLOP | ours ms (median [min–max]) | onnxruntime ms | ours / ORT | ours GFLOP/s | % peak | ORT GFLOP/s | stock ms | tuned kernels |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        stock = f"{r.stock.median_ms:.1f}" if r.stock else "skipped"
        lines.append(
            f"| {r.graph} | {r.useful_gflop:.2f} | {r.tvm.median_ms:.2f} [{r.tvm.min_ms:.2f}–{r.tvm.max_ms:.2f}] | "
            f"{r.onnxruntime.median_ms:.2f} [{r.onnxruntime.min_ms:.2f}–{r.onnxruntime.max_ms:.2f}] | "
            f"**{r.ratio_to_onnxruntime:.2f}×** | {r.gflops(r.tvm):.1f} | {100 * r.gflops(r.tvm) / report.peak_gflops:.0f}% | "
            f"{r.gflops(r.onnxruntime):.1f} | {stock} | {r.tuned_kernels} |"
        )
    return "\n".join(lines) + "\n"


def write_report(report: BenchReport, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(report)
    for row, raw in zip(report.rows, data["rows"]):
        raw["ratio_to_onnxruntime"] = row.ratio_to_onnxruntime
    (out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "bench.md").write_text(markdown_table(report))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no bench.png (pip install -e '.[bench]')")
        return
    names = [r.graph for r in report.rows]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 4))
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, [r.gflops(r.tvm) for r in report.rows], 0.4, label="ours (TVM, zero-waste lowering)")
    ax.bar(xs + 0.2, [r.gflops(r.onnxruntime) for r in report.rows], 0.4, label="onnxruntime CPU")
    ax.axhline(report.peak_gflops, color="gray", linestyle="--", label="fp32 matmul peak (same run)")
    ax.set_xticks(xs, names)
    ax.set_ylabel("useful GFLOP/s")
    ax.set_title(f"T={report.settings['latent_frames']}, {report.settings['target']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=120)
    plt.close(fig)
