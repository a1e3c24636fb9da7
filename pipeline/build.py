"""Build: ONNX -> Relax -> tuned TIR -> exported library, verified against onnxruntime, saved as an artifact.

The artifact is verified by loading it back through `pipeline.runtime.load`, exactly as a user
would, so what is checked is the file that ships, not an in-memory module.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import tvm
from tvm import relax
from tvm.support import cc

from . import devices, host_emulation, reference, runtime
from .artifact import (
    ARTIFACTS_DIR,
    FORMAT,
    PARAMS,
    SOURCE_ONNX,
    AppliedSchedules,
    GraphRecord,
    Manifest,
    StagedArtifact,
    TargetRecord,
    Verification,
    artifact_dir,
    library_name,
    package_versions,
    sha256_file,
    write_manifest,
)
from .cpu_threads import on_kernel_thread
from .errors import BuildError, TargetError, VerificationError
from .graphs import GraphSelection
from .importer import ImportedGraph, TensorSpec, import_onnx
from .lowering import DEFAULT_LOWERING, ENTRY, WEIGHT_PREPARATION, lower
from .passes.default_cpu_schedule import DefaultCPUSchedule
from .passes.default_gpu_schedule import DefaultGPUSchedule
from .runtime import Timing
from .target import TargetSpec, resolve_target
from .tuning import SCHEDULES_DIR, ScheduleStore
from .verify import DEFAULT_INPUT_SEED, Tolerance, check_model, check_outputs, seeded_inputs

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
    # GPU targets: also run the kernels as scheduled for the GPU on this CPU against onnxruntime
    # (`host_emulation`), which checks the schedules where the GPU is absent. Slow: ~2 GFLOP/s on 2 cores.
    emulate_on_host: bool = False
    # Named Oobleck graphs: also compare ours and onnxruntime with the float64 numpy reference
    # (Verification.float64). Costs about half the build for the SAO decoder at T = 128 (31 s).
    float64_check: bool = True
    # A library caller gets an exception on a mismatch; the CLI turns it into the exit status.
    raise_on_mismatch: bool = True


@dataclass
class BuildResult:
    graph: str
    artifact: Path
    manifest: Manifest
    # None where the target's device is not on this machine: nothing was run.
    latency: Timing | None

    @property
    def passed(self) -> bool:
        return self.manifest.verification is not None and not self.failed

    @property
    def failed_checks(self) -> list[tuple[str, Verification]]:
        """The checks that ran and disagreed with onnxruntime, each with where it ran (for messages)."""
        checks = [
            ("", self.manifest.verification),
            ("with its GPU kernels run on this CPU (a GPU schedule is wrong): ", self.manifest.host_emulation),
        ]
        return [(where, check) for where, check in checks if check is not None and not check.passed]

    @property
    def failed(self) -> bool:
        return bool(self.failed_checks)

    @property
    def pending(self) -> bool:
        """Built for a device this machine lacks: verify it there with `python -m pipeline verify`."""
        return self.manifest.verification_pending is not None


@dataclass
class CompiledGraph:
    """`executable` runs `main` on the target; `weight_preparation` (host CPU) turns the imported
    weights into the ones `main` takes, once, at build time. `scheduled` is what `executable` was
    compiled from: `main` and its kernels, each scheduled for the target."""

    executable: tvm.runtime.Executable
    scheduled: tvm.IRModule
    weight_preparation: tvm.runtime.Executable
    prepared_weight_names: list[str]
    applied: AppliedSchedules

    def prepare_weights(self, weights: list[np.ndarray]) -> list[np.ndarray]:
        host = tvm.cpu()
        vm = relax.VirtualMachine(self.weight_preparation, host)
        tensors = tvm.runtime.convert([tvm.runtime.tensor(w, host) for w in weights])
        return on_kernel_thread(lambda: [p.numpy() for p in vm[WEIGHT_PREPARATION](tensors)])


def _unique(names: list[str]) -> list[str]:
    """Relax names lifted values `lv<N>` per scope, so two prepared weights can share a name."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}.{seen[name]}")
    return unique


