"""``fftbp accuracy``: what FFT convolution costs in accuracy, against exact arithmetic.

For each kernel size, map size, input distribution and dtype, every method computes the three
passes from the same operands (rounded to the dtype), and each result is compared with the
float64 reference of :mod:`fftbp.testing` applied to those same rounded operands: relative L2
error, and the worst error of an output relative to its own magnitude (what matters when the
outputs span many orders of magnitude).

Error model of the FFT path (relative L2): a length-n FFT and its inverse each add errors of
order ``eps * log2(n)``, and the channel sum adds ``log2(terms)``; with ``n`` the transform's
points and ``terms`` the summed channels (C/g forward, F/g input gradient, N weight gradient)::

    bound = C_MODEL * eps * (log2(n) + log2(terms))

``C_MODEL`` is set once (documented in docs/results.md) and checked against every row of the
study. The large-dynamic-range inputs show the other side: the L2 error stays within the bound,
but outputs far below the largest ones lose all their relative accuracy in float32 FFT (the
error of every output is of order eps times the largest ones), where direct convolution keeps
them (each output's error is of order eps times its own inputs).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import fftbp
from fftbp._params import PASSES, ConvSpec
from fftbp.fft.sizes import transform_shape
from fftbp.planning.candidates import candidate_routes
from fftbp.planning.errors import route_error
from fftbp.planning.planner import resolve
from fftbp.planning.tolerance import data_ranges
from fftbp.testing import reference_passes

__all__ = ["C_MODEL", "DISTRIBUTIONS", "Study", "bound", "run", "write"]

#: constant of the error model (see the module docstring)
C_MODEL = 1.0
DISTRIBUTIONS = ("uniform", "normal", "heavy_tailed", "dynamic_range")


def sample(
    dist: str, shape: tuple[int, ...], rng: np.random.Generator, ramp: bool = True
) -> np.ndarray:
    """float64 samples: uniform [0, 1), standard normal, Student t with 2 degrees of freedom
    (heavy tails), or large dynamic range: normal values scaled by ``10**t`` with ``t`` running
    from -6 to 6 across the last axis (``ramp``; else drawn per element), so that one side of
    every map holds values near 1e-6 and the other near 1e6."""
    if dist == "uniform":
        return rng.random(shape)
    if dist == "normal":
        return rng.standard_normal(shape)
    if dist == "heavy_tailed":
        return rng.standard_t(2, shape)
    if dist == "dynamic_range":
        t = np.linspace(-6, 6, shape[-1]) if ramp else rng.uniform(-6, 6, shape)
        return rng.standard_normal(shape) * 10.0**t
    raise ValueError(f"distribution: expected one of {DISTRIBUTIONS}, got {dist!r}")


def bound(spec: ConvSpec, pass_: str) -> float:
    """The error model's relative L2 bound for the whole-map FFT path on ``spec``."""
    eps = float(np.finfo(spec.dtype).eps)
    n = math.prod(transform_shape(spec))
    terms = {
        "forward": spec.in_channels // spec.groups,
        "input_grad": spec.out_channels // spec.groups,
        "weight_grad": spec.batch,
    }[pass_]
    return C_MODEL * eps * (math.log2(n) + math.log2(max(terms, 1)))


@dataclass
class Study:
    kernels: tuple[int, ...] = (3, 7, 15, 31)
    sizes: tuple[int, ...] = (32, 64)
    distributions: tuple[str, ...] = DISTRIBUTIONS
    dtypes: tuple[str, ...] = ("float32", "float64")
    batch: int = 2
    channels: int = 4
    rows: list[dict[str, Any]] = field(default_factory=list)


TOL = 1e-4  #: the accuracy target the study's "tol" rows ask the planner for


def _errors(actual: np.ndarray, exact: np.ndarray, scale: np.ndarray) -> tuple[float, ...]:
    """Relative L2 error, the worst error of an output relative to its own magnitude (outputs
    above 1e-12 of the largest), and the worst error relative to the scale of the output's
    terms (``tol``'s measure, :mod:`fftbp.planning.errors`; outputs of non-zero scale)."""
    a, e = actual.astype(np.float64), exact
    diff = np.abs(a - e)
    rel_l2 = float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-300))
    mask = np.abs(e) > 1e-12 * np.abs(e).max()
    worst = float(np.max(diff[mask] / np.abs(e)[mask])) if mask.any() else 0.0
    nz = scale > 0
    scaled = float(np.max(diff[nz] / scale[nz])) if nz.any() else 0.0
    return rel_l2, worst, scaled


