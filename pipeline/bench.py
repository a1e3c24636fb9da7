"""Side-by-side benchmark: our build, optionally TVM's stock lowering, and a baseline (onnxruntime
on CPU, PyTorch eager on CUDA or on request), on the same inputs in one run, with useful GFLOP/s
and the share of a matmul peak and, on a CPU, of the FMA units' peak, both measured in the same run.

The machine is shared and noisy, so the numbers that mean something are the ratios within a run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from . import cpu_peak, devices, fma_peak, torch_baseline
from .artifact import ARTIFACTS_DIR, package_versions
from .build import BuildOptions, build
from .cpu_threads import tvm_threads
from .errors import DeviceError, GraphError, TargetError
from .graphs import GraphSelection, graph_info, load_config, useful_flops
from .runtime import Model, Timing, load, time_calls
from .target import TargetSpec, cpu_model_name, cpuinfo_flags, host_cores, resolve_target
from .tuning import SCHEDULES_DIR
from .verify import Tolerance, compare, seeded_inputs

log = logging.getLogger(__name__)

# onnxruntime: its CPU execution provider (CPU targets only). torch: PyTorch eager on the target's device.
BASELINES = ("onnxruntime", "torch")


@dataclass
class BenchOptions:
    # Named graphs, then the user's ONNX files (each row named after its file); at least one of the two.
    graphs: list[str]
    onnx_files: list[Path] = field(default_factory=list)
    # For ONNX files with symbolic input dimensions: input name -> static shape, for every file.
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    config: str = "sao"
    latent_frames: int = 128
    target: str | dict | TargetSpec = "cpu"
    schedules: Path = SCHEDULES_DIR
    artifacts: Path = ARTIFACTS_DIR
    out: Path = ARTIFACTS_DIR / "bench"
    repeats: int = 10
    # TVM's stock lowering runs for minutes per call on the SAO layers untuned: opt in.
    with_stock: bool = False
    # None: onnxruntime for a CPU target, torch (cuDNN) for a CUDA one.
    baseline: str | None = None


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
    baseline: Measurement
    stock: Measurement | None
    tuned_kernels: str
    # How far the baseline's output is from ours (max |diff| / max |ours|) on the timed inputs.
    baseline_max_rel_error: float
    note: str = ""

    @property
    def ratio_to_baseline(self) -> float:
        return self.tvm.median_ms / self.baseline.median_ms

    def gflops(self, m: Measurement) -> float:
        return self.useful_gflop / (m.median_ms / 1e3)


@dataclass
class BenchReport:
    rows: list[BenchRow]
    baseline: str
    peak_gflops: float
    peak: str
    machine: dict
    settings: dict
    versions: dict = field(default_factory=package_versions)
    # What the CPU's FMA units can do (fma_peak), for "% FMA peak"; None on a GPU.
    fma_peak_gflops: float | None = None
    # The graphs not measured yet: the report is written after every graph, so a run cut short
    # (Ctrl-C, a machine's time limit) leaves the rows it finished; empty once the run is done.
    pending: list[str] = field(default_factory=list)


def measure_peak(target: TargetSpec) -> cpu_peak.Peak:
    """A practical fp32 peak of the target's device, measured now."""
    if target.kind == "llvm":
        return cpu_peak.measure_peak(cpuinfo_flags())
    return cpu_peak.Peak(torch_baseline.matmul_peak_gflops("cuda"), "torch fp32 matmul 8192^3 (TF32 off) on the GPU")


FMA_PEAK_WHAT = "a TVM loop of independent vector multiply-adds on every thread"


def _measure_fma_peak(loop: fma_peak.FmaLoop | None) -> float | None:
    if loop is None:
        return None
    gflops = fma_peak.fma_peak_gflops(loop)
    log.info("FMA peak: %.1f GFLOP/s (%s)", gflops, FMA_PEAK_WHAT)
    return gflops


class _OnnxruntimeBaseline:
    """onnxruntime's CPU execution provider on as many threads as our kernels, so the ratio
    compares kernels, not thread counts."""

    def __init__(self, onnx_model: Path, model: Model) -> None:
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = model.threads
        self.session = ort.InferenceSession(str(onnx_model), session_options, providers=["CPUExecutionProvider"])
        self.names = [s.name for s in model.inputs]

    @staticmethod
    def describe() -> str:
        return f"onnxruntime {ort.__version__} CPUExecutionProvider"

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.names, inputs)))

    def time(self, inputs: list[np.ndarray], repeats: int) -> Measurement:
        feeds = dict(zip(self.names, inputs))
        return Measurement.of(time_calls(lambda: self.session.run(None, feeds), repeats))


class _TorchBaseline:
    """PyTorch eager on the target's device; on a CPU, on as many threads as our kernels."""

    def __init__(self, onnx_model: Path, model: Model, device: str) -> None:
        self.graph = torch_baseline.TorchGraph.load(onnx_model, device)
        if device == "cpu":
            self.graph.torch.set_num_threads(model.threads)

    def describe(self) -> str:
        return torch_baseline.describe(self.graph.device)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.graph.run(inputs)

    def time(self, inputs: list[np.ndarray], repeats: int) -> Measurement:
        return Measurement.of(self.graph.time(inputs, repeats))


