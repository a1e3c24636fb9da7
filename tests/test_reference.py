"""The numpy reference's own properties (its agreement with onnxruntime is checked per conformance case in test_lowering)."""

import numpy as np
from pipeline import reference


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
