"""ConvTranspose conformance: every case of a table, built by our pipeline, against onnxruntime
and against the independent numpy reference (scatter form).

The cases are data: `graphs/convtranspose_conformance.jsonl`, one JSON object per line,

    {"case": "1d_stride3_asym_pads", "x": [1, 4, 7], "w": [4, 3, 5], "attrs": {"strides": [3], "pads": [1, 2]}}

with `x` the input shape, `w` the weight shape (Cin, Cout/group, K...), `attrs` the ONNX
ConvTranspose attributes, `"bias": false` to leave out the bias, and `"expect": "unsupported"` for
a case we refuse on purpose. A case we cannot compile must fail at build time with our own error,
which the matrix shows as "unsupported" with its message; a case that builds and disagrees is a ✗,
never hidden.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import reference
from .artifact import ARTIFACTS_DIR
from .build import BuildOptions, build
from .errors import GraphError, PipelineError
from .graphs import GRAPHS_DIR, IR_VERSION, OPSET, GraphSelection
from .runtime import load
from .target import TargetSpec, resolve_target
from .tuning import SCHEDULES_DIR
from .verify import DEFAULT_INPUT_SEED, Tolerance, compare, seeded_inputs

log = logging.getLogger(__name__)

CASES_FILE = GRAPHS_DIR / "convtranspose_conformance.jsonl"
WEIGHT_SEED = 7


@dataclass(frozen=True)
class ConformanceCase:
    name: str
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    attrs: dict
    bias: bool = True
    expect: str = "✓"

    @property
    def rank(self) -> int:
        return len(self.x_shape) - 2

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.attrs.items())]
        return ", ".join(parts + ([] if self.bias else ["no bias"])) or "defaults"


def load_cases(path: Path = CASES_FILE) -> list[ConformanceCase]:
    cases = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            case = ConformanceCase(
                data["case"], tuple(data["x"]), tuple(data["w"]), dict(data.get("attrs", {})),
                bool(data.get("bias", True)), data.get("expect", "✓"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise GraphError(
                f"{path}:{number} is not a conformance case ({exc}); each line is a JSON object with "
                f'"case", "x", "w" and optionally "attrs" and "bias"'
            ) from exc
        cases.append(case)
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GraphError(f"{path}: case names must be unique, repeated: {duplicates}")
    return cases


def case_weights(case: ConformanceCase, seed: int = WEIGHT_SEED) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(case.w_shape).astype(np.float32)
    bias = rng.standard_normal(case.w_shape[1] * case.attrs.get("group", 1)).astype(np.float32) if case.bias else None
    return w, bias


def case_model(case: ConformanceCase, seed: int = WEIGHT_SEED) -> onnx.ModelProto:
    """One ConvTranspose node; the output shape is left to onnxruntime and to us to work out."""
    w, bias = case_weights(case, seed)
    initializers = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(bias, "b")] if bias is not None else [])
    node = helper.make_node("ConvTranspose", ["x", "w"] + (["b"] if bias is not None else []), ["y"], name="convt", **case.attrs)
    graph = helper.make_graph(
        [node], case.name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, case.x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(case.x_shape))], initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def case_reference(case: ConformanceCase, x: np.ndarray, seed: int = WEIGHT_SEED) -> np.ndarray:
    w, bias = case_weights(case, seed)
    return reference.conv_transpose(x, w, bias, **case.attrs)


@dataclass
class CaseResult:
    case: str
    rank: int
    attributes: str
    status: str  # "✓", "✗" or "unsupported"
    lowering: str | None = None  # "zero-waste", or "stock" where our rewrite fell back
    max_abs_error_vs_onnxruntime: float | None = None
    max_abs_error_vs_numpy: float | None = None
    message: str | None = None


@dataclass
class ConformanceOptions:
    cases: Path = CASES_FILE
    target: str | dict | TargetSpec = "cpu"
    out: Path = ARTIFACTS_DIR / "conformance"
    schedules: Path = SCHEDULES_DIR
    tolerance: Tolerance = field(default_factory=Tolerance)


@dataclass
class ConformanceReport:
    target: str
    tolerance: Tolerance
    results: list[CaseResult]

    @property
    def passed(self) -> bool:
        """No wrong answer: every case is ✓ or refused at build time."""
        return all(r.status != "✗" for r in self.results)


def check_case(case: ConformanceCase, options: ConformanceOptions, target: TargetSpec) -> CaseResult:
    """Build one case with our pipeline and compare it with onnxruntime and the numpy reference."""
    result = CaseResult(case.name, case.rank, case.describe(), "unsupported")
    model_path = options.out / "models" / f"{case.name}.onnx"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(case_model(case), str(model_path))
    try:
        built = build(BuildOptions(
            GraphSelection(onnx=model_path), target=target, out=options.out / "builds", schedules=options.schedules,
            tolerance=options.tolerance, timing_repeats=1, raise_on_mismatch=False,
        ))
    except PipelineError as exc:
        result.message = str(exc)
        return result
    (check,) = built.manifest.verification.outputs
    x = seeded_inputs(built.manifest.inputs, DEFAULT_INPUT_SEED)[0]
    (ours,) = load(built.artifact, allow_unverified=True).run([x])
    against_numpy = compare("y", ours, case_reference(case, x), options.tolerance)
    result.lowering = "zero-waste" if "convt_gemm" in built.manifest.tuning.kernels else "stock"
    result.max_abs_error_vs_onnxruntime = check.max_abs_error
    result.max_abs_error_vs_numpy = against_numpy.max_abs_error
    result.status = "✓" if check.passed and against_numpy.passed else "✗"
    return result


def run_conformance(options: ConformanceOptions) -> ConformanceReport:
    """Build and check every case; write `conformance.json` and `conformance.md` under `options.out`."""
    target = resolve_target(options.target)
    cases = load_cases(options.cases)
    results = []
    for number, case in enumerate(cases, start=1):
        result = check_case(case, options, target)
        log.info("[%d/%d] %s: %s", number, len(cases), case.name, result.status)
        results.append(result)
    report = ConformanceReport(target.key, options.tolerance, results)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "conformance.json").write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    (options.out / "conformance.md").write_text(markdown_table(report) + "\n")
    return report


def _error(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def markdown_table(report: ConformanceReport) -> str:
    ok = sum(r.status == "✓" for r in report.results)
    refused = sum(r.status == "unsupported" for r in report.results)
    lines = [
        f"{ok} ✓, {len(report.results) - ok - refused} ✗, {refused} unsupported of {len(report.results)} cases; "
        f"target {report.target}; pass: max abs error <= {report.tolerance.atol:g} + {report.tolerance.rtol:g}*max|ref|, "
        f"against onnxruntime and against the numpy scatter reference.",
        "",
        "| case | attributes | result | lowering | max abs err vs ORT | vs numpy |",
        "|---|---|---|---|---|---|",
    ]
    for r in report.results:
        status = r.status if r.message is None else f"{r.status}: {r.message}"
        lines.append(
            f"| {r.case} | {r.attributes} | {status} | {r.lowering or '-'} | "
            f"{_error(r.max_abs_error_vs_onnxruntime)} | {_error(r.max_abs_error_vs_numpy)} |"
        )
    return "\n".join(lines)
