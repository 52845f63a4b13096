"""Measure mode: time the candidate routes of a layer through the engine and keep the fastest.

Candidates are those the cost model estimates within :data:`MEASURE_WINDOW` of the best
estimate (and within the workspace limit), so planning stays bounded; each is timed in
alternating rounds (:func:`best_of_rounds`), and the close contenders again,
longer. The decision is stored with FFTW's wisdom (:mod:`fftbp.planning.store`) under a
canonical encoding of the layer and what the plan was made for, with the schema version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fftbp._config import call_settings
from fftbp._params import PASSES, ConvSpec, Pass
from fftbp.engine.executor import run_pass
from fftbp.planning import store
from fftbp.planning.candidates import candidate_routes
from fftbp.planning.cost import estimate
from fftbp.planning.decision import Choice, Plan
from fftbp.planning.planner import Ask, cached, constants, estimate_plan, make_plan, pick
from fftbp.planning.routes import Route
from fftbp.planning.tolerance import accurate

__all__ = ["MEASURE_WINDOW", "TIE_WINDOW", "measured_plan", "time_routes"]

#: measure mode times only candidates estimated within this factor of the best estimate
MEASURE_WINDOW = 4.0
#: measure mode re-times the candidates within this factor of the fastest, longer
TIE_WINDOW = 1.25

Operands = dict[str, np.ndarray]


def best_of_rounds(
    calls: Sequence[Callable[[], object]],
    rounds: int = 3,
    min_time: float = 0.05,
    max_rounds: int = 15,
) -> list[float]:
    """Best wall time of each call, after one warm-up call each. The calls alternate within a
    round, so a slow phase of a shared machine hits them all alike. At least ``rounds``
    rounds, and more (up to ``max_rounds``) until every call has run for ``min_time`` in
    total: a single millisecond call here varies by 1.5x, and two close candidates timed
    three times each were ranked wrongly often enough to matter."""
    for c in calls:
        c()
    best = [float("inf")] * len(calls)
    total = [0.0] * len(calls)
    done = 0
    while done < rounds or (done < max_rounds and min(total) < min_time):
        for i, c in enumerate(calls):
            if done >= rounds and total[i] >= min_time:
                continue  # extra rounds only for the calls still short of min_time
            t0 = time.perf_counter()
            c()
            t = time.perf_counter() - t0
            best[i] = min(best[i], t)
            total[i] += t
        done += 1
    return best


def _args(pass_: Pass, ops: Operands) -> tuple[np.ndarray, np.ndarray]:
    if pass_ == Pass.FORWARD:
        return ops["x"], ops["w"]
    if pass_ == Pass.INPUT_GRAD:
        return ops["w"], ops["g"]
    return ops["x"], ops["g"]


def time_routes(
    routes: list[Route],
    spec: ConvSpec,
    pass_: Pass,
    ops: Operands,
    rounds: int = 3,
    min_time: float = 0.05,
) -> list[float]:
    """Best time of each route through the engine (the warm-up call also plans FFTW)."""
    a, b = _args(pass_, ops)
    calls = [lambda r=r: run_pass(r, spec, pass_, a, b) for r in routes]
    return best_of_rounds(calls, rounds, min_time=min_time)


def _time_candidates(
    routes: list[Route], spec: ConvSpec, pass_: Pass, ops: Operands
) -> list[float]:
    """Times of ``routes``; the close contenders (within :data:`TIE_WINDOW` of the fastest)
    are timed again for 0.2 s each and keep the better of their two bests. Millisecond calls
    vary by 1.5x here, and a first ranking of near-ties was wrong often enough to matter."""
    times = time_routes(routes, spec, pass_, ops)
    best = min(times)
    close = [i for i, t in enumerate(times) if t <= TIE_WINDOW * best]
    if len(close) > 1:
        again = time_routes([routes[i] for i in close], spec, pass_, ops, 5, min_time=0.2)
        for i, t in zip(close, again):
            times[i] = min(times[i], t)
    return times


def measured_plan(spec: ConvSpec, ask: Ask) -> Plan:
    """The measure-mode plan for ``spec``: a stored decision for this machine if one fits the
    layer, else timed now and stored. Cached like estimate-mode plans."""
    return cached(("measure", *ask.key(spec)), lambda: _measure(spec, ask))


def _measure(spec: ConvSpec, ask: Ask) -> Plan:
    est = estimate_plan(spec, ask)
    key = store.decision_key(ask.fields(spec))
    stored = _from_store(spec, ask, store.get_decision(key), est.notes)
    if stored is not None:
        return stored
    k = constants()
    rng = np.random.default_rng(0)
    ops = {
        "x": rng.standard_normal(spec.input_shape).astype(spec.dtype),
        "w": rng.standard_normal(spec.weight_shape).astype(spec.dtype),
        "g": rng.standard_normal(spec.output_shape).astype(spec.dtype),
    }
    timings: dict[str, dict[str, float]] = {}
    choices: dict[Pass, Choice] = {}
    with call_settings(ask.limit):
        for pass_ in PASSES:
            best_est = est.choice(pass_).seconds
            routes = candidate_routes(spec, ask.native, ask.tol is not None)
            ok, _ = accurate(routes, spec, pass_, ask.tol, ask.dyn)
            errors = dict(ok)
            cands = []
            for r, _err in ok:
                c = estimate(r, spec, pass_, k, threads=ask.threads)
                if c.seconds <= MEASURE_WINDOW * best_est and c.min_bytes <= ask.limit:
                    cands.append((r, c))
            times = _time_candidates([r for r, _ in cands], spec, pass_, ops)
            costs = []
            for (r, c), t in zip(cands, times):
                timings.setdefault(_route_key(r), {})[pass_.value] = t
                costs.append((r, t, c))
            (route, sec, nbytes), runner = pick(costs, ask, spec, pass_)
            choices[pass_] = Choice(route, sec, nbytes, runner, True, errors[route])
    store.put_decision(key, {p.value: _to_json(c) for p, c in choices.items()})
    return make_plan(spec, "measure", choices, ask, timings, est.notes)


def _to_json(c: Choice) -> dict[str, Any]:
    return {
        "route": c.route.to_json(),
        "seconds": c.seconds,
        "bytes": c.bytes,
        "runner_up": [c.runner_up[0].to_json(), c.runner_up[1]] if c.runner_up else None,
        "error": c.error,
    }


def _route_key(r: Route) -> str:
    return r.label() + (f" {'x'.join(map(str, r.tile))}" if r.tile else "")


def _from_store(
    spec: ConvSpec, ask: Ask, stored: dict[str, Any] | None, notes: tuple[str, ...]
) -> Plan | None:
    """The stored decision as a plan, or None if there is none or it does not fit ``spec``
    (then it is measured again and overwritten)."""
    if stored is None or not store.valid_decision(stored):
        return None
    choices = {}
    k = constants()
    for p in PASSES:
        d = stored[p.value]
        try:
            route = Route.from_json(dict(d["route"]))
            ru = d.get("runner_up")
            runner = (Route.from_json(dict(ru[0])), float(ru[1])) if ru else None
        except (KeyError, TypeError, ValueError):
            return None
        if not route.fits(spec) or (runner is not None and not runner[0].fits(spec)):
            return None
        cost = estimate(route, spec, p, k, threads=ask.threads)
        if cost.min_bytes > ask.limit:
            return None
        err = d.get("error")
        choices[p] = Choice(
            route,
            float(d["seconds"]),
            cost.bytes_within(ask.limit),
            runner,
            True,
            None if err is None else float(err),
        )
    return make_plan(spec, "measure", choices, ask, notes=notes)
