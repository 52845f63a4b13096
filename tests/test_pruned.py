"""Pruned transforms (fftbp.fft.plans._build_pruned): maps whose data fill at most half of the
first axis (the weight spectrum) and read-outs of at most half of it (the weight gradient) skip
the empty or unread rows. Checked against the float64 direct reference, on every geometry that
changes which rows hold data or are read: kernels of one row, dilation, padding that makes the
weight gradient's read-out wrap around the transform, 3D maps, and the float32 tolerance of the
whole-map kernels. Each case also checks that the pruned plans ran (else it would test nothing).
"""

from __future__ import annotations

import numpy as np
import pytest

import fftbp
from fftbp._params import ConvSpec
from fftbp.fft import plans
from fftbp.kernels.fft import layout, pruned
from fftbp.kernels.layout import Index
from fftbp.testing import (
    reference_conv,
    reference_input_grad,
    reference_weight_grad,
    relative_error,
)

#: (input shape, weight shape, padding, dilation)
CASES = {
    "k7 in 36": ((2, 3, 30, 30), (4, 3, 7, 7), 3, 1),
    "one row": ((2, 3, 24, 20), (4, 3, 1, 9), (0, 4), 1),
    "dilated": ((2, 3, 30, 30), (4, 3, 5, 5), (2, 4), 2),
    "wrapping read-out": ((2, 2, 3, 30), (3, 2, 2, 3), ((0, 4), (1, 1)), (4, 1)),
    "3D": ((1, 2, 12, 14, 10), (3, 2, 3, 3, 3), 1, 1),
    "tall kernel": ((2, 3, 40, 20), (4, 3, 9, 3), 4, 1),
}


def _count(rows: Index, m: int) -> int:
    return len(range(m)[rows]) if isinstance(rows, slice) else len(rows)


@pytest.fixture
def built(monkeypatch):
    """Counts the pruned plans built (forward, inverse), after the plan cache is emptied."""
    plans.clear_plan_cache()
    made = {True: 0, False: 0}
    real_build = plans._build_pruned

    def spy(forward, *args, **kwargs):
        made[forward] += 1
        return real_build(forward, *args, **kwargs)

    monkeypatch.setattr(plans, "_build_pruned", spy)
    yield made
    plans.clear_plan_cache()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES))
def test_pruned_transforms_match_the_reference(name, dtype, built, rng):
    xs, ws, pad, dil = CASES[name]
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    spec = ConvSpec.from_shapes(xs, ws, 1, pad, dil, 1, dtype)
    lay = layout(spec)
    weight_pruned = pruned(lay, spec.kernel_extent[0])
    assert pruned(lay, _count(lay.dw_index[0], lay.shape[0]))  # the weight gradient's read-out
    if name == "wrapping read-out":  # positions wrap: an index array; x is pruned (3 of 8)
        assert isinstance(lay.dw_index[0], np.ndarray) and pruned(lay, xs[2])
    else:
        assert weight_pruned
    layer = fftbp.Conv(w, padding=pad, dilation=dil, method="fft")
    y = layer.forward(x)
    g = rng.standard_normal(y.shape).astype(dtype)
    grads = layer.backward(g)
    assert built[True] > 0 and built[False] > 0
    x64, w64, g64 = (a.astype(np.float64) for a in (x, w, g))
    tol = 1e-12 if dtype == "float64" else 2e-5
    kw = {"padding": pad, "dilation": dil}
    assert relative_error(y, reference_conv(x64, w64, **kw)) < tol
    assert relative_error(grads.input, reference_input_grad(xs, w64, g64, **kw)) < tol
    assert relative_error(grads.weight, reference_weight_grad(x64, ws, g64, **kw)) < tol


def test_maps_filling_most_rows_are_not_pruned(built, rng):
    """A kernel filling more than half the first axis runs the whole-map plans."""
    xs, ws = (2, 3, 8, 8), (4, 3, 7, 7)
    spec = ConvSpec.from_shapes(xs, ws, 1, 3, 1, 1, "float64")
    lay = layout(spec)
    assert not pruned(lay, 7) and not pruned(lay, _count(lay.dw_index[0], lay.shape[0]))
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    layer = fftbp.Conv(w, padding=3, method="fft")
    g = rng.standard_normal(layer.forward(x).shape)
    dw = layer.backward(g).weight
    assert built == {True: 0, False: 0}
    assert relative_error(dw, reference_weight_grad(x, ws, g, padding=3)) < 1e-12


@pytest.mark.parametrize("name", ["k7 in 36", "wrapping read-out", "3D"])
def test_pruned_plans_made_with_measure(name, built, rng):
    """FFTW_MEASURE plans by running transforms on the plan's arrays: the rows a pruned
    forward plan relies on being zero must be zero again afterwards."""
    old = fftbp.get_fftw_effort()
    fftbp.set_fftw_effort("FFTW_MEASURE")
    try:
        xs, ws, pad, dil = CASES[name]
        x, w = rng.standard_normal(xs), rng.standard_normal(ws)
        layer = fftbp.Conv(w, padding=pad, dilation=dil, method="fft")
        y = layer.forward(x)
        g = rng.standard_normal(y.shape)
        dw = layer.backward(g).weight
    finally:
        fftbp.set_fftw_effort(old)
    assert built[True] > 0 and built[False] > 0
    kw = {"padding": pad, "dilation": dil}
    assert relative_error(y, reference_conv(x, w, **kw)) < 1e-12
    assert relative_error(dw, reference_weight_grad(x, ws, g, **kw)) < 1e-12
