"""Geometry: output shapes and values of every route on odd layers (large strides and paddings).

Three groups of tests:

* ``pad_or_crop`` against a per-element oracle (``out[i] = x[i - lo]`` inside the source, else 0);
* two reported ``conv_input_grad`` layers whose padding exceeds what the strided output reaches
  (the direct kernel cropped more than an axis held, then padded: wrong shape, no error);
* a seeded sweep of small layers: every candidate route of the planner and the public functions
  (``method="auto"``), every pass, shape and values against the float64 references.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import fftbp
from fftbp._arrays import pad_or_crop
from fftbp._params import ConvSpec
from fftbp.planning import Route, candidate_routes
from fftbp.testing import (
    reference_conv,
    reference_input_grad,
    reference_weight_grad,
    relative_error,
)


def run_route(
    route: Route,
    spec: ConvSpec,
    pass_: str,
    a: np.ndarray,
    b: np.ndarray,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Run one pass by one route: forward (x, w, bias), input_grad (w, g), weight_grad (x, g)."""
    try:
        from fftbp.engine import run_pass  # the new executor (being written now)
    except ImportError:
        from fftbp.planning import routes as r

        fn: Callable[..., np.ndarray] = {
            "forward": r.run_forward,
            "input_grad": r.run_input_grad,
            "weight_grad": r.run_weight_grad,
        }[pass_]
        return fn(route, spec, a, b, bias) if pass_ == "forward" else fn(route, spec, a, b)
    return run_pass(route, spec, pass_, a, b, bias)


# -- pad_or_crop ---------------------------------------------------------------------------------
def _pad_or_crop_oracle(x: np.ndarray, pairs: tuple[tuple[int, int], ...]) -> np.ndarray:
    """``out[..., i] = x[..., i - lo]`` where the source index is inside ``x``, else 0."""
    nd = len(pairs)
    lead = x.shape[: x.ndim - nd]
    size = tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[x.ndim - nd :], pairs))
    out = np.zeros(lead + size, dtype=x.dtype)
    for idx in itertools.product(*(range(s) for s in size)):
        src = tuple(i - lo for i, (lo, _) in zip(idx, pairs))
        if all(0 <= j < n for j, n in zip(src, x.shape[x.ndim - nd :])):
            out[(Ellipsis, *idx)] = x[(Ellipsis, *src)]
    return out


def test_pad_or_crop_matches_the_elementwise_rule() -> None:
    rng = np.random.default_rng(20240601)
    checked = 0
    while checked < 600:
        nd = int(rng.integers(1, 4))
        lead = tuple(int(v) for v in rng.integers(1, 3, size=int(rng.integers(0, 3))))
        shape = tuple(int(v) for v in rng.integers(1, 6, size=nd))
        pairs = tuple((int(lo), int(hi)) for lo, hi in rng.integers(-5, 6, size=(nd, 2)))
        x = rng.standard_normal(lead + shape)
        if any(n + lo + hi < 0 for n, (lo, hi) in zip(shape, pairs)):
            with pytest.raises(ValueError, match="pairs"):
                pad_or_crop(x, pairs)
            continue
        out = pad_or_crop(x, pairs)
        expected = _pad_or_crop_oracle(x, pairs)
        assert out.shape == expected.shape, (shape, pairs)
        np.testing.assert_array_equal(out, expected, err_msg=f"{shape} {pairs}")
        if all(lo <= 0 and hi <= 0 for lo, hi in pairs):
            assert np.shares_memory(out, x) or out.size == 0, (shape, pairs)
        checked += 1


def test_pad_or_crop_split_over_workers_matches_the_rule(monkeypatch) -> None:
    """The path for large arrays (one section: each worker zeros its slice of a leading axis,
    then copies into it), forced on small ones, against the elementwise rule."""
    import fftbp._arrays

    monkeypatch.setattr(fftbp._arrays, "PARALLEL_COPY_BYTES", 0)
    rng = np.random.default_rng(7)
    old = fftbp.get_num_threads()
    fftbp.set_num_threads(3)
    try:
        for _ in range(150):
            nd = int(rng.integers(1, 3))
            lead = tuple(int(v) for v in rng.integers(1, 7, size=int(rng.integers(1, 3))))
            shape = tuple(int(v) for v in rng.integers(1, 6, size=nd))
            pairs = tuple((int(lo), int(hi)) for lo, hi in rng.integers(-3, 5, size=(nd, 2)))
            if any(n + lo + hi < 0 for n, (lo, hi) in zip(shape, pairs)):
                continue
            x = rng.standard_normal(lead + shape)
            np.testing.assert_array_equal(pad_or_crop(x, pairs), _pad_or_crop_oracle(x, pairs))
    finally:
        fftbp.set_num_threads(old)


