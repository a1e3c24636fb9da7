"""Every build is checked against onnxruntime on the same ONNX and the same seeded inputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .artifact import SOURCE_ONNX, OutputCheck, Verification, write_manifest
from .importer import TensorSpec
from .runtime import Model, load

DEFAULT_INPUT_SEED = 1234


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


def check_outputs(
    actual: list[np.ndarray],
    onnx_model: onnx.ModelProto | Path,
    inputs: list[np.ndarray],
    input_specs: list[TensorSpec],
    output_specs: list[TensorSpec],
    seed: int,
    tolerance: Tolerance,
) -> Verification:
    expected = onnxruntime_outputs(onnx_model, {s.name: x for s, x in zip(input_specs, inputs)})
    checks = [compare(s.name, a, e, tolerance) for s, a, e in zip(output_specs, actual, expected)]
    return Verification(
        reference=f"onnxruntime {ort.__version__} CPUExecutionProvider",
        input_seed=seed,
        rtol=tolerance.rtol,
        atol=tolerance.atol,
        outputs=checks,
    )


def check_model(model: Model, seed: int = DEFAULT_INPUT_SEED, tolerance: Tolerance = Tolerance()) -> Verification:
    """Run a loaded artifact and onnxruntime on its source ONNX, on the same seeded inputs."""
    inputs = seeded_inputs(model.inputs, seed)
    actual = model.run(inputs)
    return check_outputs(actual, model.path / SOURCE_ONNX, inputs, model.inputs, model.outputs, seed, tolerance)


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


def format_check(check: OutputCheck, verification: Verification) -> str:
    mark = "✓" if check.passed else "✗"
    return (
        f"{mark} {check.name}: max abs error {check.max_abs_error:.2e}, max rel error {check.max_rel_error:.2e} "
        f"(pass: abs <= {verification.atol:g} + {verification.rtol:g}*max|ref|) vs {verification.reference}"
    )
