"""``tol=`` in the planner: the data's dynamic range per pass, which routes the error model
(:mod:`fftbp.planning.errors`) predicts within the target, and the check that a plan meets it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fftbp._params import PASSES, ConvSpec, Pass, check_finite
from fftbp.planning.candidates import candidate_routes
from fftbp.planning.decision import Plan
from fftbp.planning.errors import DataRange, dynamic_range, route_error
from fftbp.planning.routes import Route

__all__ = ["accurate", "check_accuracy", "data_ranges", "rounded"]

Ranges = dict[Pass, DataRange]


def data_ranges(spec: ConvSpec, pass_: Pass, a: np.ndarray, b: np.ndarray | None = None) -> Ranges:
    """The dynamic range of ``pass_``'s operands (:func:`fftbp.planning.errors.dynamic_range`)
    within whole maps and within every candidate tile: what ``tol=`` plans on. Non-finite data
    has no range: ``ValueError`` naming the operand."""
    pass_ = Pass(pass_)
    names = {Pass.FORWARD: "input", Pass.INPUT_GRAD: "grad_output", Pass.WEIGHT_GRAD: "input"}
    check_finite(names[pass_], a)
    if b is not None:
        check_finite("grad_output", b)
    tiles = tuple(dict.fromkeys(r.tile for r in candidate_routes(spec) if r.tile and not r.prep))
    return {pass_: dynamic_range(spec, pass_, a, b, tiles)}


#: ranges beyond this are treated as this (float64's range ends near 1e308)
_MAX_DECADE = 300


def _decade(d: float) -> int:
    """``d`` rounded up to a whole decade, at most :data:`_MAX_DECADE`."""
    if not d < math.inf:
        return _MAX_DECADE
    return min(math.ceil(math.log10(max(d, 1.0)) - 1e-9), _MAX_DECADE)


def decades(dyn: Ranges | None) -> tuple[Any, ...] | None:
    """The ranges as decades per pass (what plans are cached on), or None."""
    if not dyn:
        return None
    return tuple(
        (p.value, _decade(d.whole), tuple((t, _decade(v)) for t, v in d.tiles))
        for p, d in sorted(dyn.items(), key=lambda pd: Pass(pd[0]).value)
    )


def rounded(dyn: Ranges | None) -> Ranges:
    """Ranges rounded up to whole decades (so that plans are shared by similar data)."""
    out = {}
    for p in PASSES:
        d = (dyn or {}).get(p, DataRange())
        tiles = tuple((t, 10.0 ** _decade(v)) for t, v in d.tiles)
        out[p] = DataRange(10.0 ** _decade(d.whole), tiles)
    return out


def accurate(
    routes: list[Route], spec: ConvSpec, pass_: Pass, tol: float | None, dyn: Ranges | None
) -> tuple[list[tuple[Route, float | None]], list[str]]:
    """The routes predicted to meet ``tol`` with their predicted errors, and notes on the
    excluded ones. If none meets it: the most accurate one (the planner refuses to run it)."""
    if tol is None:
        return [(r, None) for r in routes], []
    d = (dyn or {}).get(pass_, DataRange())
    errs = [(r, route_error(r, spec, pass_, d)) for r in routes]
    ok = [(r, e) for r, e in errs if e <= tol]
    if not ok:
        best = min(errs, key=lambda re: re[1])
        return [best], [
            f"{pass_.value}: no algorithm is predicted to meet tol={tol:g} on data of dynamic "
            f"range {d.whole:.0e}; the most accurate is {best[0].label()} ({best[1]:.1e})"
        ]
    out: dict[str, float] = {}
    for r, e in errs:
        if e > tol and r.label() not in out:
            out[r.label()] = e
    notes = (
        [f"{pass_.value}: tol excludes " + ", ".join(f"{k} ({v:.1e})" for k, v in out.items())]
        if out
        else []
    )
    return ok, notes


def check_accuracy(
    plan: Plan, passes: tuple[Pass, ...], tol: float | None, dyn: Ranges | None
) -> None:
    """``ValueError`` if a pass of ``plan`` is predicted above ``tol`` on data of range ``dyn``."""
    if tol is None:
        return
    for p in passes:
        c = plan.choice(p)
        d = (dyn or {}).get(p, DataRange())
        err = route_error(c.route, plan.spec, p, d)
        if err > tol:
            raise ValueError(
                f"tol: the {Pass(p).value} pass by {c.route.label()} is predicted at {err:.1e} "
                f"on this data (dynamic range {d.whole:.0e}), above tol={tol:g}; "
                + (
                    "no algorithm meets it (use float64 operands or a looser tol)"
                    if plan.tol is not None
                    else "use method='auto' to let the planner choose one that does"
                )
            )
