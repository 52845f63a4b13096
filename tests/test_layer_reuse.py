"""Cross-pass reuse of spectra in Conv: counted transforms, never a stale spectrum."""

import numpy as np
import pytest

import fftbp
from fftbp.fft import plan_cache_info
from fftbp.testing import (
    reference_conv,
    reference_input_grad,
    reference_weight_grad,
    relative_error,
)


def _counts():
    info = plan_cache_info()
    return info["forward_maps"], info["inverse_maps"]


@pytest.mark.parametrize(("c", "f", "groups"), [(3, 4, 1), (4, 4, 2), (4, 4, 4), (3, 6, 3)])
def test_one_training_step_transforms_each_array_once(c, f, groups, rng):
    n = 2
    x = rng.standard_normal((n, c, 16, 16))
    w = rng.standard_normal((f, c // groups, 5, 5))
    g = rng.standard_normal((n, f, 16, 16))
    layer = fftbp.Conv(w, padding=2, groups=groups, method="fft")
    f0, i0 = _counts()
    layer.forward(x)
    layer.backward(g)
    f1, i1 = _counts()
    weight_maps = f * (c // groups)
    # forward transforms: x once, w once, grad_output once (not 2x or 3x)
    assert f1 - f0 == n * c + weight_maps + n * f
    # inverse transforms: one per output map of each pass
    assert i1 - i0 == n * f + n * c + weight_maps
    # a second forward with the same weight reuses the weight spectrum
    layer.forward(x)
    f2, _ = _counts()
    assert f2 - f1 == n * c


@pytest.mark.parametrize("groups", [1, 3])
def test_weight_changes_are_never_served_a_stale_spectrum(groups, rng):
    x = rng.standard_normal((2, 3, 12, 12))
    w = rng.standard_normal((3, 3 // groups, 5, 5))
    layer = fftbp.Conv(w, padding=2, groups=groups, method="fft")
    layer.forward(x)
    g = rng.standard_normal((2, 3, 12, 12))
    grads = layer.backward(g)
    # in-place update, as numpy training loops do
    w -= 0.1 * grads.weight
    y = layer.forward(x)
    assert relative_error(y, reference_conv(x, w, padding=2, groups=groups)) < 1e-12
    # element assignment
    w[0, 0, 0, 0] += 1.0
    assert relative_error(layer.forward(x), reference_conv(x, w, padding=2, groups=groups)) < 1e-12
    # a new array
    w2 = rng.standard_normal(w.shape)
    layer.weight = w2
    assert relative_error(layer.forward(x), reference_conv(x, w2, padding=2, groups=groups)) < 1e-12
    # explicit update call after changing through another view
    w2.reshape(-1)[3] = 7.0
    layer.update_weight()
    y = layer.forward(x)
    assert relative_error(y, reference_conv(x, w2, padding=2, groups=groups)) < 1e-12
    grads = layer.backward(g)
    ref = reference_input_grad(x.shape, w2, g, padding=2, groups=groups)
    assert relative_error(grads.input, ref) < 1e-12


def test_backward_after_inplace_weight_change_is_an_error(rng):
    x = rng.standard_normal((1, 2, 10, 10))
    w = rng.standard_normal((2, 2, 3, 3))
    layer = fftbp.Conv(w, padding=1, method="fft")
    y = layer.forward(x)
    w *= 2
    with pytest.raises(RuntimeError, match="weight array was modified in place after forward"):
        layer.backward(np.ones_like(y))


def test_input_changed_after_forward_does_not_leak_into_weight_grad(rng):
    x = rng.standard_normal((2, 2, 10, 10))
    w = rng.standard_normal((2, 2, 3, 3))
    g = rng.standard_normal((2, 2, 10, 10))
    for method in ("fft", "direct"):
        layer = fftbp.Conv(w, padding=1, method=method)
        xx = x.copy()
        layer.forward(xx)
        xx[:] = 0
        dw = layer.backward(g).weight
        assert relative_error(dw, reference_weight_grad(x, w.shape, g, padding=1)) < 1e-12


def test_gradients_not_requested_are_not_computed(rng):
    x = rng.standard_normal((2, 2, 10, 10))
    w = rng.standard_normal((2, 2, 3, 3))
    layer = fftbp.Conv(w, padding=1, method="fft")
    y = layer.forward(x)
    _, i0 = _counts()
    grads = layer.backward(np.ones_like(y), input_grad=False)
    _, i1 = _counts()
    assert grads.input is None and grads.weight is not None
    assert i1 - i0 == w.shape[0] * w.shape[1]  # only the weight gradient's inverse transforms


def test_weight_compared_bit_for_bit_then_by_value(rng):
    """The weight check compares bits (fast); a change of bits that leaves every value equal
    (-0.0 -> 0.0) is not an error at backward, and its gradients are right; a NaN left in
    place is no change; any change of value is caught, NaN included."""
    x = rng.standard_normal((1, 2, 10, 10))
    w = rng.standard_normal((2, 2, 3, 3))
    w[0, 0, 0, 0] = -0.0
    layer = fftbp.Conv(w, padding=1, method="fft")
    g = rng.standard_normal(layer.forward(x).shape)
    w[0, 0, 0, 0] = 0.0
    dx = layer.backward(g).input
    assert relative_error(dx, reference_input_grad(x.shape, w, g, padding=1)) < 1e-12
    w[1, 1, 1, 1] = np.nan
    layer.forward(x)
    assert np.isnan(layer.backward(g).input[:, 1]).all()  # unchanged NaN: no error
    layer.forward(x)
    w[1, 1, 1, 1] = 0.5  # NaN -> number is a change
    with pytest.raises(RuntimeError, match="modified in place after forward"):
        layer.backward(g)


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("where", [0, 300_000, -1])
def test_weight_comparison_in_pieces_finds_a_change_anywhere(where, parallel, rng, monkeypatch):
    """Weights are compared head first, then (large ones) piecewise by the worker threads, and
    copied by them: a change in the head, in a middle piece or in the last element is found,
    with one worker or two, on the caller or split, and so is an unchanged weight (NaN left
    in place included); copies are exact."""
    from fftbp import _arrays
    from fftbp._arrays import parallel_copied
    from fftbp.engine import training

    limit = 0 if parallel else 1 << 40  # the sizes from which the workers share the work
    monkeypatch.setattr(training, "PARALLEL_COMPARE_BYTES", limit)
    monkeypatch.setattr(_arrays, "PARALLEL_COPY_BYTES", limit)
    w = rng.standard_normal((64, 64, 12, 12)).astype(np.float32)  # 2.4 MB: pieces of 256 KB
    w[1, 2, 3, 4] = np.nan
    assert w.nbytes >= 2 * training._PIECE_BYTES
    old = fftbp.get_num_threads()
    try:
        for threads in (1, 2):
            fftbp.set_num_threads(threads)
            snap = parallel_copied(w)
            assert snap.flags.c_contiguous and np.array_equal(snap, w, equal_nan=True)
            assert training.same_weight(w, snap)
            changed = w.copy()
            changed.reshape(-1)[where] += 1.0
            assert not training.same_weight(changed, snap)
            strided = np.asfortranarray(w)  # not C-contiguous: one comparison, one copy
            assert training.same_weight(strided, snap)
            assert np.array_equal(parallel_copied(strided), w, equal_nan=True)
    finally:
        fftbp.set_num_threads(old)
