"""The planner: routes (tiles, polyphase, dilation phases) against the reference on the option
product, plans as objects, method= resolution, memory limits, mixed per-pass routes in Conv."""

from __future__ import annotations

import numpy as np
import pytest

import fftbp
from fftbp._params import ConvSpec, Pass
from fftbp.engine import run_pass
from fftbp.planning import Choice, Plan, Route, candidate_routes
from fftbp.testing import (
    TOLERANCE,
    reference_conv,
    reference_input_grad,
    reference_weight_grad,
    relative_error,
)
from tests._cases import make_case, option_product


def run_forward(route, spec, x, w, b):
    return run_pass(route, spec, "forward", x, w, b)


def run_input_grad(route, spec, w, g):
    return run_pass(route, spec, "input_grad", w, g)


def run_weight_grad(route, spec, x, g):
    return run_pass(route, spec, "weight_grad", x, g)


CASES = list(option_product())


def _routes_for(case) -> list[tuple[str, Route]]:
    """Every reduction that applies to the case, alone and followed by tiles."""
    nd, stride, _pad, dil, _grouping = case
    out = [("tiles2", Route("fft", tile=(2,) * nd)), ("tiles3", Route("fft", tile=(3,) * nd))]
    if stride > 1 and dil == 1:
        out += [
            ("polyphase", Route("fft", "polyphase")),
            ("polyphase+tiles", Route("fft", "polyphase", (2,) * nd)),
        ]
    if dil > 1 and stride == 1:
        out += [
            ("dilation", Route("fft", "dilation")),
            ("dilation+tiles", Route("fft", "dilation", (2,) * nd)),
        ]
    return out


ROUTE_CASES = [
    (f"{cid}-{name}", case, route) for cid, case in CASES for name, route in _routes_for(case)
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("case", "route"), [(c, r) for _, c, r in ROUTE_CASES], ids=[i for i, _, _ in ROUTE_CASES]
)
def test_routes_match_reference(case, route, dtype, rng):
    x, w, b, g, kw = make_case(*case, dtype, rng)
    spec = ConvSpec.from_shapes(x.shape, w.shape, dtype=dtype, **kw)
    tol = TOLERANCE[np.dtype(dtype)]
    x0, w0, g0 = x.copy(), w.copy(), g.copy()
    y = run_forward(route, spec, x, w, b)
    dx = run_input_grad(route, spec, w, g)
    dw = run_weight_grad(route, spec, x, g)
    assert y.shape == spec.output_shape and dx.shape == x.shape and dw.shape == w.shape
    assert relative_error(y, reference_conv(x, w, b, **kw)) <= tol
    assert relative_error(dx, reference_input_grad(x.shape, w, g, **kw)) <= tol
    assert relative_error(dw, reference_weight_grad(x, w.shape, g, **kw)) <= tol
    assert np.array_equal(x, x0) and np.array_equal(w, w0) and np.array_equal(g, g0)


def test_direct_after_polyphase_matches_reference(rng):
    x, w, b, g, kw = make_case(2, 2, "pairs", 1, "grouped", np.float64, rng)
    spec = ConvSpec.from_shapes(x.shape, w.shape, dtype=np.float64, **kw)
    route = Route("direct", "polyphase")
    assert relative_error(run_forward(route, spec, x, w, b), reference_conv(x, w, b, **kw)) <= 1e-11
    ref_dx = reference_input_grad(x.shape, w, g, **kw)
    assert relative_error(run_input_grad(route, spec, w, g), ref_dx) <= 1e-11


@pytest.mark.parametrize("base", ["fft", "direct"])
@pytest.mark.parametrize("prep", ["polyphase", "dilation"])
@pytest.mark.parametrize(
    ("size", "kernel", "step", "padding"),
    [
        ((5, 6), (1, 2), (3, 2), ((4, 1), (1, 4))),  # kernel shorter than the step
        ((2, 3), (3, 3), (2, 3), ((7, 0), (0, 7))),  # padding wider than the map
        ((13, 9), (4, 3), (2, 2), ((0, 0), (0, 0))),  # trailing inputs that no output reads
        ((8, 7), (5, 5), (3, 2), ((2, 6), (3, 1))),  # asymmetric padding, phases of unequal length
    ],
)
def test_phases_on_awkward_geometry(base, prep, size, kernel, step, padding, rng):
    """Stride (polyphase) or dilation phases: the inner layer keeps the padding as padding, so
    phases hold unequal numbers of samples."""
    kw = dict(padding=padding, **{"stride" if prep == "polyphase" else "dilation": step})
    x = rng.standard_normal((2, 3, *size))
    w = rng.standard_normal((4, 3, *kernel))
    spec = ConvSpec.from_shapes(x.shape, w.shape, dtype=np.float64, **kw)
    g = rng.standard_normal(spec.output_shape)
    route = Route(base, prep)
    scale = np.abs(x).max() * np.abs(w).max() * np.abs(g).max() * 100
    for got, want in (
        (run_forward(route, spec, x, w, None), reference_conv(x, w, None, **kw)),
        (run_input_grad(route, spec, w, g), reference_input_grad(x.shape, w, g, **kw)),
        (run_weight_grad(route, spec, x, g), reference_weight_grad(x, w.shape, g, **kw)),
    ):
        assert np.abs(got - want).max() <= 1e-13 * scale


