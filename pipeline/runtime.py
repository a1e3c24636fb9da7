"""Load a built artifact and run it: numpy in, numpy out.

    import pipeline.runtime
    model = pipeline.runtime.load("artifacts/convt1/llvm-znver4-2c")
    y = model(x)                      # x: np.ndarray shaped as model.inputs[0]
    model.manifest.verification       # how the build compared with onnxruntime

`load` refuses an artifact whose files differ from the manifest's sha256, that was built by another
TVM version, or whose build failed verification; calls refuse inputs of the wrong shape or dtype.
It needs nothing from the build: a fresh process with only this package and TVM installed can load it.

A Model may be called from several threads: its calls run one at a time, since one TVM virtual
machine called concurrently corrupts its state or crashes the process (measured: wrong-type
errors, segfaults), and each call already runs its CPU kernels on every core. Load one Model per
thread to run calls side by side. A process forked after its parent ran a model (multiprocessing's
"fork", a pre-forking server) can call models too (cpu_threads.on_kernel_thread); forking while
another thread is inside a call is not supported (the child inherits a half-run VM).
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from .artifact import PARAMS, Manifest, check_files, read_manifest
from .cpu_threads import check_tvm_threads, on_kernel_thread
from .errors import ArtifactError, ArtifactVersionError, InputError, UnverifiedArtifactError
from .devices import require_device
from .importer import TensorSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """Per-call latency over `repeats` timed repeats, each a batch of calls at least `min_repeat_ms`
    long, averaged per call (by TVM's time_evaluator for our models, by time_calls otherwise)."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int


def wall_clock_ms(call: Callable[[], object], calls: int) -> float:
    began = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - began) * 1e3


def time_calls(
    call: Callable[[], object],
    repeats: int,
    min_repeat_ms: float = 200,
    elapsed_ms: Callable[[Callable[[], object], int], float] = wall_clock_ms,
) -> Timing:
    """Per-call latency of `call`, for code TVM's time_evaluator cannot time (the baselines): three
    warm-up calls, then `repeats` batches of as many calls as make min_repeat_ms, each timed by
    `elapsed_ms(call, calls)` (the wall clock here; device events for a GPU)."""
    for _ in range(3):
        call()
    calls = max(1, math.ceil(min_repeat_ms / max(elapsed_ms(call, 1), 1e-3)))
    per_call = [elapsed_ms(call, calls) / calls for _ in range(repeats)]
    return Timing(statistics.median(per_call), min(per_call), max(per_call), repeats)


def numpy_outputs(result, count: int) -> list[np.ndarray]:
    """A Relax VM's return value (one tensor, or a tuple of `count`) as a list of numpy arrays."""
    results = list(result) if count > 1 else [result]
    return [r.numpy() for r in results]


