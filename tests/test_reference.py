"""The numpy reference is itself checked against onnxruntime over ConvTranspose attributes."""

import numpy as np
import onnxruntime as ort
import pytest
from pipeline import reference

from .convt_cases import CASES, case_arrays, case_model


@pytest.mark.parametrize("name", sorted(CASES))
def test_scatter_reference_matches_onnxruntime(name):
    x, w, b, attrs = case_arrays(name)
    session = ort.InferenceSession(case_model(name).SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x})
    ours = reference.conv_transpose(x, w, b, **attrs)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_conv_transpose_is_the_adjoint_of_conv():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 2, 4))  # conv weight (out=3, in=2, k=4)
    x = rng.standard_normal((1, 2, 17))
    conv_x = reference.conv(x, w, strides=[2], pads=[1, 1])
    y = rng.standard_normal(conv_x.shape)
    # conv output length is (17 + 2 - 4) // 2 + 1 = 8; output_padding 1 brings 8 back to 17
    convt_y = reference.conv_transpose(y, w, strides=[2], pads=[1, 1], output_padding=[1])
    assert convt_y.shape == x.shape
    np.testing.assert_allclose(np.vdot(conv_x, y), np.vdot(x, convt_y), rtol=1e-10)