def _baseline_name(options: BenchOptions, target: TargetSpec) -> str:
    name = options.baseline or ("onnxruntime" if target.kind == "llvm" else "torch")
    if name not in BASELINES:
        raise TargetError(f"unknown baseline {name!r}: choose one of {BASELINES}")
    if name == "onnxruntime" and target.kind != "llvm":
        raise TargetError(
            f"onnxruntime runs on the CPU here, so it is no baseline for {target.key}: use --baseline torch "
            f"(PyTorch eager with cuDNN on the same GPU)"
        )
    return name


def _selections(options: BenchOptions) -> list[GraphSelection]:
    selections = [
        GraphSelection(graph=name, config=options.config, latent_frames=options.latent_frames)
        for name in options.graphs
    ]
    selections += [GraphSelection(onnx=Path(path), input_shapes=options.input_shapes) for path in options.onnx_files]
    if not selections:
        raise GraphError("nothing to bench: name a graph (--graph) or an ONNX file (--onnx)")
    # A misspelt name or path says so before the first graph is built and timed, not after.
    if options.graphs:
        config = load_config(options.config)
        for name in options.graphs:
            graph_info(config, name)
    for path in options.onnx_files:
        if not Path(path).is_file():
            raise GraphError(f"ONNX file {path} does not exist")
    return selections