class Model:
    """A loaded artifact. Call it with the graph inputs in order (or by name)."""

    def __init__(self, path: Path, manifest: Manifest, device: str) -> None:
        self.path = path
        self.manifest = manifest
        self.device = tvm.device(device)
        try:
            self._library = tvm.runtime.load_module(str(path / manifest.library))
            self._vm = relax.VirtualMachine(self._library, self.device)
        except Exception as exc:  # TVM raises its own error types for unloadable libraries
            raise ArtifactError(f"cannot load {path / manifest.library} on {device}: {exc}; rebuild the artifact") from exc
        with np.load(path / PARAMS) as stored:
            self._params = [tvm.runtime.tensor(stored[spec.name], self.device) for spec in manifest.params]
        # The host threads that run CPU kernels (a GPU artifact runs on the GPU, its host code on one).
        self.threads = check_tvm_threads() if device == "cpu" else 1
        scheduled_for = manifest.target.config.get("num-cores") if device == "cpu" else None
        if scheduled_for is not None and self.threads > int(scheduled_for):
            # The GEMMs size their parallel loops and row blocks for the target's cores.
            log.warning(
                "%s was scheduled for %s cores and runs here on %d threads, so its kernels may leave "
                "some of them idle: build it on this machine (`--target cpu`) to use them all",
                path, scheduled_for, self.threads,
            )
        # Held while the VM runs and its outputs are copied out (see the module docstring).
        self._vm_lock = threading.Lock()

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.manifest.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.manifest.outputs

    def _device_inputs(self, arrays: list[np.ndarray]) -> list[tvm.runtime.Tensor]:
        if len(arrays) != len(self.inputs):
            names = ", ".join(s.describe() for s in self.inputs)
            raise InputError(f"the model takes {len(self.inputs)} input(s) ({names}), got {len(arrays)}")
        tensors = []
        for spec, array in zip(self.inputs, arrays):
            array = np.asarray(array)
            if array.dtype != np.dtype(spec.dtype):
                raise InputError(
                    f"input {spec.name!r} must be {spec.dtype}, got {array.dtype}: convert it with "
                    f".astype(np.{spec.dtype})"
                )
            if tuple(array.shape) != tuple(spec.shape):
                raise InputError(
                    f"input {spec.name!r} must have shape {list(spec.shape)}, got {list(array.shape)}; "
                    f"this artifact is compiled for that shape: rebuild it for another (e.g. --latent-frames), "
                    f"or run a longer sequence in chunks (run_chunked, `run --chunk-overlap`)"
                )
            tensors.append(tvm.runtime.tensor(np.ascontiguousarray(array), self.device))
        return tensors

    def _ordered(self, args: tuple, named: dict) -> list[np.ndarray]:
        if not named:
            return list(args)
        if args:
            raise InputError("pass the inputs either all in order or all by name, not both")
        unknown = set(named) - {s.name for s in self.inputs}
        if unknown:
            raise InputError(f"unknown input(s) {sorted(unknown)}; the model takes {[s.name for s in self.inputs]}")
        missing = [s.name for s in self.inputs if s.name not in named]
        if missing:
            raise InputError(f"missing input(s) {missing}")
        return [named[s.name] for s in self.inputs]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run on a list of inputs in graph order; returns every output as numpy."""
        tensors = self._device_inputs(inputs)
        with self._vm_lock:
            return on_kernel_thread(lambda: numpy_outputs(self._vm["main"](*tensors, *self._params), len(self.outputs)))

    def __call__(self, *args: np.ndarray, **named: np.ndarray):
        """One output comes back as an array, several as a tuple of arrays."""
        outputs = self.run(self._ordered(args, named))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def time(self, inputs: list[np.ndarray], repeats: int = 10, min_repeat_ms: int = 200) -> Timing:
        """Latency of one call, timed by TVM's time_evaluator on the device."""
        args = [*self._device_inputs(inputs), *self._params]
        evaluator = self._vm.time_evaluator("main", self.device, number=1, repeat=repeats, min_repeat_ms=min_repeat_ms)
        with self._vm_lock:
            result = on_kernel_thread(lambda: evaluator(*args))
        per_call = [t * 1e3 for t in result.results]
        return Timing(statistics.median(per_call), min(per_call), max(per_call), repeats)

    def kernel_times(self, inputs: list[np.ndarray], calls: int) -> list[dict[str, tuple[int, float]]]:
        """For each of `calls` calls (after one warm-up call), what the VM called in it: function
        symbol -> (launches, milliseconds summed over them), timed around each launch. The device is
        synchronized before and after every launch, so GPU kernels do not overlap and each time
        includes its launch. Runs on a VM of its own: this model's calls are not instrumented."""
        args = [*self._device_inputs(inputs), *self._params]
        vm = relax.VirtualMachine(self._library, self.device)
        started: dict[str, float] = {}
        current: dict[str, tuple[int, float]] = {}

        def instrument(_func, symbol: str, before_run: bool, _ret, *_args) -> int:
            self.device.sync()
            now = time.perf_counter()
            if before_run:
                started[symbol] = now
            else:
                launches, ms = current.get(symbol, (0, 0.0))
                current[symbol] = (launches + 1, ms + (now - started.pop(symbol)) * 1e3)
            return int(relax.VMInstrumentReturnKind.NO_OP)

        vm.set_instrument(instrument)
        per_call = []

        def timed_calls():
            vm["main"](*args)
            for _ in range(calls):
                current.clear()
                vm["main"](*args)
                per_call.append(dict(current))

        with self._vm_lock:
            on_kernel_thread(timed_calls)
        return per_call


def chunk_starts(length: int, chunk: int, overlap: int) -> list[int]:
    """Where each chunk of a sequence of `length` frames starts: every chunk − overlap frames, and
    the last one ends at the end (as stable-audio-tools' chunked decode places them)."""
    starts = list(range(0, length - chunk + 1, chunk - overlap))
    if starts[-1] != length - chunk:
        starts.append(length - chunk)
    return starts


