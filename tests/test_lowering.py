"""Every case of the ConvTranspose conformance table (graphs/), built by our pipeline, against
onnxruntime and the numpy scatter reference; refusals must be our own error naming the attribute."""

import logging

import numpy as np
import onnxruntime as ort
import pytest

from pipeline import reference
from pipeline.build import build, BuildOptions
from pipeline.conformance import ConformanceOptions, case_model, case_weights, check_case, load_cases
from pipeline.graphs import GraphSelection
from pipeline.target import resolve_target

CASES = {case.name: case for case in load_cases()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_numpy_reference_matches_onnxruntime(name):
    case = CASES[name]
    x = np.random.default_rng(3).standard_normal(case.x_shape).astype(np.float32)
    w, bias = case_weights(case)
    session = ort.InferenceSession(case_model(case).SerializeToString(), providers=["CPUExecutionProvider"])
    try:
        (expected,) = session.run(None, {"x": x})
    except Exception:  # onnxruntime refuses some cases we also refuse; nothing to compare then
        assert case.expect == "unsupported"
        return
    ours = reference.conv_transpose(x, w, bias, **case.attrs)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_our_build_of_every_case(name, tmp_path, empty_schedules, caplog):
    case = CASES[name]
    with caplog.at_level(logging.DEBUG, logger="pipeline"):
        result = check_case(case, ConformanceOptions(out=tmp_path, schedules=empty_schedules), resolve_target("cpu"))
    assert result.status == case.expect, result
    if case.expect == "unsupported":
        assert "output_padding" in result.message and ("output_shape" in result.message) == ("output_shape" in case.attrs)
    else:
        assert result.lowering == "zero-waste"  # the rewrite happened, not a fallback
        assert "zero-waste lowering: relax.nn.conv" in caplog.text


def test_stock_lowering_is_kept_on_request(tmp_path, empty_schedules):
    result = build(BuildOptions(
        GraphSelection(graph="convt5", config="tiny", latent_frames=1), out=tmp_path, schedules=empty_schedules,
        lowering="stock", timing_repeats=1,
    ))
    assert result.passed and result.manifest.lowering == "stock"
    assert not any("convt_" in k for k in result.manifest.tuning.kernels)