@pytest.mark.parametrize(
    ("n", "pair", "expected"),
    [
        (1, (-2, 2), [0.0]),  # the sample falls outside: length 1 + (-2) + 2 = 1, all zero
        (3, (-1, 1), [2.0, 3.0, 0.0]),
        (3, (1, -1), [0.0, 1.0, 2.0]),
        (3, (-4, 2), [0.0]),
        (3, (5, -6), [0.0, 0.0]),
        (3, (-3, 0), []),
        (2, (0, -2), []),
    ],
)
def test_pad_or_crop_examples(n: int, pair: tuple[int, int], expected: list[float]) -> None:
    x = np.arange(1.0, n + 1.0).reshape(1, n)
    out = pad_or_crop(x, (pair,))
    assert out.shape == (1, len(expected))
    np.testing.assert_array_equal(out[0], expected)


def test_pad_or_crop_rejects_negative_lengths() -> None:
    with pytest.raises(ValueError, match="pairs"):
        pad_or_crop(np.ones((2, 3)), ((-2, -2),))


# -- the two reported input gradients ------------------------------------------------------------
_REPORTED = [
    pytest.param((1, 2, 1, 1), (3, 2, 1, 1), {"stride": 10, "padding": 2}, id="2d-stride10-pad2"),
    pytest.param((1, 1, 3), (1, 1, 2), {"stride": 5, "padding": ((3, 0),)}, id="1d-stride5-pad3:0"),
]


@pytest.mark.parametrize(("input_shape", "weight_shape", "kw"), _REPORTED)
@pytest.mark.parametrize("method", ["direct", "fft", "auto", "fft_tiled"])
def test_reported_input_grad_shapes(
    input_shape: tuple[int, ...], weight_shape: tuple[int, ...], kw: dict[str, Any], method: str
) -> None:
    spec = ConvSpec.from_shapes(input_shape, weight_shape, dtype=np.float64, **kw)
    rng = np.random.default_rng(5)
    operands = [
        (np.ones(weight_shape), np.ones(spec.output_shape)),  # as reported
        (rng.standard_normal(weight_shape), rng.standard_normal(spec.output_shape)),
    ]
    for w, g in operands:
        expected = reference_input_grad(input_shape, w, g, **kw)
        try:
            dx = fftbp.conv_input_grad(input_shape, w, g, **kw, method=method)
        except ValueError as exc:
            if method != "fft_tiled" or "one tile" not in str(exc):
                raise
            pytest.skip("fft_tiled does not apply: the map is no larger than one tile")
        assert dx.shape == input_shape
        np.testing.assert_allclose(dx, expected, rtol=1e-10, atol=1e-12)


# -- the seeded sweep ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """One random layer of the sweep (float64)."""

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]

    @property
    def kw(self) -> dict[str, Any]:
        return {
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
        }

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, *self.in_size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    def spec(self) -> ConvSpec:
        return ConvSpec.from_shapes(
            self.input_shape, self.weight_shape, **self.kw, dtype=np.float64
        )

    def __str__(self) -> str:
        def t(v: tuple[int, ...]) -> str:
            return "x".join(map(str, v))

        pad = ",".join(f"{lo}:{hi}" for lo, hi in self.padding)
        return (
            f"{len(self.kernel)}d-N{self.batch}-C{self.in_channels}-F{self.out_channels}"
            f"-g{self.groups}-in{t(self.in_size)}-k{t(self.kernel)}-s{t(self.stride)}"
            f"-d{t(self.dilation)}-p{pad}"
        )