def run_chunked(model: Model, x: np.ndarray, overlap: int) -> np.ndarray:
    """Run a one-input, one-output sequence model compiled for chunks of T frames (the last axis)
    on a sequence of any length L >= T, e.g. the decoder built for T = 128 on a whole song's latents.

    Chunks of T frames start every T - overlap frames, the last ending at L. Where two chunks
    overlap, the output is cut in the middle of the overlap, so every output kept lies at least
    overlap // 2 frames inside its chunk and never sees the zero padding at a chunk's edge. The
    result therefore equals one run over the whole sequence (to fp32 rounding) when overlap // 2
    is at least the model's receptive radius: 9.3 latent frames for the Oobleck decoder, whose
    chunked decode in stable-audio-tools uses overlap 32."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InputError(
            f"run_chunked takes a model with one input and one output; this one has {len(model.inputs)} and "
            f"{len(model.outputs)}: call it on whole inputs instead"
        )
    (spec,), (out_spec,) = model.inputs, model.outputs
    x = np.asarray(x)
    chunk = spec.shape[-1]
    if x.shape[:-1] != tuple(spec.shape[:-1]):
        raise InputError(
            f"input {spec.name!r} must have shape {list(spec.shape[:-1])} + [any length >= {chunk}], "
            f"got {list(x.shape)}"
        )
    length = x.shape[-1]
    if length < chunk:
        raise InputError(
            f"the input has {length} frames, fewer than the artifact's chunk of {chunk}: build the artifact "
            f"for {length} frames (--latent-frames {length})"
        )
    if not 0 <= overlap < chunk:
        raise InputError(f"the chunk overlap must be at least 0 and below the chunk of {chunk} frames, got {overlap}")
    rate, remainder = divmod(out_spec.shape[-1], chunk)
    if remainder or tuple(out_spec.shape[:-2]) != tuple(spec.shape[:-2]):
        raise InputError(
            f"this model maps {list(spec.shape)} to {list(out_spec.shape)}: its output is not the input's "
            f"frames times a whole rate, so it cannot run in chunks"
        )
    starts = chunk_starts(length, chunk, overlap)
    y = np.empty((*out_spec.shape[:-1], length * rate), dtype=out_spec.dtype)
    for i, start in enumerate(starts):
        keep_from = 0 if i == 0 else (starts[i - 1] + chunk + start) // 2
        keep_to = length if i == len(starts) - 1 else (start + chunk + starts[i + 1]) // 2
        (piece,) = model.run([x[..., start:start + chunk]])
        y[..., keep_from * rate:keep_to * rate] = piece[..., (keep_from - start) * rate:(keep_to - start) * rate]
        log.info("chunk %d/%d: frames %d-%d", i + 1, len(starts), start, start + chunk)
    return y


def load(path: Path | str, device: str | None = None, *, allow_unverified: bool = False) -> Model:
    """Load the artifact in `path` (a folder made by `pipeline.build.build`) on its target's
    device ("cpu" or "cuda"; giving another is an error). A GPU artifact needs that GPU here."""
    path = Path(path)
    manifest = read_manifest(path)
    built_with = manifest.versions.get("apache-tvm")
    installed = tvm.__version__
    if built_with != installed:
        raise ArtifactVersionError(
            f"{path} was built with TVM {built_with}, this process has TVM {installed}: "
            f"rebuild the artifact with this TVM, or install apache-tvm=={built_with}"
        )
    expected_device = "cpu" if manifest.target.kind == "llvm" else manifest.target.kind
    device = device or expected_device
    if device != expected_device:
        raise ArtifactError(
            f"{path} is built for target {manifest.target.key} and runs on device {expected_device!r}, "
            f"not {device!r}"
        )
    check_files(path, manifest)
    if not allow_unverified and manifest.host_emulation is not None and not manifest.host_emulation.passed:
        raise UnverifiedArtifactError(
            f"{path} failed its check on the build machine: its GPU kernels, run on the CPU there, "
            f"disagreed with onnxruntime (see host_emulation in its manifest.json): a GPU schedule is wrong; "
            f"pass allow_unverified=True only to inspect it"
        )
    require_device(manifest.target.config, str(path))
    if not allow_unverified and manifest.verification is None and manifest.verification_pending:
        raise UnverifiedArtifactError(
            f"{path} has not been verified against onnxruntime yet ({manifest.verification_pending})"
        )
    if not allow_unverified and (manifest.verification is None or not manifest.verification.passed):
        raise UnverifiedArtifactError(
            f"{path} failed verification against onnxruntime at build time (see verification in its "
            f"manifest.json); pass allow_unverified=True only to inspect it"
        )
    return Model(path, manifest, device)