def _compile_failure(message: str) -> str:
    """The line of a compiler's failure that says what went wrong: TVM's last line, or the last
    error line of nvcc's output, which ends in ptxas's statistics ("ptxas info : Compile time")."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return errors[-1] if errors else lines[-1] if lines else "no message"


def _compile(mod: tvm.IRModule, target: TargetSpec) -> tvm.runtime.Executable:
    devices.compile_environment(target.kind)
    try:
        with target.tvm_target():
            return tvm.compile(mod, target.tvm_target())
    except Exception as exc:  # TVM raises its own error types from codegen
        raise BuildError(f"TVM failed to compile for {target.key}: {_compile_failure(str(exc))}") from exc


def compile_module(
    mod: tvm.IRModule, target: TargetSpec, store: ScheduleStore, lowering: str = DEFAULT_LOWERING
) -> CompiledGraph:
    """Lower, give tuned kernels their records and the rest our schedules, and compile for the target."""
    lowered = lower(mod, target, lowering)
    scheduled, applied = store.apply(lowered.main)
    if target.kind == "llvm":
        scheduled = DefaultCPUSchedule(target.tvm_target())(scheduled)
    else:
        with target.tvm_target():
            scheduled = DefaultGPUSchedule()(scheduled)
    log.info(
        "%d of %d kernels have tuning records in %s", len(applied.tuned), len(applied.kernels), store.dir
    )
    main = scheduled[ENTRY]
    prepared_names = _unique([p.name for p in main.params[int(main.attrs["num_input"]):]])
    # The silent part of a build: LLVM, and for a GPU nvcc over every kernel in one file (20 of the
    # 36 s of the SAO decoder's CUDA build on 2 cores).
    log.info("compiling %d kernels for %s", len(applied.kernels), target.key)
    started = time.time()
    executable = _compile(scheduled, target)
    log.info("compiled in %.1f s", time.time() - started)
    return CompiledGraph(
        executable,
        scheduled,
        _compile(lowered.weight_preparation, resolve_target("cpu")),
        prepared_names,
        applied,
    )


def check_on_host(
    compiled: CompiledGraph, weights: list[np.ndarray], imported: ImportedGraph, model: onnx.ModelProto,
    seed: int, tolerance: Tolerance, exact: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Verification:
    """Run a GPU build's scheduled kernels on this CPU (`host_emulation`) and compare them
    with onnxruntime on the same seeded inputs, as the build's verification does on the device;
    with `exact`, both against the graph's float64 reference too (the GPU schedules' summation
    order is the emulation's)."""
    executable = _compile(host_emulation.host_module(compiled.scheduled), resolve_target("cpu"))
    inputs = seeded_inputs(imported.inputs, seed)
    outputs = host_emulation.run(executable, inputs, weights, len(imported.outputs))
    return check_outputs(outputs, model, inputs, imported.inputs, imported.outputs, seed, tolerance, exact)


def library_linker(target: TargetSpec) -> Callable | None:
    """How the library is linked: None (TVM's default, this machine's C++ compiler), or for a CPU
    target of another architecture (an aarch64 server, built on x86 CI) a cross compiler for its
    triple from PATH. Checked before compiling: the host's linker rejects foreign objects only at
    the end, with "Relocations in generic ELF"."""
    triple = devices.foreign_cpu_triple(target.config) if target.kind == "llvm" else None
    if triple is None:
        return None
    # Debian's cross toolchains drop the vendor: aarch64-linux-gnu-g++ for aarch64-unknown-linux-gnu.
    triples = dict.fromkeys((triple, triple.replace("-unknown-", "-")))
    names = [f"{t}-{driver}" for t in triples for driver in ("g++", "gcc")]
    for name in names:
        path = shutil.which(name)
        if path is not None:
            log.info("linking for %s with %s", triple, path)
            return cc.cross_compiler(path)
    arch = triple.split("-")[0]
    raise BuildError(
        f"{target.key} is for {arch}, and linking its library needs a C++ cross compiler for {triple}; none of "
        f"{', '.join(names)} is on PATH. Install one (Debian/Ubuntu: apt install g++-{arch}-linux-gnu), or run the "
        f"build on the {arch} machine itself"
    )


