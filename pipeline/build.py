"""Build: ONNX -> Relax -> tuned TIR -> exported library, verified against onnxruntime, saved as an artifact.

The artifact is verified by loading it back through `pipeline.runtime.load`, exactly as a user
would, so what is checked is the file that ships, not an in-memory module.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import tvm

from . import runtime
from .artifact import (
    ARTIFACTS_DIR,
    FORMAT,
    LIBRARY,
    PARAMS,
    SOURCE_ONNX,
    AppliedSchedules,
    GraphRecord,
    Manifest,
    StagedArtifact,
    TargetRecord,
    artifact_dir,
    package_versions,
    sha256_file,
    write_manifest,
)
from .errors import BuildError, VerificationError
from .graphs import GraphSelection
from .importer import TensorSpec, import_onnx
from .lowering import DEFAULT_LOWERING, lower
from .passes.default_cpu_schedule import DefaultConvTransposeCPUSchedule
from .runtime import Timing
from .target import TargetSpec, resolve_target
from .tuning import SCHEDULES_DIR, ScheduleStore
from .verify import DEFAULT_INPUT_SEED, Tolerance, check_model, seeded_inputs

log = logging.getLogger(__name__)

DEFAULT_GRAPHS = ("convt1", "convt2", "convt3", "convt4", "convt5")


@dataclass
class BuildOptions:
    selection: GraphSelection
    target: str | dict | TargetSpec = "cpu"
    out: Path = ARTIFACTS_DIR
    schedules: Path = SCHEDULES_DIR
    tolerance: Tolerance = field(default_factory=Tolerance)
    input_seed: int = DEFAULT_INPUT_SEED
    timing_repeats: int = 5
    lowering: str = DEFAULT_LOWERING
    # A library caller gets an exception on a mismatch; the CLI turns it into the exit status.
    raise_on_mismatch: bool = True


@dataclass
class BuildResult:
    graph: str
    artifact: Path
    manifest: Manifest
    latency: Timing

    @property
    def passed(self) -> bool:
        return self.manifest.verification is not None and self.manifest.verification.passed


def compile_module(
    mod: tvm.IRModule, target: TargetSpec, store: ScheduleStore, lowering: str = DEFAULT_LOWERING
) -> tuple[tvm.runtime.Executable, AppliedSchedules]:
    """Lower, give tuned kernels their records, and compile for the target."""
    lowered = lower(mod, target, lowering)
    scheduled, applied = store.apply(lowered)
    if target.kind == "llvm":
        scheduled = DefaultConvTransposeCPUSchedule()(scheduled)
    log.info(
        "%d of %d kernels have tuning records in %s", len(applied.tuned), len(applied.kernels), store.dir
    )
    try:
        with target.tvm_target():
            executable = tvm.compile(scheduled, target.tvm_target())
    except Exception as exc:  # TVM raises its own error types from codegen
        raise BuildError(f"TVM failed to compile for {target.key}: {str(exc).strip().splitlines()[-1]}") from exc
    return executable, applied


def build(options: BuildOptions) -> BuildResult:
    """Build one graph for one target, verify it against onnxruntime and save the artifact."""
    source = options.selection.resolve()
    target = resolve_target(options.target)
    started = time.time()
    log.info("building %s for %s", source.name, target.key)
    imported = import_onnx(source.model)
    if len(set(imported.param_names)) != len(imported.param_names):
        raise BuildError(f"{source.name}: two weights share one name; give every initializer a unique name")
    executable, applied = compile_module(
        imported.mod, target, ScheduleStore(target, options.schedules), options.lowering
    )
    stage = StagedArtifact(artifact_dir(options.out, source.name, target.key))
    try:
        executable.export_library(str(stage.dir / LIBRARY))
        np.savez(stage.dir / PARAMS, **dict(zip(imported.param_names, imported.params)))
        onnx.save(source.model, str(stage.dir / SOURCE_ONNX))
        manifest = Manifest(
            format=FORMAT,
            graph=GraphRecord(
                source.name, source.origin, sha256_file(stage.dir / SOURCE_ONNX), source.latent_frames, source.seed
            ),
            inputs=imported.inputs,
            outputs=imported.outputs,
            params=[TensorSpec(n, tuple(p.shape), str(p.dtype)) for n, p in zip(imported.param_names, imported.params)],
            target=TargetRecord(target.kind, target.key, target.config),
            lowering=options.lowering,
            versions=package_versions(),
            tuning=applied,
            files=stage.hash_files(),
            build_seconds=round(time.time() - started, 2),
        )
        write_manifest(stage.dir, manifest)
        model = runtime.load(stage.dir, allow_unverified=True)
        verification = check_model(model, options.input_seed, options.tolerance)
        latency = model.time(seeded_inputs(model.inputs, options.input_seed), repeats=options.timing_repeats)
        del model
        manifest = dataclasses.replace(manifest, verification=verification)
        write_manifest(stage.dir, manifest)
        final = stage.commit(verification.passed)
    except BaseException:
        stage.discard()
        raise
    result = BuildResult(source.name, final, manifest, latency)
    if not result.passed and options.raise_on_mismatch:
        worst = max(verification.outputs, key=lambda o: o.max_rel_error)
        raise VerificationError(
            f"{source.name} for {target.key} disagrees with onnxruntime: {worst.name} max abs error "
            f"{worst.max_abs_error:.3e}, max rel {worst.max_rel_error:.3e} (rtol {verification.rtol:g}, atol "
            f"{verification.atol:g}); the build is kept for inspection in {final}"
        )
    return result


def build_many(graphs: list[str], options: BuildOptions) -> list[BuildResult]:
    """Build several named graphs with the same options (the default build: convt1..convt5)."""
    return [
        build(dataclasses.replace(options, selection=dataclasses.replace(options.selection, graph=name, onnx=None)))
        for name in graphs
    ]