def test_fft_tiled_method_on_a_large_map(rng):
    x = rng.standard_normal((1, 2, 96, 80))
    w = rng.standard_normal((3, 2, 5, 5))
    g = rng.standard_normal((1, 3, 96, 80))
    kw = dict(padding="same")
    p = fftbp.plan(x.shape, w.shape, **kw, dtype="float64")
    tiled = [r for r in candidate_routes(p.spec) if r.algorithm == "fft_tiled"]
    assert tiled, "a 5x5 kernel on a 96x80 map must have tiled candidates"
    y = fftbp.conv(x, w, **kw, method="fft_tiled")
    assert relative_error(y, reference_conv(x, w, **kw)) <= 1e-11
    dx = fftbp.conv_input_grad(x.shape, w, g, **kw, method="fft_tiled")
    assert relative_error(dx, reference_input_grad(x.shape, w, g, **kw)) <= 1e-11
    dw = fftbp.conv_weight_grad(x, w.shape, g, **kw, method="fft_tiled")
    assert relative_error(dw, reference_weight_grad(x, w.shape, g, **kw)) <= 1e-11


def test_fft_tiled_on_a_map_smaller_than_a_tile_is_an_error(rng):
    x = rng.standard_normal((1, 1, 6, 6))
    w = rng.standard_normal((1, 1, 5, 5))
    with pytest.raises(ValueError, match=r"method: 'fft_tiled' does not apply to .* one tile"):
        fftbp.conv(x, w, method="fft_tiled")


def test_plan_prints_every_pass_with_numbers():
    p = fftbp.plan((8, 32, 64, 64), (32, 32, 31, 31), padding="same")
    text = str(p)
    for pass_ in ("forward", "input_grad", "weight_grad"):
        assert pass_ in text
    assert "runner-up" in text and " ms" in text and "80x80" in text
    assert p.forward_choice.runner_up is not None
    assert p.forward_choice.seconds > 0 and p.forward_choice.bytes > 0


def test_estimate_avoids_whole_map_fft_for_3x3_and_picks_fft_for_31x31():
    small = fftbp.plan((8, 32, 64, 64), (32, 32, 3, 3), padding=1)
    large = fftbp.plan((8, 32, 64, 64), (32, 32, 31, 31), padding=15)
    assert small.forward_choice.route.algorithm in ("direct", "fft_tiled")  # not whole maps
    for p in ("forward", "input_grad", "weight_grad"):
        assert large.choice(p).route.algorithm.startswith("fft")


def test_auto_runs_the_plan(rng):
    x = rng.standard_normal((2, 3, 20, 20))
    w = rng.standard_normal((4, 3, 9, 9))
    p = fftbp.plan(x.shape, w.shape, padding=4, dtype="float64")
    by_plan = fftbp.conv(x, w, padding=4, method=p)
    np.testing.assert_array_equal(fftbp.conv(x, w, padding=4), by_plan)
    route = p.forward_choice.route
    np.testing.assert_array_equal(run_pass(route, p.spec, "forward", x, w), by_plan)


def test_plan_for_another_layer_is_rejected(rng):
    p = fftbp.plan((2, 3, 20, 20), (4, 3, 9, 9), padding=4)
    x = rng.standard_normal((2, 3, 21, 20)).astype(np.float32)
    w = rng.standard_normal((4, 3, 9, 9)).astype(np.float32)
    with pytest.raises(ValueError, match=r"method: the plan was made for 2D N2 C3 F4 20x20"):
        fftbp.conv(x, w, padding=4, method=p)


