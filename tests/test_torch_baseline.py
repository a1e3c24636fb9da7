"""The PyTorch baseline runs our ONNX graphs op by op: it must compute what onnxruntime computes."""

import numpy as np
import pytest

from pipeline.conformance import case_model, load_cases
from pipeline.errors import TargetError, UnsupportedModelError
from pipeline.graphs import load_config, make_graph
from pipeline.importer import graph_inputs
from pipeline.verify import onnxruntime_outputs, seeded_inputs

pytest.importorskip("torch", reason="the PyTorch baseline is optional: pip install -e '.[torch]'")
import torch  # noqa: E402 - skipped above where absent

from pipeline.torch_baseline import TorchGraph, matmul_peak_gflops  # noqa: E402 - needs torch


def _assert_agrees_with_onnxruntime(model):
    specs = graph_inputs(model)
    inputs = seeded_inputs(specs)
    expected = onnxruntime_outputs(model, {s.name: x for s, x in zip(specs, inputs)})
    actual = TorchGraph(model, "cpu").run(inputs)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-4 * np.abs(e).max())


def test_decoder_matches_onnxruntime():
    _assert_agrees_with_onnxruntime(make_graph("decoder", load_config("tiny"), latent_frames=2).model)


@pytest.mark.parametrize(
    "case",
    [c for c in load_cases() if c.expect != "unsupported" and not {"output_shape", "auto_pad"} & set(c.attrs)],
    ids=lambda c: c.name,
)
def test_convtranspose_cases_match_onnxruntime(case):
    _assert_agrees_with_onnxruntime(case_model(case))


@pytest.mark.parametrize("attribute", ["output_shape", "auto_pad"])
def test_attributes_it_cannot_honour_are_refused(attribute):
    case = next(c for c in load_cases() if attribute in c.attrs and c.expect != "unsupported")
    with pytest.raises(UnsupportedModelError, match=attribute):
        TorchGraph(case_model(case), "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch has no CUDA device")
def test_cuda_without_a_cuda_torch_is_a_clear_error():
    with pytest.raises(TargetError, match="CUDA GPU and a CUDA build of torch"):
        matmul_peak_gflops("cuda")
