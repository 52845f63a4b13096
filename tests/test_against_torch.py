"""The layer object, fftbp.Conv (forward then backward, spectra reused between the passes), and
large float32 kernels, against the float64 references of fftbp.testing.

Those references are checked against PyTorch once, in test_references.py; nothing here runs
torch. The functions on the option product are in test_passes.py.
"""

import numpy as np
import pytest

import fftbp
from fftbp.testing import (
    TOLERANCE,
    reference_conv,
    reference_input_grad,
    reference_weight_grad,
    relative_error,
)
from tests._cases import make_case, option_product

CASES = list(option_product())


@pytest.mark.parametrize("method", ["fft", "direct"])
@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_layer_object_matches_reference(case, method, rng):
    x, w, b, g, kw = make_case(*case, np.float64, rng)
    layer = fftbp.Conv(w, b, **kw, method=method)
    y = layer.forward(x)
    grads = layer.backward(g)
    assert relative_error(y, reference_conv(x, w, b, **kw)) <= 1e-11
    assert relative_error(grads.input, reference_input_grad(x.shape, w, g, **kw)) <= 1e-11
    assert relative_error(grads.weight, reference_weight_grad(x, w.shape, g, **kw)) <= 1e-11
    np.testing.assert_allclose(grads.bias, g.sum(axis=tuple(i for i in range(g.ndim) if i != 1)))


@pytest.mark.parametrize("method", ["fft", "direct"])
@pytest.mark.parametrize("k", [7, 15, 31])
def test_float32_large_kernels(k, method, rng):
    """'same' layers in float32, the layer's three passes and the function's forward pass:
    kernel sizes where the FFT sizes have factors 2, 3, 5 and 7, up to 31x31."""
    x = rng.standard_normal((2, 3, 40, 33)).astype(np.float32)
    w = rng.standard_normal((4, 3, k, k)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    g = rng.standard_normal((2, 4, 40, 33)).astype(np.float32)
    tol = TOLERANCE[np.dtype(np.float32)]
    layer = fftbp.Conv(w, b, padding="same", method=method)
    y = layer.forward(x)
    grads = layer.backward(g)
    assert y.dtype == grads.input.dtype == grads.weight.dtype == np.float32
    y_ref = reference_conv(x, w, b, padding="same")
    assert relative_error(y, y_ref) <= tol
    assert relative_error(fftbp.conv(x, w, b, padding="same", method=method), y_ref) <= tol
    assert relative_error(grads.input, reference_input_grad(x.shape, w, g, padding="same")) <= tol
    assert relative_error(grads.weight, reference_weight_grad(x, w.shape, g, padding="same")) <= tol