def build(options: BuildOptions) -> BuildResult:
    """Build one graph for one target, verify it against onnxruntime and save the artifact."""
    source = options.selection.resolve()
    target = resolve_target(options.target)
    if options.emulate_on_host and target.kind == "llvm":
        raise TargetError(
            f"emulating on the host is for GPU targets; a build for {target.key} runs and is verified on "
            f"this CPU as it is: drop --emulate-on-host, or give a GPU target (--target cuda)"
        )
    link = library_linker(target)
    started = time.time()
    log.info("building %s for %s", source.name, target.key)
    imported = import_onnx(source.model)
    if len(set(imported.param_names)) != len(imported.param_names):
        raise BuildError(f"{source.name}: two weights share one name; give every initializer a unique name")
    compiled = compile_module(imported.mod, target, ScheduleStore(target, options.schedules), options.lowering)
    weights = compiled.prepare_weights(imported.params)
    host_check = None
    if options.emulate_on_host:
        log.info("running the %s kernels of %s on this CPU (host emulation)", target.key, source.name)
        exact = reference.named_graph(source.name, source.origin, source.seed) if options.float64_check else None
        host_check = check_on_host(
            compiled, weights, imported, source.model, options.input_seed, options.tolerance, exact
        )
    stage = StagedArtifact(artifact_dir(options.out, source.name, target.key))
    try:
        exported = stage.dir / "model.so"
        compiled.executable.export_library(str(exported), fcompile=link)
        library = exported.rename(stage.dir / library_name(sha256_file(exported)))
        device_code = None if target.kind == "llvm" else devices.inspect_device_code(library, target.config)
        np.savez(stage.dir / PARAMS, **dict(zip(compiled.prepared_weight_names, weights)))
        onnx.save(source.model, str(stage.dir / SOURCE_ONNX))
        manifest = Manifest(
            format=FORMAT,
            graph=GraphRecord(
                source.name, source.origin, sha256_file(stage.dir / SOURCE_ONNX), source.latent_frames, source.seed,
                source.input_shapes,
            ),
            inputs=imported.inputs,
            outputs=imported.outputs,
            params=[TensorSpec(n, tuple(w.shape), str(w.dtype)) for n, w in zip(compiled.prepared_weight_names, weights)],
            target=TargetRecord(target.kind, target.key, target.config),
            lowering=options.lowering,
            versions=package_versions(),
            tuning=compiled.applied,
            files=stage.hash_files(),
            build_seconds=round(time.time() - started, 2),
            library=library.name,
            device_code=device_code,
            host_emulation=host_check,
        )
        missing = devices.missing_device(target.config)
        if missing is not None:
            manifest = dataclasses.replace(
                manifest, verification_pending=f"not verified at build time: {missing}; run `python -m "
                f"pipeline verify <artifact>` on {devices.runs_on(target.config)}",
            )
            log.warning("%s for %s is built but not verified: %s", source.name, target.key, missing)
            latency = None
        else:
            write_manifest(stage.dir, manifest)
            model = runtime.load(stage.dir, allow_unverified=True)
            log.info("verifying %s against onnxruntime", source.name)
            verification = check_model(model, options.input_seed, options.tolerance, options.float64_check)
            latency = model.time(seeded_inputs(model.inputs, options.input_seed), repeats=options.timing_repeats)
            del model
            manifest = dataclasses.replace(manifest, verification=verification)
        write_manifest(stage.dir, manifest)
        result = BuildResult(source.name, stage.dir, manifest, latency)
        result = dataclasses.replace(result, artifact=stage.commit(not result.failed))
    except BaseException:
        stage.discard()
        raise
    if result.failed and options.raise_on_mismatch:
        raise VerificationError(_mismatch(result, target.key))
    return result


def _mismatch(result: BuildResult, target_key: str) -> str:
    failures = []
    for where, check in result.failed_checks:
        worst = max(check.outputs, key=lambda o: o.max_rel_error)
        failures.append(
            f"{where}{worst.name} max abs error {worst.max_abs_error:.3e}, max rel {worst.max_rel_error:.3e} "
            f"(rtol {check.rtol:g}, atol {check.atol:g})"
        )
    return (
        f"{result.graph} for {target_key} disagrees with onnxruntime: {'; '.join(failures)}; the build is kept "
        f"for inspection in {result.artifact}"
    )


def build_many(graphs: list[str], options: BuildOptions) -> list[BuildResult]:
    """Build several named graphs with the same options (the default build: convt1..convt5)."""
    return [
        build(dataclasses.replace(options, selection=dataclasses.replace(options.selection, graph=name, onnx=None)))
        for name in graphs
    ]
