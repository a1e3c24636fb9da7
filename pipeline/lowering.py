"""Relax -> fused TIR kernels, in named phases. Tuning and build both go through here, so the
kernels MetaSchedule tunes are structurally the kernels the build later looks up."""

from __future__ import annotations

import tvm
from tvm import relax

from .target import TargetSpec


def lowering_phases() -> list[tvm.transform.Pass]:
    """Each phase is a named Sequential, so pass traces and errors say where they came from."""
    return [
        tvm.transform.Sequential(
            [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()],
            name="canonicalize",
        ),
        tvm.transform.Sequential(
            [
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
            ],
            name="legalize",
        ),
        tvm.transform.Sequential(
            [relax.transform.FuseOps(), relax.transform.FuseTIR()],
            name="fuse",
        ),
    ]


def lower(mod: tvm.IRModule, target: TargetSpec) -> tvm.IRModule:
    """Relax graph -> Relax calling fused, unscheduled TIR kernels."""
    with target.tvm_target():
        return tvm.transform.Sequential(lowering_phases(), name="lowering")(mod)


def kernel_names(mod: tvm.IRModule) -> list[str]:
    return sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