def _passes(m: Any, x: np.ndarray, w: np.ndarray, g: np.ndarray, tol: float | None = None):
    return {
        "forward": fftbp.conv(x, w, padding="same", method=m, tol=tol),
        "input_grad": fftbp.conv_input_grad(x.shape, w, g, padding="same", method=m, tol=tol),
        "weight_grad": fftbp.conv_weight_grad(x, w.shape, g, padding="same", method=m, tol=tol),
    }


def _predicted(spec: ConvSpec, method: str, x: np.ndarray, g: np.ndarray) -> dict[str, Any]:
    """Per pass: (route, predicted error) for ``method`` on these operands; ``method`` "tol"
    is the planner's choice under ``tol=TOL``."""
    out = {}
    for pass_ in PASSES:
        a, b = {"forward": (x, None), "input_grad": (g, None), "weight_grad": (x, g)}[pass_]
        dyn = data_ranges(spec, pass_, a, b)
        if method == "tol":
            p = resolve("auto", spec, tol=TOL, dyn=dyn, passes=(pass_,))
        else:
            p = resolve(method, spec)
        route = p.choice(pass_).route
        out[pass_] = (route, route_error(route, spec, pass_, dyn[pass_]))
    return out


def run(st: Study) -> Study:
    rng = np.random.default_rng(0)
    for size in st.sizes:
        for k in st.kernels:
            if k > size:
                continue
            for dist in st.distributions:
                shape = (st.batch, st.channels, size, size)
                wshape = (st.channels, st.channels, k, k)
                x64 = sample(dist, shape, rng)
                w64 = sample(dist if dist != "dynamic_range" else "normal", wshape, rng)
                spec64 = ConvSpec.from_shapes(shape, wshape, padding="same", dtype=np.float64)
                g64 = sample(dist, spec64.output_shape, rng)
                for dt in st.dtypes:
                    x, w, g = (a.astype(dt) for a in (x64, w64, g64))
                    # the exact results of the operands as rounded to dt, and their scales
                    xe, we, ge = (a.astype(np.float64) for a in (x, w, g))
                    ax, aw, ag = np.abs(xe), np.abs(we), np.abs(ge)
                    exact = reference_passes(xe, we, ge, padding="same")
                    scale = reference_passes(ax, aw, ag, padding="same")
                    spec = ConvSpec.from_shapes(shape, wshape, padding="same", dtype=dt)
                    methods = ["fft", "direct", "tol"]
                    if any(r.algorithm == "fft_tiled" for r in candidate_routes(spec)):
                        methods.insert(1, "fft_tiled")
                    for m in methods:
                        pred = _predicted(spec, m, x, g)
                        got = _passes("auto", x, w, g, TOL) if m == "tol" else _passes(m, x, w, g)
                        for pass_ in PASSES:
                            rel, worst, scaled = _errors(got[pass_], exact[pass_], scale[pass_])
                            route, predicted = pred[pass_]
                            st.rows.append(
                                dict(
                                    size=size,
                                    kernel=k,
                                    distribution=dist,
                                    dtype=dt,
                                    method=m,
                                    pass_=pass_,
                                    route=route.label(),
                                    transform=math.prod(transform_shape(route.inner(spec))),
                                    rel_l2=rel,
                                    worst_rel=worst,
                                    scaled=scaled,
                                    predicted=predicted,
                                    bound=bound(spec, pass_),
                                )
                            )
    return st


def format_table(st: Study) -> str:
    lines = [
        f"{'size':>4} {'k':>3} {'distribution':<14} {'dtype':<8} {'method':<10} {'pass':<12}"
        f" {'rel L2':>9} {'L2 bound':>9} {'worst rel':>10} {'scale-rel':>10} {'predicted':>10}"
        "  route"
    ]
    for r in st.rows:
        flag = " !L2" if r["method"] == "fft" and r["rel_l2"] > r["bound"] else ""
        flag += " !model" if r["scaled"] > r["predicted"] else ""
        lines.append(
            f"{r['size']:4d} {r['kernel']:3d} {r['distribution']:<14} {r['dtype']:<8} "
            f"{r['method']:<10} {r['pass_']:<12} {r['rel_l2']:9.2e} {r['bound']:9.2e} "
            f"{r['worst_rel']:10.2e} {r['scaled']:10.2e} {r['predicted']:10.2e}  "
            f"{r['route']}{flag}"
        )
    lines.append("")
    lines.append(summary(st))
    return "\n".join(lines)


