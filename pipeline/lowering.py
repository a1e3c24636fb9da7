"""Relax -> fused TIR kernels, in named phases. Tuning and build both go through here, so the
kernels MetaSchedule tunes are structurally the kernels the build later looks up.

Work that depends on the weights alone (our packed ConvTranspose weights, the importer's bias
reshapes) is lifted out of `main` into a separate weight-preparation module, which the build runs
once on the host; `main` then takes the prepared weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax

from .errors import BuildError
from .passes.conv_gemm import ConvToGemm
from .passes.convtranspose_gemm import ConvTransposeToGemm
from .passes.depthwise_conv import DepthwiseConv
from .passes.fast_math import FastMath
from .passes.matmul_gemm import MatmulToGemm
from .passes.output_reshape_views import OutputReshapeViews
from .passes.polynomial_sine import PolynomialSine
from .target import TargetSpec

# "zero-waste": our GEMM + col2im rewrite; "stock": TVM's zero-dilated dense convolution.
LOWERINGS = ("zero-waste", "stock")
DEFAULT_LOWERING = "zero-waste"


def lowering_phases(convtranspose: str, *, cpu: bool) -> list[tvm.transform.Pass]:
    """Each phase is a named Sequential, so pass traces and errors say where they came from. On a
    `cpu` target the GEMMs compute whole vectors of positions (passes/vector_positions.py)."""
    if convtranspose not in LOWERINGS:
        raise BuildError(f"unknown ConvTranspose lowering {convtranspose!r}: choose one of {LOWERINGS}")
    return [
        tvm.transform.Sequential(
            [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()],
            name="canonicalize",
        ),
        tvm.transform.Sequential(
            [ConvTransposeToGemm(pad_positions=cpu)] if convtranspose == "zero-waste" else [],
            name="convtranspose",
        ),
        tvm.transform.Sequential([DepthwiseConv(), ConvToGemm(pad_positions=cpu)], name="conv"),
        tvm.transform.Sequential([MatmulToGemm(pad_positions=cpu)], name="matmul"),
        tvm.transform.Sequential([PolynomialSine(), FastMath()], name="elementwise"),
        tvm.transform.Sequential([relax.transform.LiftTransformParams()], name="lift-weight-preparation"),
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
        tvm.transform.Sequential([OutputReshapeViews()], name="output-views"),
    ]


ENTRY = "main"
# The name LiftTransformParams gives the function it lifts out of ENTRY.
WEIGHT_PREPARATION = f"{ENTRY}_transform_params"


@dataclass
class LoweredGraph:
    """`main` takes the graph inputs, then the prepared weights that `weight_preparation`'s
    function (WEIGHT_PREPARATION, one tuple of the imported weights in) returns."""

    main: tvm.IRModule
    weight_preparation: tvm.IRModule


def _only(mod: tvm.IRModule, entry: str) -> tvm.IRModule:
    """`entry` and the kernels it calls."""
    kept = tvm.IRModule(
        {gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc) or gv.name_hint == entry},
        attrs=mod.attrs,
    )
    return relax.transform.DeadCodeElimination([entry])(kept)


def lower(mod: tvm.IRModule, target: TargetSpec, convtranspose: str = DEFAULT_LOWERING) -> LoweredGraph:
    """Relax graph -> Relax calling fused, unscheduled TIR kernels, and its weight preparation."""
    with target.tvm_target():
        lowered = tvm.transform.Sequential(lowering_phases(convtranspose, cpu=target.kind == "llvm"), name="lowering")(mod)
    return LoweredGraph(_only(lowered, ENTRY), _only(lowered, WEIGHT_PREPARATION))


def kernel_names(mod: tvm.IRModule) -> list[str]:
    return sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
