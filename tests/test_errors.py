"""Every bad input gets a message that names the argument, shows the value and states the rule."""

import numpy as np
import pytest

import fftbp

X = np.zeros((2, 4, 8, 8), np.float32)
W = np.zeros((6, 4, 3, 3), np.float32)
G = np.zeros((2, 6, 6, 6), np.float32)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda: fftbp.conv(X, np.zeros((6, 3, 3, 3), np.float32)),
            ValueError,
            r"weight: expected 4 input channels per group .* got shape \(6, 3, 3, 3\)",
        ),
        (
            lambda: fftbp.conv(X, W, groups=3),
            ValueError,
            r"groups: must divide the input channels, but 3 does not divide C=4",
        ),
        (
            lambda: fftbp.conv(X, np.zeros((5, 2, 3, 3), np.float32), groups=2),
            ValueError,
            r"groups: must divide the output channels, but 2 does not divide F=5",
        ),
        (
            lambda: fftbp.conv(X, np.zeros((6, 4, 9, 3), np.float32)),
            ValueError,
            r"weight: the dilated kernel \(9 on spatial axis 0\) is larger than the padded input",
        ),
        (
            lambda: fftbp.conv(X, W, stride=0),
            ValueError,
            r"stride: expected an int or a tuple of 2 ints, each >= 1, got 0",
        ),
        (
            lambda: fftbp.conv(X, W, dilation=(1, -2)),
            ValueError,
            r"dilation: expected .* got \(1, -2\)",
        ),
        (lambda: fftbp.conv(X, W, padding=-1), ValueError, r"padding: .* all >= 0, got -1"),
        (lambda: fftbp.conv(X, W, padding="foo"), ValueError, r"padding: .*'same', .* got 'foo'"),
        (lambda: fftbp.conv(X, W, padding=((1, -1), 0)), ValueError, r"padding: .*\(1, -1\)"),
        (
            lambda: fftbp.conv(X, W, padding="same", stride=2),
            ValueError,
            r"padding: 'same' needs stride 1 on every axis, got stride=\(2, 2\)",
        ),
        (
            lambda: fftbp.conv(X[0], W),
            ValueError,
            r"input: expected 4 dimensions \(N, C, \*spatial\) .* got shape \(4, 8, 8\)",
        ),
        (lambda: fftbp.conv(X, W[0, 0]), ValueError, r"weight: expected 3, 4 or 5 dimensions"),
        (
            lambda: fftbp.conv(X.astype(np.int32), W),
            TypeError,
            r"input: expected a float32 or float64 array, got dtype 'int32'",
        ),
        (lambda: fftbp.conv(X.astype(np.complex64), W), TypeError, r"got dtype 'complex64'"),
        (
            lambda: fftbp.conv(X, W.astype(np.float64)),
            TypeError,
            r"dtypes: all arrays must share one dtype .* input=float32, weight=float64",
        ),
        (lambda: fftbp.conv(X[:0], W), ValueError, r"input: expected a non-empty array"),
        (
            lambda: fftbp.conv(X, W, np.zeros(5, np.float32)),
            ValueError,
            r"bias: expected shape \(6,\)",
        ),
        (
            lambda: fftbp.conv(X, W, method="fast"),
            ValueError,
            r"method: expected one of 'auto', 'fft', 'fft_tiled', 'direct' or a Plan from "
            r"fftbp.plan\(\), got 'fast'",
        ),
        (
            lambda: fftbp.conv_input_grad((2, 4, 8), W, G),
            ValueError,
            r"input_shape: expected a tuple of 4 ints, got \(2, 4, 8\)",
        ),
        (
            lambda: fftbp.conv_input_grad((2, 5, 8, 8), W, G),
            ValueError,
            r"weight: expected 5 input channels per group",
        ),
        (
            lambda: fftbp.conv_input_grad((2, 4, 8, 8), W, G[:, :, :5]),
            ValueError,
            r"grad_output: expected the layer's output shape \(2, 6, 6, 6\) .* got \(2, 6, 5, 6\)",
        ),
        (
            lambda: fftbp.conv_weight_grad(X, (6, 4, 3), G),
            ValueError,
            r"weight_shape: expected a tuple of 4 ints, got \(6, 4, 3\)",
        ),
        (
            lambda: fftbp.conv_weight_grad(X, (6, 4, 3, 3), G.astype(np.float64)),
            TypeError,
            r"dtypes: .* input=float32, grad_output=float64",
        ),
        (lambda: fftbp.Conv(W, method="nope"), ValueError, r"method: expected one of"),
        (lambda: fftbp.Conv(W).backward(G), RuntimeError, r"backward: call forward\(\) first"),
        (lambda: fftbp.set_num_threads(0), ValueError, r"n: expected a positive int, got 0"),
        (
            lambda: fftbp.set_fftw_effort("FFTW_FAST"),
            ValueError,
            r"effort: expected one of FFTW_ESTIMATE, .* got 'FFTW_FAST'",
        ),
        (lambda: fftbp.set_workspace_limit(-5), ValueError, r"nbytes: expected a positive int"),
    ],
)
def test_error_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_inputs_are_never_modified_and_may_be_readonly_or_strided(rng):
    x = rng.standard_normal((2, 3, 20, 18))[:, :, ::2, ::-1]  # non-contiguous view
    w = rng.standard_normal((4, 3, 5, 5))
    g = rng.standard_normal((2, 4, 10, 18))
    for a in (x, w, g):
        a.flags.writeable = False
    copies = [a.copy() for a in (x, w, g)]
    for method in ("fft", "direct"):
        y = fftbp.conv(x, w, padding=2, method=method)
        fftbp.conv_input_grad(x.shape, w, g, padding=2, method=method)
        fftbp.conv_weight_grad(x, w.shape, g, padding=2, method=method)
        layer = fftbp.Conv(w, padding=2, method=method)
        np.testing.assert_allclose(layer.forward(x), y, rtol=1e-10, atol=1e-12)
        layer.backward(g)
    for a, c in zip((x, w, g), copies):
        np.testing.assert_array_equal(a, c)


def test_nan_propagates_on_both_paths(rng):
    x = rng.standard_normal((1, 1, 12, 12))
    x[0, 0, 2, 3] = np.nan
    w = rng.standard_normal((1, 1, 3, 3))
    direct = fftbp.conv(x, w, method="direct")
    fft = fftbp.conv(x, w, method="fft")
    assert np.isnan(direct[0, 0, 1, 1]) and np.isfinite(direct[0, 0, 8, 8])
    # documented: FFT spreads a NaN over every output sharing its transform
    assert np.isnan(fft).all()
