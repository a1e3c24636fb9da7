"""Where a built artifact spends its time: each kernel's share of a call, measured on this machine.

    from pipeline.profile import ProfileOptions, profile_artifact, format_profile
    profile = profile_artifact(ProfileOptions(Path("artifacts/decoder/llvm-znver4-2c")))
    print(format_profile(profile))

The VM's calls are timed one by one (pipeline.runtime.Model.kernel_times) over `repeats` calls; each
kernel's row is its median over them. The sum of the rows is close to, not equal to, the call's own
latency (timed without the instrumentation, as `build` and `bench` time it): each launch is timed
from Python, and on a GPU the device is synchronized around each launch. The rows say which kernels
to look at; `bench` says how fast the whole call is.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .runtime import Timing, load
from .verify import seeded_inputs

# The VM's own functions (tensor allocation, shape checks), reported as one row.
VM_BUILTIN_PREFIX = "vm.builtin."
VM_BUILTINS_ROW = "(VM: tensor allocation, shape checks)"


@dataclass
class ProfileOptions:
    artifact: Path
    # Profiled calls (after a warm-up call); each kernel's time is the median over them.
    repeats: int = 10
    # The graph's inputs in order; None: inputs seeded as the build's verification seeds them.
    inputs: list[np.ndarray] | None = None


@dataclass(frozen=True)
class KernelTime:
    name: str
    # Launches per call (a kernel the graph uses twice, e.g. two equal convolutions, runs twice).
    launches: int
    median_ms: float
    # Of the sum of the rows.
    share: float
    # Whether a MetaSchedule record scheduled it (else our schedules, dlight or TVM's default).
    tuned: bool


@dataclass(frozen=True)
class Profile:
    artifact: Path
    target_key: str
    repeats: int
    # Slowest first.
    kernels: list[KernelTime]
    # The call as a whole, not instrumented.
    latency: Timing

    @property
    def kernels_ms(self) -> float:
        return sum(k.median_ms for k in self.kernels)

    def to_json(self) -> dict:
        return {
            "artifact": str(self.artifact), "target_key": self.target_key, "repeats": self.repeats,
            "latency": asdict(self.latency), "kernels_ms": self.kernels_ms,
            "kernels": [asdict(k) for k in self.kernels],
        }


def profile_artifact(options: ProfileOptions) -> Profile:
    """Time every kernel of the artifact in `options.artifact` on its device (which must be here)."""
    if options.repeats < 1:
        raise InputError(f"profile at least one call, not {options.repeats} (repeats)")
    model = load(options.artifact)
    inputs = options.inputs if options.inputs is not None else seeded_inputs(model.inputs)
    latency = model.time(inputs, repeats=options.repeats)
    calls = model.kernel_times(inputs, options.repeats)
    tuned = set(model.manifest.tuning.tuned)
    names = {name for call in calls for name in call}
    rows: dict[str, tuple[int, float]] = {}
    for name in names:
        row = VM_BUILTINS_ROW if name.startswith(VM_BUILTIN_PREFIX) else name
        launches = max(call.get(name, (0, 0.0))[0] for call in calls)
        median_ms = statistics.median(call.get(name, (0, 0.0))[1] for call in calls)
        before = rows.get(row, (0, 0.0))
        rows[row] = (before[0] + launches, before[1] + median_ms)
    total = sum(ms for _, ms in rows.values()) or 1.0
    kernels = sorted(
        (KernelTime(name, launches, ms, ms / total, name in tuned) for name, (launches, ms) in rows.items()),
        key=lambda k: -k.median_ms,
    )
    return Profile(options.artifact, model.manifest.target.key, options.repeats, kernels, latency)


def format_profile(profile: Profile, top: int | None = None) -> str:
    """A table, slowest kernel first (the first `top` of them, the rest summed in one row)."""
    shown = profile.kernels if top is None else profile.kernels[:top]
    lines = [
        f"{profile.artifact} ({profile.target_key}): median of {profile.repeats} calls per kernel",
        "",
        "| ms per call | share | cumulative | launches | tuned | kernel |",
        "|---:|---:|---:|---:|:-:|---|",
    ]
    cumulative = 0.0
    for kernel in shown:
        cumulative += kernel.share
        lines.append(
            f"| {kernel.median_ms:.3f} | {kernel.share:.1%} | {cumulative:.1%} | {kernel.launches} | "
            f"{'✓' if kernel.tuned else ''} | {kernel.name} |"
        )
    rest = profile.kernels[len(shown):]
    if rest:
        ms = sum(k.median_ms for k in rest)
        lines.append(f"| {ms:.3f} | {1 - cumulative:.1%} | 100.0% | {sum(k.launches for k in rest)} | | "
                     f"{len(rest)} more rows |")
    lines += [
        "",
        (
            f"sum of the rows: {profile.kernels_ms:.3f} ms; the call without instrumentation: "
            f"{profile.latency.median_ms:.3f} ms (median of {profile.latency.repeats})"
        ),
    ]
    return "\n".join(lines)


def write_json(profile: Profile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_json(), indent=2) + "\n")