def test_bad_plan_arguments():
    with pytest.raises(ValueError, match=r"mode: expected one of 'estimate', 'measure', got 'x'"):
        fftbp.plan((1, 1, 8, 8), (1, 1, 3, 3), mode="x")
    with pytest.raises(ValueError, match=r"memory_limit: expected a positive int .* got -5"):
        fftbp.plan((1, 1, 8, 8), (1, 1, 3, 3), memory_limit=-5)
    with pytest.raises(ValueError, match=r"input_shape: expected 4 dimensions"):
        fftbp.plan((1, 8, 8), (1, 1, 3, 3))


def test_memory_limit_excludes_routes_and_says_when_nothing_fits():
    shape, wshape = (16, 64, 128, 128), (64, 64, 15, 15)
    free = fftbp.plan(shape, wshape, padding=7)
    limit = 256 << 20
    tight = fftbp.plan(shape, wshape, padding=7, memory_limit=limit)
    assert free.forward_choice.bytes > limit  # whole-map spectra of this layer do not fit
    for p in ("forward", "input_grad", "weight_grad"):
        assert tight.choice(p).bytes <= limit
    with pytest.raises(MemoryError, match=r"memory_limit: no algorithm computes the forward"):
        fftbp.plan(shape, wshape, padding=7, memory_limit=1000)


def _manual_plan(spec: ConvSpec, fwd: Route, dx: Route, dw: Route) -> Plan:
    return Plan(spec, "manual", Choice(fwd, 1.0, 1), Choice(dx, 1.0, 1), Choice(dw, 1.0, 1))


@pytest.mark.parametrize(
    "routes",
    [
        (Route("direct"), Route("fft"), Route("fft")),
        (Route("fft"), Route("direct"), Route("fft")),
        (Route("fft"), Route("fft"), Route("direct")),
        (Route("fft", tile=(3, 3)), Route("fft"), Route("fft", tile=(2, 2))),
        (Route("fft", "polyphase"), Route("fft", "polyphase"), Route("fft")),
    ],
    ids=["direct-fft-fft", "fft-direct-fft", "fft-fft-direct", "tiled-fft-tiled", "polyphase"],
)
@pytest.mark.parametrize("grouping", ["dense", "depthwise"])
def test_conv_layer_with_mixed_routes(routes, grouping, rng):
    x, w, b, g, kw = make_case(2, 2, "pairs", 1, grouping, np.float64, rng)
    spec = ConvSpec.from_shapes(x.shape, w.shape, dtype=np.float64, **kw)
    layer = fftbp.Conv(w, b, **kw, method=_manual_plan(spec, *routes))
    for _ in range(2):  # the second step runs on an updated weight
        y = layer.forward(x)
        grads = layer.backward(g)
        assert relative_error(y, reference_conv(x, w, b, **kw)) <= 1e-11
        assert relative_error(grads.input, reference_input_grad(x.shape, w, g, **kw)) <= 1e-11
        assert relative_error(grads.weight, reference_weight_grad(x, w.shape, g, **kw)) <= 1e-11
        w -= 0.1 * grads.weight


def test_training_step_plan_costs_the_shared_spectra_jointly():
    """With reuse (a Conv training step), a forward pass by whole-map FFT also pays for the
    spectra the gradients reuse: the planner costs that step as well as the pass-by-pass
    choice, and keeps the cheaper. Dense k9 on 64x64 maps: pass by pass the tiled route wins
    every pass, but the whole-map step is cheaper (measured 47 against 55 ms, see
    docs/planner.md)."""
    from fftbp.planning.planner import Ask, _choose, constants, plan_for_spec

    passes = [Pass.FORWARD, Pass.INPUT_GRAD, Pass.WEIGHT_GRAD]
    spec = ConvSpec.from_shapes((8, 32, 64, 64), (32, 32, 9, 9), 1, 4, 1, 1, "float32")
    assert plan_for_spec(spec).choice(Pass.FORWARD).route.algorithm == "fft_tiled"
    step = plan_for_spec(spec, reuse=True)
    assert [step.choice(p).route.algorithm for p in passes] == ["fft"] * 3
    made = _choose(spec, Ask.make(None, reuse=True), candidate_routes(spec), constants())
    assert made is not None
    greedy = made[0]
    assert greedy[Pass.FORWARD].route.algorithm == "fft_tiled"
    chosen = sum(step.choice(p).seconds for p in passes)
    assert chosen < sum(greedy[p].seconds for p in passes)
