"""PyTorch's conv and autograd as an oracle (float64, so only fftbp's error counts)."""

import numpy as np
import pytest

import fftbp
from fftbp.testing import relative_error
from tests._cases import make_case, option_product

torch = pytest.importorskip("torch", reason="torch is part of the 'test' extra")

CASES = [c for c in option_product() if c[1][2] != "pairs"]  # torch has symmetric padding only
FUNCS = {1: "conv1d", 2: "conv2d", 3: "conv3d"}


# torch's own notice that 'same' with an even kernel pads a copy of the input: not ours
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("method", ["fft", "direct"])
@pytest.mark.parametrize("case", [c for _, c in CASES][::2], ids=[i for i, _ in CASES][::2])
def test_matches_torch_autograd(case, method, rng):
    x, w, b, g, kw = make_case(*case, np.float64, rng)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    conv = getattr(torch.nn.functional, FUNCS[w.ndim - 2])
    ty = conv(tx, tw, tb, **kw)
    ty.backward(torch.tensor(g))
    layer = fftbp.Conv(w, b, **kw, method=method)
    y = layer.forward(x)
    grads = layer.backward(g)
    assert relative_error(y, ty.detach().numpy()) <= 1e-11
    assert relative_error(grads.input, tx.grad.numpy()) <= 1e-11
    assert relative_error(grads.weight, tw.grad.numpy()) <= 1e-11
    assert relative_error(grads.bias, tb.grad.numpy()) <= 1e-11


@pytest.mark.parametrize("k", [7, 31])
def test_float32_large_kernel_against_torch(k, rng):
    """A 'same' large-kernel layer in float32 against torch run in float64."""
    x = rng.standard_normal((2, 4, 48, 40)).astype(np.float32)
    w = rng.standard_normal((5, 4, k, k)).astype(np.float32)
    g = rng.standard_normal((2, 5, 48, 40)).astype(np.float32)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, padding="same")
    ty.backward(torch.tensor(g, dtype=torch.float64))
    layer = fftbp.Conv(w, padding="same", method="fft")
    y = layer.forward(x)
    grads = layer.backward(g)
    assert relative_error(y, ty.detach().numpy()) <= 1e-5
    assert relative_error(grads.input, tx.grad.numpy()) <= 1e-5
    assert relative_error(grads.weight, tw.grad.numpy()) <= 1e-5
