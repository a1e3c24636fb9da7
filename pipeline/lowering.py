"""Relax -> fused TIR kernels, in named phases. Tuning and build both go through here, so the
kernels MetaSchedule tunes are structurally the kernels the build later looks up."""

from __future__ import annotations

import tvm
from tvm import relax

from .errors import BuildError
from .passes.convtranspose_gemm import ConvTransposeToGemm
from .target import TargetSpec

# "zero-waste": our GEMM + col2im rewrite; "stock": TVM's zero-dilated dense convolution.
LOWERINGS = ("zero-waste", "stock")
DEFAULT_LOWERING = "zero-waste"


def lowering_phases(convtranspose: str = DEFAULT_LOWERING) -> list[tvm.transform.Pass]:
    """Each phase is a named Sequential, so pass traces and errors say where they came from."""
    if convtranspose not in LOWERINGS:
        raise BuildError(f"unknown ConvTranspose lowering {convtranspose!r}: choose one of {LOWERINGS}")
    return [
        tvm.transform.Sequential(
            [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()],
            name="canonicalize",
        ),
        tvm.transform.Sequential(
            [ConvTransposeToGemm()] if convtranspose == "zero-waste" else [],
            name="convtranspose",
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


def lower(mod: tvm.IRModule, target: TargetSpec, convtranspose: str = DEFAULT_LOWERING) -> tvm.IRModule:
    """Relax graph -> Relax calling fused, unscheduled TIR kernels."""
    with target.tvm_target():
        return tvm.transform.Sequential(lowering_phases(convtranspose), name="lowering")(mod)


def kernel_names(mod: tvm.IRModule) -> list[str]:
    return sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
