"""Every build is checked against onnxruntime on the same ONNX and the same seeded inputs."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from . import reference
from .artifact import SOURCE_ONNX, Float64Check, OutputCheck, Verification, write_manifest
from .importer import TensorSpec
from .runtime import Model, load

log = logging.getLogger(__name__)

DEFAULT_INPUT_SEED = 1234
# fp32 onnxruntime measured within 1.2e-5 (rms, relative) of the float64 reference on the SAO decoder;
# a reference this far off is of another graph.
REFERENCE_MISMATCH = 1e-3


@dataclass(frozen=True)
class Tolerance:
    """fp32 vs fp32: both sides round differently in sums of up to ~30k products, which stays
    around 1e-6 of the output's scale; 1e-4 leaves room for that and still catches any real bug."""

    rtol: float = 1e-4
    atol: float = 1e-5


def seeded_inputs(specs: list[TensorSpec], seed: int = DEFAULT_INPUT_SEED) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s.shape).astype(s.dtype) for s in specs]


def onnxruntime_outputs(model: onnx.ModelProto | Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def compare(name: str, actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> OutputCheck:
    if actual.shape != expected.shape:
        return OutputCheck(name, float("inf"), float("inf"), False)
    finite = np.isfinite(expected)
    same_non_finite = bool(np.array_equal(finite, np.isfinite(actual)))
    diff = np.abs(actual[finite].astype(np.float64) - expected[finite].astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(expected[finite]).max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    passed = same_non_finite and max_abs <= tolerance.atol + tolerance.rtol * scale
    return OutputCheck(name, max_abs, max_rel, passed)


def _rms_rel_error(actual: np.ndarray, exact: np.ndarray) -> float:
    scale = float(np.sqrt(np.mean(exact**2)))
    rms = float(np.sqrt(np.mean((actual.astype(np.float64) - exact) ** 2)))
    return rms / scale if scale > 0 else rms


def float64_checks(
    exact: Callable[[np.ndarray], np.ndarray],
    inputs: list[np.ndarray],
    ours: list[np.ndarray],
    onnxruntime: list[np.ndarray],
    output_specs: list[TensorSpec],
) -> list[Float64Check] | None:
    """Ours and onnxruntime's one output against `exact` (a named graph in float64) on the same
    input; None where `exact` is evidently another graph: onnxruntime, fp32, stays within
    REFERENCE_MISMATCH of the true one. That happens where a config given as a JSON path carries the
    name of a shipped one, which `exact` was made from."""
    name = output_specs[0].name
    started = time.time()
    try:
        exact_output = exact(inputs[0])
    except ValueError:  # the shipped config's weights do not fit this graph's shapes
        exact_output = None
    fits = exact_output is not None and exact_output.shape == onnxruntime[0].shape
    onnxruntime_error = _rms_rel_error(onnxruntime[0], exact_output) if fits else None
    if onnxruntime_error is None or onnxruntime_error > REFERENCE_MISMATCH:
        log.warning("the float64 reference of %s is not this graph (its config was renamed?): no float64 check", name)
        return None
    log.info("float64 reference of %s computed in %.1f s", name, time.time() - started)
    return [Float64Check(name, _rms_rel_error(ours[0], exact_output), onnxruntime_error)]


def check_outputs(
    actual: list[np.ndarray],
    onnx_model: onnx.ModelProto | Path,
    inputs: list[np.ndarray],
    input_specs: list[TensorSpec],
    output_specs: list[TensorSpec],
    seed: int,
    tolerance: Tolerance,
    exact: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Verification:
    """`actual` against onnxruntime on the same inputs; with `exact`, the float64 reference of a
    one-input, one-output graph, both against it too."""
    expected = onnxruntime_outputs(onnx_model, {s.name: x for s, x in zip(input_specs, inputs)})
    checks = [compare(s.name, a, e, tolerance) for s, a, e in zip(output_specs, actual, expected)]
    one_to_one = len(inputs) == 1 and len(actual) == 1
    return Verification(
        reference=f"onnxruntime {ort.__version__} CPUExecutionProvider",
        input_seed=seed,
        rtol=tolerance.rtol,
        atol=tolerance.atol,
        outputs=checks,
        float64=float64_checks(exact, inputs, actual, expected, output_specs) if exact and one_to_one else None,
    )


def check_model(
    model: Model, seed: int = DEFAULT_INPUT_SEED, tolerance: Tolerance = Tolerance(), float64: bool = True
) -> Verification:
    """Run a loaded artifact and onnxruntime on its source ONNX, on the same seeded inputs; with
    `float64`, a named Oobleck graph also against its float64 reference."""
    inputs = seeded_inputs(model.inputs, seed)
    actual = model.run(inputs)
    graph = model.manifest.graph
    exact = reference.named_graph(graph.name, graph.origin, graph.seed) if float64 else None
    return check_outputs(
        actual, model.path / SOURCE_ONNX, inputs, model.inputs, model.outputs, seed, tolerance, exact
    )


def verify_artifact(path: Path | str, tolerance: Tolerance | None = None) -> Verification:
    """Re-run the onnxruntime check on a saved artifact, with the seed and tolerances it was built with.

    A GPU artifact built where that GPU was absent has no verification yet: the first one, run
    here on the GPU, is written into its manifest (pass or fail), so `load` then accepts or refuses it."""
    model = load(path, allow_unverified=True)
    manifest = model.manifest
    recorded = manifest.verification
    seed = recorded.input_seed if recorded else DEFAULT_INPUT_SEED
    if tolerance is None:
        tolerance = Tolerance(recorded.rtol, recorded.atol) if recorded else Tolerance()
    verification = check_model(model, seed, tolerance)
    if recorded is None and manifest.verification_pending:
        write_manifest(model.path, dataclasses.replace(manifest, verification=verification, verification_pending=None))
    return verification


def format_float64(check: Float64Check) -> str:
    return (
        f"  {check.name} against the float64 reference: rms rel error {check.ours_rms_rel_error:.2e} "
        f"(onnxruntime: {check.onnxruntime_rms_rel_error:.2e})"
    )


def format_check(check: OutputCheck, verification: Verification) -> str:
    mark = "✓" if check.passed else "✗"
    return (
        f"{mark} {check.name}: max abs error {check.max_abs_error:.2e}, max rel error {check.max_rel_error:.2e} "
        f"(pass: abs <= {verification.atol:g} + {verification.rtol:g}*max|ref|) vs {verification.reference}"
    )