def _channels(rng: np.random.Generator) -> tuple[int, int, int]:
    """``(C, F, groups)``: dense, grouped, depthwise or depthwise with a channel multiplier."""
    kind = rng.choice(["dense", "grouped", "depthwise", "multiplier"], p=[0.4, 0.2, 0.2, 0.2])
    if kind == "dense":
        return int(rng.integers(1, 4)), int(rng.integers(1, 4)), 1
    groups = int(rng.integers(2, 4))
    if kind == "grouped":
        return groups * 2, groups * int(rng.integers(1, 3)), groups
    if kind == "depthwise":
        return groups, groups, groups
    return groups, groups * int(rng.integers(2, 4)), groups


def _ints(rng: np.random.Generator, nd: int, lo: int, hi: int) -> tuple[int, ...]:
    return tuple(int(v) for v in rng.integers(lo, hi + 1, size=nd))


def _sweep_layers(count: int, seed: int) -> list[Layer]:
    """``count`` random layers that ``ConvSpec.from_shapes`` accepts (the rest are redrawn)."""
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    while len(layers) < count:
        nd = int(rng.choice([1, 2, 3], p=[0.45, 0.45, 0.1]))
        c, f, groups = _channels(rng)

        layer = Layer(
            batch=int(rng.integers(1, 4)),
            in_channels=c,
            out_channels=f,
            groups=groups,
            in_size=_ints(rng, nd, 1, 9),
            kernel=_ints(rng, nd, 1, 4),
            stride=_ints(rng, nd, 1, 4),
            dilation=_ints(rng, nd, 1, 3),
            padding=tuple((int(lo), int(hi)) for lo, hi in rng.integers(0, 6, size=(nd, 2))),
        )
        try:
            layer.spec()
        except ValueError as exc:  # only "kernel larger than the padded input" is skipped
            assert "larger than the padded input" in str(exc), exc
            continue
        layers.append(layer)
    return layers


_SWEEP = _sweep_layers(300, seed=7)
_RTOL = 1e-9


def _check(
    failures: list[str], what: str, compute: Callable[[], np.ndarray], expected: np.ndarray
) -> None:
    """Append a line to ``failures`` if ``compute()`` raises or differs from ``expected``."""
    try:
        out = np.asarray(compute())
    except Exception as exc:  # a route that cannot run its own layer is a bug too
        failures.append(f"{what}: raised {type(exc).__name__}: {exc}")
        return
    if out.shape != expected.shape:
        failures.append(f"{what}: shape {out.shape}, expected {expected.shape}")
        return
    err = relative_error(out, expected)
    if not err <= _RTOL:
        failures.append(f"{what}: relative error {err:.3g}")


@pytest.mark.parametrize("layer", _SWEEP, ids=str)
def test_sweep_every_route_every_pass(layer: Layer) -> None:
    spec = layer.spec()
    rng = np.random.default_rng(zlib.crc32(str(layer).encode()))
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    bias = rng.standard_normal(spec.out_channels)
    g = rng.standard_normal(spec.output_shape)
    kw = layer.kw
    refs = {
        "forward": reference_conv(x, w, bias, **kw),
        "input_grad": reference_input_grad(spec.input_shape, w, g, **kw),
        "weight_grad": reference_weight_grad(x, spec.weight_shape, g, **kw),
    }
    operands = {"forward": (x, w, bias), "input_grad": (w, g, None), "weight_grad": (x, g, None)}
    failures: list[str] = []
    for route in candidate_routes(spec):
        for pass_, (a, b, c) in operands.items():
            _check(
                failures,
                f"{route.label()} tile={route.tile} {pass_}",
                lambda route=route, pass_=pass_, a=a, b=b, c=c: run_route(
                    route, spec, pass_, a, b, c
                ),
                refs[pass_],
            )
    public = {
        "forward": lambda: fftbp.conv(x, w, bias, **kw, method="auto"),
        "input_grad": lambda: fftbp.conv_input_grad(spec.input_shape, w, g, **kw, method="auto"),
        "weight_grad": lambda: fftbp.conv_weight_grad(x, spec.weight_shape, g, **kw, method="auto"),
    }
    for pass_, call in public.items():
        _check(failures, f"public auto {pass_}", call, refs[pass_])
    assert not failures, f"{layer}:\n  " + "\n  ".join(failures)