def _bench_graph(selection: GraphSelection, options: BenchOptions, target: TargetSpec, baseline_name: str):
    base = BuildOptions(
        selection=selection, target=target, out=options.artifacts, schedules=options.schedules, timing_repeats=1,
        float64_check=False,
    )
    ours = build(base)
    model = load(ours.artifact)
    inputs = seeded_inputs(model.inputs)
    onnx_model = ours.artifact / "model.onnx"
    if baseline_name == "onnxruntime":
        baseline = _OnnxruntimeBaseline(onnx_model, model)
    else:
        baseline = _TorchBaseline(onnx_model, model, target.device)
    agreement = compare("output", baseline.run(inputs)[0], model.run(inputs)[0], Tolerance())
    gflop = useful_flops(onnx.load(str(onnx_model))) / 1e9
    stock, note = None, "stock lowering skipped (minutes per call untuned; --with-stock to include)"
    if options.with_stock:
        stock_build = build(dataclasses.replace(base, lowering="stock", out=options.artifacts / "stock"))
        stock = Measurement.of(load(stock_build.artifact).time(inputs, repeats=3, min_repeat_ms=0))
        note = ""
    # Interleave the two measurements, so that a burst of load elsewhere hits both sides.
    tvm_runs, baseline_runs = [], []
    for _ in range(2):
        tvm_runs.append(model.time(inputs, repeats=options.repeats // 2 or 1))
        baseline_runs.append(baseline.time(inputs, options.repeats // 2 or 1))
    tuning = ours.manifest.tuning
    row = BenchRow(
        ours.manifest.graph.name, gflop, Measurement.combined(tvm_runs), Measurement.combined(baseline_runs), stock,
        f"{len(tuning.tuned)}/{len(tuning.kernels)}", agreement.max_rel_error, note,
    )
    return row, baseline.describe()


def _machine(target: TargetSpec) -> dict:
    machine = {"cpu": cpu_model_name() or platform.machine(), "cores": host_cores(), "threads": tvm_threads()}
    if target.kind == "llvm":
        machine["llvm_cpu"] = target.config.get("mcpu")
    else:
        import tvm

        machine["gpu"] = tvm.cuda(0).device_name
    return machine


def bench(options: BenchOptions) -> BenchReport:
    """Build (or rebuild) each graph, then time ours and the baseline side by side; write JSON, Markdown, PNG."""
    target = resolve_target(options.target)
    baseline_name = _baseline_name(options, target)
    selections = _selections(options)
    missing = devices.missing_device(target.config)
    if missing is not None:
        raise DeviceError(
            f"bench times ours and the baseline on the target's device, and {missing}: run it on "
            f"{devices.runs_on(target.config)} (`build` works here, unverified until then)"
        )
    peak_before = measure_peak(target)
    log.info("peak: %.1f GFLOP/s (%s, best of 5)", peak_before.gflops, peak_before.what)
    fma_loop = fma_peak.compile_fma_loop(target) if target.kind == "llvm" else None
    fma_before = _measure_fma_peak(fma_loop)
    report = BenchReport(
        [], baseline_name, peak_before.gflops, peak_before.what,
        machine=_machine(target),
        settings={"config": options.config if options.graphs else None,
                  "latent_frames": options.latent_frames if options.graphs else None,
                  "onnx_files": [str(path) for path in options.onnx_files],
                  "input_shapes": {name: list(shape) for name, shape in options.input_shapes.items()},
                  "target": target.key,
                  "repeats": options.repeats},
        fma_peak_gflops=fma_before,
        pending=[selection.name for selection in selections],
    )
    # Until the run ends, the folder holds this run's rows so far, not a figure of an earlier run.
    write_report(report, options.out, figure=False)
    (options.out / "bench.png").unlink(missing_ok=True)
    for selection in selections:
        row, report.baseline = _bench_graph(selection, options, target, baseline_name)
        log.info("%s: ours %.2f ms, %s %.2f ms, ratio %.2f", row.graph, row.tvm.median_ms, baseline_name,
                 row.baseline.median_ms, row.ratio_to_baseline)
        report.rows.append(row)
        report.pending.pop(0)
        write_report(report, options.out, figure=False)
    # A busy neighbour during one measurement of the peak would inflate every "% peak": measured
    # again after the graphs, the better of the two counts (on a shared 2-core VM one run read 102
    # GFLOP/s where others read 169-188, and the table showed 125-171% of it).
    peak_after = measure_peak(target)
    log.info("peak again: %.1f GFLOP/s (%s)", peak_after.gflops, peak_after.what)
    peak = max(peak_before, peak_after, key=lambda p: p.gflops)
    report.peak_gflops, report.peak = peak.gflops, peak.what
    if fma_before is not None:
        report.fma_peak_gflops = max(fma_before, _measure_fma_peak(fma_loop))
    write_report(report, options.out)
    return report


def _short(baseline: str) -> str:
    return baseline.split()[0]


def _where(machine: dict) -> str:
    if "gpu" in machine:
        return f"on {machine['gpu']}"
    return f"{machine['threads']} CPU threads for ours and for the baseline"


def _scope(settings: dict) -> str:
    shapes = "".join(f"{name} {shape}, " for name, shape in settings.get("input_shapes", {}).items())
    if settings.get("latent_frames") is None:
        return shapes
    return f"T = {settings['latent_frames']} latent frames, config {settings['config']}, {shapes}"


def markdown_table(report: BenchReport) -> str:
    short = _short(report.baseline)
    fma = report.fma_peak_gflops
    fma_header, fma_column = ("", "") if fma is None else (
        f"; FMA peak {fma:.0f} GFLOP/s ({FMA_PEAK_WHAT}, same run)", " % FMA peak |"
    )
    lines = [
        (
            f"{_scope(report.settings)}target {report.settings['target']}, {_where(report.machine)}; "
            f"baseline: {report.baseline}; peak {report.peak_gflops:.0f} GFLOP/s ({report.peak}, same run){fma_header}."
        ),
        "",
        (
            f"| graph | useful GFLOP | ours ms (median [min–max]) | {short} ms | ours / {short} | ours GFLOP/s "
            f"| % peak |{fma_column} {short} GFLOP/s | {short} vs ours (max rel diff) | stock ms | tuned kernels |"
        ),
        "|---|---|---|---|---|---|---|" + ("---|" if fma is not None else "") + "---|---|---|---|",
    ]
    for r in report.rows:
        stock = f"{r.stock.median_ms:.1f}" if r.stock else "skipped"
        ours = r.gflops(r.tvm)
        fma_share = "" if fma is None else f" {100 * ours / fma:.0f}% |"
        lines.append(
            f"| {r.graph} | {r.useful_gflop:.2f} | {r.tvm.median_ms:.2f} [{r.tvm.min_ms:.2f}–{r.tvm.max_ms:.2f}] | "
            f"{r.baseline.median_ms:.2f} [{r.baseline.min_ms:.2f}–{r.baseline.max_ms:.2f}] | "
            f"**{r.ratio_to_baseline:.2f}×** | {ours:.1f} | {100 * ours / report.peak_gflops:.0f}% |{fma_share} "
            f"{r.gflops(r.baseline):.1f} | {r.baseline_max_rel_error:.1e} | {stock} | {r.tuned_kernels} |"
        )
    if report.pending:
        lines += ["", f"Partial: not measured yet (the run stopped or is still going): {', '.join(report.pending)}."]
    return "\n".join(lines) + "\n"


def write_report(report: BenchReport, out: Path, figure: bool = True) -> None:
    """bench.json and bench.md into `out`; with `figure`, bench.png too (where matplotlib is installed)."""
    out.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(report)
    for row, raw in zip(report.rows, data["rows"]):
        raw["ratio_to_baseline"] = row.ratio_to_baseline
    (out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "bench.md").write_text(markdown_table(report))
    if not figure:
        return
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
    ax.bar(xs + 0.2, [r.gflops(r.baseline) for r in report.rows], 0.4, label=_short(report.baseline))
    ax.axhline(report.peak_gflops, color="gray", linestyle="--", label="fp32 matmul peak (same run)")
    if report.fma_peak_gflops is not None:
        ax.axhline(report.fma_peak_gflops, color="black", linestyle=":", label="fp32 FMA peak (same run)")
    ax.set_xticks(xs, names)
    ax.set_ylabel("useful GFLOP/s")
    ax.set_title(f"{_scope(report.settings)}{report.settings['target']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=120)
    plt.close(fig)