def summary(st: Study) -> str:
    """The study's findings: the L2 bound, the per-output model, and what ``tol`` chose."""
    fft = [r for r in st.rows if r["method"] == "fft"]
    over = [r for r in fft if r["rel_l2"] > r["bound"]]
    model_over = [r for r in st.rows if r["scaled"] > r["predicted"]]
    out = [
        f"FFT rows within the L2 bound: {len(fft) - len(over)} of {len(fft)}"
        + ("" if not over else "  (rows over it are marked '!L2')"),
        f"rows within the error model's prediction (scale-relative, every method): "
        f"{len(st.rows) - len(model_over)} of {len(st.rows)}"
        + ("" if not model_over else "  (rows over it are marked '!model')"),
    ]
    tol_rows = [r for r in st.rows if r["method"] == "tol"]
    met = [r for r in tol_rows if r["scaled"] <= TOL]
    out.append(f"tol={TOL:g}: met (measured) on {len(met)} of {len(tol_rows)} passes")
    for r in tol_rows:
        if r["distribution"] != "dynamic_range" or r["dtype"] != "float32":
            continue
        plain = next(
            q
            for q in fft
            if all(q[k] == r[k] for k in ("size", "kernel", "distribution", "dtype", "pass_"))
        )
        out.append(
            f"  dynamic range, float32, {r['size']}x{r['size']} k{r['kernel']} {r['pass_']}: "
            f"plain fft {plain['scaled']:.1e} ({'fails' if plain['scaled'] > TOL else 'meets'}"
            f" {TOL:g}); tol={TOL:g} chose {r['route']}: {r['scaled']:.1e}"
        )
    return "\n".join(out)


def write(st: Study, out: Path, machine: dict[str, Any], plot: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    p = out / "accuracy.csv"
    keys = [k for k in st.rows[0] if k != "pass_"] + ["pass"]
    with p.open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=keys)
        wr.writeheader()
        for r in st.rows:
            wr.writerow({**{k: v for k, v in r.items() if k != "pass_"}, "pass": r["pass_"]})
    paths.append(p)
    p = out / "accuracy.json"
    params = {k: v for k, v in st.__dict__.items() if k != "rows"}
    p.write_text(
        json.dumps(
            {"machine": machine, "study": params, "c_model": C_MODEL, "rows": st.rows}, indent=1
        )
    )
    paths.append(p)
    if plot:
        paths.append(_plot(st, out / "accuracy.png"))
    return paths


_MARKERS = {"fft": "o", "fft_tiled": "s", "direct": "^", "tol": "x"}


def _scatter(ax: Any, rows: list[dict[str, Any]], methods: tuple[str, ...], x: str, y: str) -> None:
    """One series per method: ``y`` (floored at 1e-18 for the log scale) against ``x``."""
    for m in methods:
        sel = [r for r in rows if r["method"] == m]
        if sel:
            ax.scatter(
                [r[x] for r in sel],
                [max(r[y], 1e-18) for r in sel],
                marker=_MARKERS[m],
                label=m if m != "tol" else f"planner, tol={TOL:g}",
                alpha=0.6,
            )


def _log_axes(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _plot(st: Study, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, len(st.dtypes), figsize=(7 * len(st.dtypes), 10), squeeze=False)
    for top, bottom, dt in zip(grid[0], grid[1], st.dtypes):
        rows = [r for r in st.rows if r["dtype"] == dt]
        # top: relative L2 error against transform size, with the L2 bound
        _scatter(top, rows, ("fft", "fft_tiled", "direct"), "transform", "rel_l2")
        n = np.geomspace(min(r["transform"] for r in rows), max(r["transform"] for r in rows))
        eps = float(np.finfo(np.dtype(dt)).eps)
        terms = max(st.channels, st.batch)
        top.plot(
            n,
            C_MODEL * eps * (np.log2(n) + math.log2(terms)),
            "k--",
            label=f"bound {C_MODEL:g}·eps·(log2 n + log2 {terms})",
        )
        _log_axes(
            top,
            "transform size n (points)",
            "relative L2 error vs exact",
            f"{dt}: all passes, distributions and kernels",
        )
        # bottom: per-output error (tol's measure) against the model's prediction
        _scatter(bottom, rows, ("fft", "fft_tiled", "direct", "tol"), "predicted", "scaled")
        lo = min(min(r["predicted"] for r in rows), min(max(r["scaled"], 1e-18) for r in rows))
        hi = max(max(r["predicted"] for r in rows), max(r["scaled"] for r in rows))
        bottom.plot([lo, hi], [lo, hi], "k--", label="measured = predicted")
        bottom.axhline(TOL, color="r", lw=0.8, label=f"target {TOL:g}")
        _log_axes(
            bottom,
            "predicted error (model, with the data's measured dynamic range)",
            "measured error of the worst output, relative to its terms' scale",
            f"{dt}: per-output error model (tol's measure); below the line = bounded",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
