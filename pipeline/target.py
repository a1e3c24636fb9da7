"""Compilation targets: what the user names (`cpu`, a JSON dict) and the key records are filed under."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm.target import codegen

from .cpu_threads import physical_cores
from .errors import TargetError


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target. `key` names the folder under schedules/ and artifacts/<graph>/."""

    kind: str
    config: dict
    key: str

    def tvm_target(self) -> tvm.target.Target:
        return tvm.target.Target(self.config)

    @property
    def device(self) -> str:
        return "cpu" if self.kind == "llvm" else self.kind

    @property
    def arch(self) -> str | None:
        """The GPU architecture (`sm_90`) of a CUDA target."""
        return self.config.get("arch")


def host_cores() -> int:
    """Physical cores this process may use: the threads our CPU kernels run on (cpu_threads)."""
    return physical_cores()


# LLVM names the host CPU from its model number, and a hypervisor can hide instruction sets that
# model has (AVX-512, say): code for the model would then die of SIGILL. Linux lists what the CPU
# really runs; these flags have the same names in LLVM.
CPUINFO = Path("/proc/cpuinfo")
CHECKED_FLAGS = ("avx", "avx2", "fma", "avx512f")


def _cpuinfo_field(name: str) -> str | None:
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.partition(":")[0].strip() == name:
            return line.partition(":")[2].strip()
    return None


def cpuinfo_flags() -> set[str] | None:
    """The instruction-set flags Linux reports for this CPU, or None where it reports none."""
    flags = _cpuinfo_field("flags")
    return None if flags is None else set(flags.split())


def cpu_model_name() -> str | None:
    """The CPU's marketing name as Linux reports it ("AMD EPYC 9B45"; a VM may shorten it)."""
    return _cpuinfo_field("model name")


def hidden_features(mcpu: str, flags: set[str] | None) -> list[str]:
    """`-feature` for each checked instruction set the CPU model has and the flags lack."""
    if flags is None:
        return []
    model = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
    return [f"-{feature}" for feature in CHECKED_FLAGS if feature in model and feature not in flags]


def host_cpu_target(num_cores: int | None = None) -> TargetSpec:
    """LLVM target for this machine: its CPU as LLVM names it, less the instruction sets this
    machine hides, and its usable cores."""
    mcpu = codegen.llvm_get_system_cpu()
    cores = num_cores or host_cores()
    config = {"kind": "llvm", "mcpu": mcpu, "num-cores": cores}
    hidden = hidden_features(mcpu, cpuinfo_flags())
    if hidden:
        config["mattr"] = hidden
    return TargetSpec("llvm", config, _key_for(config))


DEFAULT_CUDA_ARCH = "sm_90"  # H100 and H200


def cuda_target(arch: str = DEFAULT_CUDA_ARCH) -> TargetSpec:
    """CUDA for `arch`. Its host code (the Relax VM driving the kernels) is built for generic
    x86-64, not this machine's CPU: a GPU artifact is made to run on another machine."""
    return resolve_target({"kind": "cuda", "arch": arch})


def _key_for(config: dict) -> str:
    if config["kind"] == "llvm":
        cores = config.get("num-cores", host_cores())
        features = "".join(config.get("mattr", []))
        return f"llvm-{config.get('mcpu', 'generic')}{features}-{cores}c"
    return "-".join(str(config[k]) for k in ("kind", "arch") if k in config)


def resolve_target(name: str | dict | TargetSpec = "cpu") -> TargetSpec:
    """`cpu`/`llvm` (the host), `cuda` (sm_90), or a TVM target dict (as a dict or a JSON string)."""
    if isinstance(name, TargetSpec):
        return name
    if isinstance(name, str) and name in ("cpu", "llvm", "host"):
        return host_cpu_target()
    if isinstance(name, str) and name == "cuda":
        return cuda_target()
    if isinstance(name, str):
        try:
            config = json.loads(name)
        except json.JSONDecodeError:
            raise TargetError(
                f"unknown target {name!r}: use 'cpu' for this machine, or a TVM target dict as JSON, "
                'e.g. \'{"kind": "llvm", "mcpu": "znver4", "num-cores": 2}\''
            ) from None
    else:
        config = dict(name)
    if not isinstance(config, dict) or "kind" not in config:
        raise TargetError(f"target {name!r} must be a dict with a 'kind' key")
    if config["kind"] == "llvm":
        config.setdefault("num-cores", host_cores())
    elif config["kind"] == "cuda":
        arch = config.setdefault("arch", DEFAULT_CUDA_ARCH)
        if not (isinstance(arch, str) and arch.startswith("sm_") and arch[3:].rstrip("af").isdigit()):
            raise TargetError(f"CUDA arch {arch!r} is not of the form sm_<major><minor>, e.g. sm_90 or sm_80")
        config.setdefault("host", {"kind": "llvm"})
        # MetaSchedule's GPU rules read these, and TVM fills them in only when it can query a GPU.
        # Every architecture since sm_20 allows 1024 threads and 48 KiB of static shared memory per block.
        config.setdefault("max_threads_per_block", 1024)
        config.setdefault("max_shared_memory_per_block", 48 * 1024)
    else:
        raise TargetError(f"target kind {config['kind']!r} is not supported; use 'cpu' (llvm) or 'cuda'")
    try:
        tvm.target.Target(config)
    except Exception as exc:  # TVM raises its own error types for bad attributes
        raise TargetError(f"TVM rejects target {config}: {exc}") from exc
    return TargetSpec(config["kind"], config, _key_for(config))
