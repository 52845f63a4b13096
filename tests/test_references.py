"""fftbp.testing's float64 references against PyTorch, once, on the whole option product.

The other correctness tests (test_passes.py, test_against_torch.py, test_planner.py, ...) compare
fftbp with these references only; this module is what makes them an oracle. In float64:

* the forward pass (with bias) against ``torch.nn.functional.conv{1,2,3}d``, given torch's own
  ``padding`` argument where torch has one (every kind but asymmetric pairs) and, for every
  kind, on an input padded explicitly with ``torch.nn.functional.pad``;
* the input and weight gradients against ``torch.nn.grad.conv{1,2,3}d_input`` / ``_weight`` on
  that explicitly padded input (the input gradient cropped back: the adjoint of padding);
* the adjoint identities <conv(x, w), g> = <x, input_grad(g)> = <w, weight_grad(x, g)>.
"""

from __future__ import annotations

import numpy as np
import pytest

from fftbp.testing import (
    reference_conv,
    reference_input_grad,
    reference_passes,
    reference_weight_grad,
    relative_error,
)
from tests._cases import make_case, option_product

torch = pytest.importorskip("torch", reason="torch is part of the 'test' extra")

CASES = list(option_product())
FUNCS = {1: "conv1d", 2: "conv2d", 3: "conv3d"}
TOL = 1e-12  # both sides in float64 on tiny layers


def explicit_padding(padding, kernel, dilation) -> list[tuple[int, int]]:
    """(low, high) zero padding per spatial axis; 'same' puts an odd total's extra element on
    the high side, as torch does."""
    nd = len(kernel)
    dil = (dilation,) * nd if isinstance(dilation, int) else tuple(dilation)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dil)]
        return [(t // 2, t - t // 2) for t in totals]
    if padding == "valid":
        return [(0, 0)] * nd
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [tuple(p) if isinstance(p, tuple) else (p, p) for p in padding]


def torch_passes(x, w, b, g, *, stride, padding, dilation, groups) -> dict[str, np.ndarray]:
    """The three passes by torch in float64, and the forward pass with torch's own padding
    argument (``"forward_own"``) where torch accepts this padding."""
    nd = w.ndim - 2
    conv = getattr(torch.nn.functional, FUNCS[nd])
    grad_input = getattr(torch.nn.grad, FUNCS[nd] + "_input")
    grad_weight = getattr(torch.nn.grad, FUNCS[nd] + "_weight")
    tx, tw, tb, tg = (torch.from_numpy(a) for a in (x, w, b, g))
    pairs = explicit_padding(padding, w.shape[2:], dilation)
    xp = torch.nn.functional.pad(tx, [v for lo_hi in reversed(pairs) for v in lo_hi])
    dxp = grad_input(xp.shape, tw, tg, stride, 0, dilation, groups)
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pairs, x.shape[2:]))
    out = {
        "forward": conv(xp, tw, tb, stride, 0, dilation, groups),
        "input_grad": dxp[(..., *crop)],
        "weight_grad": grad_weight(xp, tw.shape, tg, stride, 0, dilation, groups),
    }
    symmetric = isinstance(padding, (int, str)) or all(isinstance(p, int) for p in padding)
    if symmetric:
        out["forward_own"] = conv(tx, tw, tb, stride, padding, dilation, groups)
    return {k: v.numpy() for k, v in out.items()}


# torch's own notice that 'same' with an even kernel pads a copy of the input: not ours
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_references_match_torch(case, rng):
    x, w, b, g, kw = make_case(*case, np.float64, rng)
    expected = torch_passes(x, w, b, g, **kw)
    assert ("forward_own" in expected) == (case[2] != "pairs")
    y = reference_conv(x, w, b, **kw)
    assert y.shape == expected["forward"].shape
    assert relative_error(y, expected["forward"]) <= TOL
    if "forward_own" in expected:
        assert relative_error(y, expected["forward_own"]) <= TOL
    dx = reference_input_grad(x.shape, w, g, **kw)
    dw = reference_weight_grad(x, w.shape, g, **kw)
    assert dx.shape == x.shape and dw.shape == w.shape
    assert relative_error(dx, expected["input_grad"]) <= TOL
    assert relative_error(dw, expected["weight_grad"]) <= TOL


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_references_are_adjoint(case, rng):
    """<conv(x, w), g> = <x, input_grad(g)> = <w, weight_grad(x, g)> (reference_passes)."""
    x, w, _, g, kw = make_case(*case, np.float64, rng)
    ref = reference_passes(x, w, g, **kw)
    lhs = np.vdot(ref["forward"], g)
    scale = np.linalg.norm(ref["forward"]) * np.linalg.norm(g)
    assert np.vdot(x, ref["input_grad"]) == pytest.approx(lhs, rel=TOL, abs=TOL * scale)
    assert np.vdot(w, ref["weight_grad"]) == pytest.approx(lhs, rel=TOL, abs=TOL * scale)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_references_compute_float32_operands_in_float64(nd, rng):
    """What the float32 comparisons rely on: float32 operands give float64 results, those of
    the same values in float64."""
    x, w, b, g, kw = make_case(nd, 1, "pairs", 2, "grouped", np.float32, rng)
    x64, w64, b64, g64 = (a.astype(np.float64) for a in (x, w, b, g))
    pairs = [
        (reference_conv(x, w, b, **kw), reference_conv(x64, w64, b64, **kw)),
        (reference_input_grad(x.shape, w, g, **kw), reference_input_grad(x.shape, w64, g64, **kw)),
        (
            reference_weight_grad(x, w.shape, g, **kw),
            reference_weight_grad(x64, w.shape, g64, **kw),
        ),
    ]
    for got, expected in pairs:
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, expected)
