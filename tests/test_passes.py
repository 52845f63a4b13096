"""The functions: all three passes, every method (fft, direct, auto) and dtype, on the full
option product, against the float64 references (test_references.py checks those against torch
and their adjoint identities, which fftbp's passes then meet within the same tolerance).

The layer object (fftbp.Conv) and large float32 kernels are in test_against_torch.py; tiled and
reduced routes on the option product in test_planner.py.
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", ["fft", "direct", "auto"])
@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_three_passes_match_reference(case, method, dtype, rng):
    x, w, b, g, kw = make_case(*case, dtype, rng)
    tol = TOLERANCE[np.dtype(dtype)]
    y = fftbp.conv(x, w, b, **kw, method=method)
    dx = fftbp.conv_input_grad(x.shape, w, g, **kw, method=method)
    dw = fftbp.conv_weight_grad(x, w.shape, g, **kw, method=method)
    assert y.dtype == dx.dtype == dw.dtype == np.dtype(dtype)
    assert relative_error(y, reference_conv(x, w, b, **kw)) <= tol
    assert relative_error(dx, reference_input_grad(x.shape, w, g, **kw)) <= tol
    assert relative_error(dw, reference_weight_grad(x, w.shape, g, **kw)) <= tol


@pytest.mark.parametrize("method", ["fft", "direct"])
@pytest.mark.parametrize("grouping", ["dense", "grouped", "depthwise_x2"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_one_sample(nd, grouping, method, rng):
    """Batch 1: the FFT weight gradient's per-frequency product is an outer product there."""
    x, w, b, g, kw = make_case(nd, 1, "pairs", 1, grouping, np.float64, rng, batch=1)
    assert (
        relative_error(fftbp.conv(x, w, b, **kw, method=method), reference_conv(x, w, b, **kw))
        <= 1e-11
    )
    dx = fftbp.conv_input_grad(x.shape, w, g, **kw, method=method)
    dw = fftbp.conv_weight_grad(x, w.shape, g, **kw, method=method)
    assert relative_error(dx, reference_input_grad(x.shape, w, g, **kw)) <= 1e-11
    assert relative_error(dw, reference_weight_grad(x, w.shape, g, **kw)) <= 1e-11


@pytest.mark.parametrize("method", ["fft", "direct"])
def test_finite_differences(method, rng):
    """Central differences of L = <conv(x, w), g> in a few random directions."""
    x, w, b, g, kw = make_case(2, 2, "pairs", 2, "grouped", np.float64, rng)

    def loss(xx, ww):
        return float(np.vdot(fftbp.conv(xx, ww, b, **kw, method=method), g))

    dx = fftbp.conv_input_grad(x.shape, w, g, **kw, method=method)
    dw = fftbp.conv_weight_grad(x, w.shape, g, **kw, method=method)
    eps = 1e-6
    for _ in range(3):
        vx, vw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
        fd_x = (loss(x + eps * vx, w) - loss(x - eps * vx, w)) / (2 * eps)
        fd_w = (loss(x, w + eps * vw) - loss(x, w - eps * vw)) / (2 * eps)
        assert fd_x == pytest.approx(np.vdot(dx, vx), rel=1e-6)
        assert fd_w == pytest.approx(np.vdot(dw, vw), rel=1e-6)
