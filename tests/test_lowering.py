"""The zero-waste ConvTranspose lowering against onnxruntime, for every attribute combination."""

import logging

import onnx
import pytest

from pipeline.build import BuildOptions, build
from pipeline.graphs import GraphSelection

from .convt_cases import CASES, case_model


@pytest.mark.parametrize("name", sorted(CASES))
def test_zero_waste_build_equals_onnxruntime(name, tmp_path, empty_schedules, caplog):
    path = tmp_path / f"{name}.onnx"
    onnx.save(case_model(name), path)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        result = build(BuildOptions(GraphSelection(onnx=path), out=tmp_path, schedules=empty_schedules, timing_repeats=1))
    assert result.passed, result.manifest.verification
    assert result.manifest.lowering == "zero-waste"
    assert "convt_gemm" in result.manifest.tuning.kernels  # the rewrite happened, not a fallback
    assert "zero-waste lowering: relax.nn.conv" in caplog.text


def test_stock_lowering_is_kept_on_request(tmp_path, empty_schedules):
    result = build(BuildOptions(
        GraphSelection(graph="convt5", config="tiny", latent_frames=1), out=tmp_path, schedules=empty_schedules,
        lowering="stock", timing_repeats=1,
    ))
    assert result.passed and result.manifest.lowering == "stock"
    assert not any("convt_" in k for k in result.manifest.tuning.kernels)
