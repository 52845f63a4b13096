"""tol=: the error model bounds measured errors, and the planner meets the target."""

from __future__ import annotations

import numpy as np
import pytest

import fftbp
from fftbp.planning import Choice, Plan, Route
from fftbp.study import accuracy
from fftbp.study.accuracy import sample
from fftbp.testing import (
    reference_conv,
    reference_input_grad,
    reference_passes,
    reference_weight_grad,
)


def scale_relative(actual, exact, scale):
    nz = scale > 0
    return float(np.max(np.abs(actual.astype(np.float64) - exact)[nz] / scale[nz]))


@pytest.fixture(scope="module")
def study():
    st = accuracy.Study(kernels=(3, 15), sizes=(32,), batch=2, channels=3)
    return accuracy.run(st)


def test_model_bounds_every_row_of_a_study(study):
    over = [r for r in study.rows if r["scaled"] > r["predicted"]]
    assert not over, over[:3]
    fft = [r for r in study.rows if r["method"] == "fft"]
    assert all(r["rel_l2"] <= r["bound"] for r in fft)


def test_tol_rows_meet_the_target_where_plain_float32_fft_fails(study):
    tol_rows = [r for r in study.rows if r["method"] == "tol"]
    assert tol_rows and all(r["scaled"] <= accuracy.TOL for r in tol_rows)
    plain = [
        r
        for r in study.rows
        if r["method"] == "fft"
        and r["distribution"] == "dynamic_range"
        and r["dtype"] == "float32"
        and r["pass_"] == "forward"
    ]
    assert plain and all(r["scaled"] > accuracy.TOL for r in plain)
    assert "fails 0.0001" in accuracy.summary(study)


def dynamic_case(rng, dtype=np.float32, size=48, k=15):
    x = sample("dynamic_range", (2, 3, size, size), rng).astype(dtype)
    w = rng.standard_normal((4, 3, k, k)).astype(dtype)
    g = sample("dynamic_range", (2, 4, size, size), rng).astype(dtype)
    xe, we, ge = (a.astype(np.float64) for a in (x, w, g))
    exact = reference_passes(xe, we, ge, padding="same")
    scale = reference_passes(np.abs(xe), np.abs(we), np.abs(ge), padding="same")
    return x, w, g, exact, scale


def test_functions_with_tol_meet_it_on_dynamic_range_data(rng):
    x, w, g, exact, scale = dynamic_case(rng)
    plain = fftbp.conv(x, w, padding="same", method="fft")
    assert scale_relative(plain, exact["forward"], scale["forward"]) > 1e-4
    got = {
        "forward": fftbp.conv(x, w, padding="same", tol=1e-4),
        "input_grad": fftbp.conv_input_grad(x.shape, w, g, padding="same", tol=1e-4),
        "weight_grad": fftbp.conv_weight_grad(x, w.shape, g, padding="same", tol=1e-4),
    }
    for p, y in got.items():
        assert y.dtype == np.float32
        assert scale_relative(y, exact[p], scale[p]) <= 1e-4, p


def test_conv_layer_with_tol_meets_it_in_every_pass(rng):
    x, w, g, exact, scale = dynamic_case(rng, k=9)
    layer = fftbp.Conv(w, padding="same", tol=1e-4)
    y = layer.forward(x)
    grads = layer.backward(g)
    assert scale_relative(y, exact["forward"], scale["forward"]) <= 1e-4
    assert scale_relative(grads.input, exact["input_grad"], scale["input_grad"]) <= 1e-4
    assert scale_relative(grads.weight, exact["weight_grad"], scale["weight_grad"]) <= 1e-4
    assert "tol=0.0001" in repr(layer)


def test_a_forced_method_that_cannot_meet_tol_raises(rng):
    x, w, *_ = dynamic_case(rng)
    with pytest.raises(ValueError, match=r"tol: the forward pass by fft is predicted at"):
        fftbp.conv(x, w, padding="same", method="fft", tol=1e-4)
    p = fftbp.plan(x.shape, w.shape, padding="same")
    with pytest.raises(ValueError, match=r"above tol=0\.0001"):
        fftbp.conv(x, w, padding="same", method=p, tol=1e-4)


def test_plan_with_tol_says_what_it_excluded():
    p = fftbp.plan((2, 4, 64, 64), (4, 4, 31, 31), padding="same", tol=1e-4, dynamic_range=1e6)
    text = str(p)
    assert "tol=0.0001" in text and "tol excludes fft" in text
    for pass_ in ("forward", "input_grad", "weight_grad"):
        c = p.choice(pass_)
        assert c.route.label() != "fft" and c.error <= 1e-4
    # data of one scale: plain float32 FFT meets it
    assert fftbp.plan((2, 4, 64, 64), (4, 4, 31, 31), padding="same", tol=1e-4).choice(
        "forward"
    ).route == Route("fft")


def test_unreachable_tol_raises_naming_the_most_accurate():
    with pytest.raises(ValueError, match=r"no algorithm meets it"):
        fftbp.plan((1, 2, 32, 32), (2, 2, 9, 9), padding="same", tol=1e-9)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -1e-3, "1e-4", True, float("nan")])
def test_bad_tol_names_the_argument(bad):
    x = np.ones((1, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"tol: expected None or a number between 0 and 1"):
        fftbp.conv(x, x[:, :, :3, :3], tol=bad)


@pytest.mark.parametrize("bad", [0.5, "big", None])
def test_bad_dynamic_range_names_the_argument(bad):
    with pytest.raises(ValueError, match=r"dynamic_range: expected a finite number >= 1"):
        fftbp.plan((1, 1, 8, 8), (1, 1, 3, 3), tol=1e-4, dynamic_range=bad)


@pytest.mark.parametrize("pass_", ["forward", "input_grad", "weight_grad"])
@pytest.mark.parametrize("tile", [None, (8, 8)])
def test_float64_transform_route_matches_reference(pass_, tile, rng):
    """A float32 layer computed with float64 transforms (the route tol may choose)."""
    x = rng.standard_normal((2, 3, 20, 18)).astype(np.float32)
    w = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    g = rng.standard_normal((2, 4, 20, 18)).astype(np.float32)
    spec = fftbp.plan(x.shape, w.shape, padding="same").spec
    route = Route("fft", tile=tile, precision="float64")
    p = Plan(spec, "test", *(Choice(route, 0.0, 0) for _ in range(3)))
    xe, we, ge = (a.astype(np.float64) for a in (x, w, g))
    got, exact = {
        "forward": (
            fftbp.conv(x, w, padding="same", method=p),
            reference_conv(xe, we, padding="same"),
        ),
        "input_grad": (
            fftbp.conv_input_grad(x.shape, w, g, padding="same", method=p),
            reference_input_grad(x.shape, we, ge, padding="same"),
        ),
        "weight_grad": (
            fftbp.conv_weight_grad(x, w.shape, g, padding="same", method=p),
            reference_weight_grad(xe, w.shape, ge, padding="same"),
        ),
    }[pass_]
    assert got.dtype == np.float32
    # float64 arithmetic, then one rounding to float32
    assert np.max(np.abs(got - exact)) <= 2 * np.finfo(np.float32).eps * np.max(np.abs(exact))
