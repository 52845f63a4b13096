"""All three passes, both methods, on the full option product, against the float64 reference."""

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
@pytest.mark.parametrize("method", ["fft", "direct"])
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
@pytest.mark.parametrize("case", [c for _, c in CASES][::3], ids=[i for i, _ in CASES][::3])
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
@pytest.mark.parametrize("case", [c for _, c in CASES][::5], ids=[i for i, _ in CASES][::5])
def test_adjoint_identities(case, method, rng):
    """<conv(x,w), g> = <x, input_grad(g)> = <w, weight_grad(x, g)>, no reference needed."""
    x, w, _, g, kw = make_case(*case, np.float64, rng)
    lhs = np.vdot(fftbp.conv(x, w, **kw, method=method), g)
    dx = fftbp.conv_input_grad(x.shape, w, g, **kw, method=method)
    dw = fftbp.conv_weight_grad(x, w.shape, g, **kw, method=method)
    assert np.vdot(x, dx) == pytest.approx(lhs, rel=1e-11, abs=1e-11)
    assert np.vdot(w, dw) == pytest.approx(lhs, rel=1e-11, abs=1e-11)


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


def test_auto_method_runs_and_matches(rng):
    x, w, b, _, kw = make_case(2, 1, "same", 1, "dense", np.float32, rng)
    y = fftbp.conv(x, w, b, **kw)  # method="auto"
    assert relative_error(y, reference_conv(x, w, b, **kw)) <= 1e-5


def test_larger_layers_both_methods(rng):
    """Kernel sizes where FFT sizes have factors 2, 3, 5 and 7, and a 'same' 31x31 layer."""
    x = rng.standard_normal((2, 3, 40, 33)).astype(np.float32)
    for k in (7, 15, 31):
        w = rng.standard_normal((4, 3, k, k)).astype(np.float32)
        ref = reference_conv(x, w, padding="same")
        for method in ("fft", "direct"):
            assert relative_error(fftbp.conv(x, w, padding="same", method=method), ref) <= 1e-5
