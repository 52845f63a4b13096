"""The planner (estimate mode): per layer and per pass, choose the route and explain why.

:func:`plan_for_spec` lists the candidate routes (:mod:`fftbp.planning.candidates`), drops
those ``tol=`` excludes (:mod:`fftbp.planning.tolerance`) and those whose least workspace
exceeds the limit (:mod:`fftbp.planning.workspace`), costs the rest with the model of
:mod:`fftbp.planning.cost` and returns a :class:`~fftbp.planning.decision.Plan`. Plans are
cached (a bounded LRU) on everything they depend on. Measure mode, which times candidates, is
:mod:`fftbp.engine.measure`: it runs convolutions, which planning never does.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fftbp._config import current_call, physical_memory
from fftbp._params import PASSES, ConvSpec, Pass, check_method, check_tol
from fftbp.planning import store
from fftbp.planning.candidates import candidate_routes
from fftbp.planning.cost import NOT_CALIBRATED, Constants, PassCost, estimate
from fftbp.planning.decision import Choice, Plan, describe_spec, format_bytes
from fftbp.planning.errors import DataRange
from fftbp.planning.routes import Route
from fftbp.planning.tolerance import accurate, check_accuracy, decades, rounded

__all__ = [
    "Ask",
    "constants",
    "forced_plan",
    "make_plan",
    "pick",
    "plan_for_spec",
    "resolve",
    "set_constants",
]

Ranges = dict[Pass, DataRange]


# -- constants ----------------------------------------------------------------------------------
_constants: Constants | None = None


def constants() -> Constants:
    """The cost model's constants: calibrated for this machine if ``fftbp calibrate`` ran."""
    global _constants
    if _constants is None:
        values = store.load_constants() or {}
        # what calibration measures; the rest always takes the shipped values (a file keeps
        # every field, and would otherwise pin them at the values shipped when it was written)
        measured = set(Constants.__dataclass_fields__) - set(NOT_CALIBRATED)
        if values and not measured <= set(values):
            # constants are fitted jointly: a file from an older cost model is not mixed in
            warnings.warn(
                "fftbp: the calibrated constants predate this version's cost model "
                f"(no {sorted(measured - set(values))}); using the shipped ones until "
                "`fftbp calibrate` runs again",
                stacklevel=2,
            )
            values = {}
        _constants = Constants(**{k: v for k, v in values.items() if k in measured})
    return _constants


def set_constants(k: Constants | None) -> None:
    """Use ``k`` (None: reload from the cache directory) and drop cached plans."""
    global _constants
    _constants = k
    with _cache_lock:
        _cache.clear()


# -- what a plan is made for --------------------------------------------------------------------
@dataclass(frozen=True)
class Ask:
    """What a plan is made for besides the layer: the workspace limit and thread count (fixed
    when planning starts), Conv reuse, torch as a candidate, the accuracy target and the
    data's dynamic range per pass (rounded to decades)."""

    limit: int
    threads: int
    #: the limit was asked for (``memory_limit=``): no route that exceeds it, or MemoryError
    strict: bool = False
    reuse: bool = False
    native: bool = False
    tol: float | None = None
    dyn: Ranges | None = field(default=None, compare=False, hash=False)

    @classmethod
    def make(
        cls,
        memory_limit: int | None = None,
        *,
        reuse: bool = False,
        native: bool = False,
        tol: float | None = None,
        dyn: Ranges | None = None,
    ) -> Ask:
        call = current_call()
        limit = call.limit if memory_limit is None else int(memory_limit)
        ranges = rounded(dyn) if tol is not None else None
        return cls(limit, call.threads, memory_limit is not None, reuse, native, tol, ranges)

    def key(self, spec: ConvSpec) -> tuple[Any, ...]:
        """Everything a plan for ``spec`` depends on (the cache key)."""
        dyn = decades(self.dyn)
        return (spec, self.limit, self.threads, self.strict, self.reuse, self.native, self.tol, dyn)

    def fields(self, spec: ConvSpec) -> dict[str, Any]:
        """The canonical description of layer and ask that stored decisions are keyed on."""
        return {
            "input": list(spec.input_shape),
            "weight": list(spec.weight_shape),
            "stride": list(spec.stride),
            "padding": [list(p) for p in spec.padding],
            "dilation": list(spec.dilation),
            "groups": spec.groups,
            "dtype": spec.dtype.name,
            "limit": self.limit,
            "threads": self.threads,
            "reuse": self.reuse,
            "native": self.native,
            "tol": self.tol,
            "range": decades(self.dyn),
        }


# -- planning -----------------------------------------------------------------------------------
_cache: OrderedDict[tuple[Any, ...], Plan] = OrderedDict()
_cache_lock = threading.Lock()
MAX_CACHED = 512


def cached(key: tuple[Any, ...], make: Any) -> Plan:
    """The plan under ``key`` from the bounded LRU cache, made by ``make()`` on a miss."""
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    p = make()
    with _cache_lock:
        _cache[key] = p
        while len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)
    return p


def plan_for_spec(
    spec: ConvSpec,
    *,
    memory_limit: int | None = None,
    reuse: bool = False,
    native: bool = False,
    tol: float | None = None,
    dyn: Ranges | None = None,
) -> Plan:
    """The estimate-mode plan of an already validated layer (cached per signature).

    ``memory_limit`` defaults to the workspace limit in force (:func:`fftbp.set_workspace_limit`
    or the running call's). ``reuse=True`` plans for a :class:`fftbp.Conv` training step,
    where passes computed by whole-map FFT share spectra (the gradients' FFT cost then omits
    what forward already made). ``native=True`` adds PyTorch's own convolution as a candidate
    (:mod:`fftbp.torch`). ``tol`` excludes routes predicted above it on data of dynamic range
    ``dyn`` (per pass; rounded up to decades, so plans are shared between similar data).
    """
    ask = Ask.make(memory_limit, reuse=reuse, native=native, tol=tol, dyn=dyn)
    return cached(("estimate", *ask.key(spec)), lambda: estimate_plan(spec, ask))


def make_plan(
    spec: ConvSpec,
    mode: str,
    choices: dict[Pass, Choice],
    ask: Ask,
    timings: dict[str, dict[str, float]] | None = None,
    notes: tuple[str, ...] = (),
) -> Plan:
    return Plan(
        spec,
        mode,
        choices[Pass.FORWARD],
        choices[Pass.INPUT_GRAD],
        choices[Pass.WEIGHT_GRAD],
        ask.limit,
        ask.threads,
        timings or {},
        ask.tol,
        notes,
    )


def _have(pass_: Pass, chosen: dict[Pass, Route], reuse: bool) -> frozenset[str]:
    """Spectra a whole-map FFT pass gets from earlier passes of a training step."""
    if not reuse or chosen.get(Pass.FORWARD) != Route("fft"):
        return frozenset()
    if pass_ == Pass.INPUT_GRAD:
        return frozenset("w")
    if pass_ == Pass.WEIGHT_GRAD:
        return frozenset("xg") if chosen.get(Pass.INPUT_GRAD) == Route("fft") else frozenset("x")
    return frozenset()


def pick(
    costs: list[tuple[Route, float, PassCost]], ask: Ask, spec: ConvSpec, pass_: Pass
) -> tuple[tuple[Route, float, int], tuple[Route, float] | None]:
    """The fastest route whose least workspace fits the limit (with the workspace it will use
    there), and the runner-up (preferably of another algorithm). ``costs`` holds (route,
    seconds, estimated PassCost). When none fits: ``MemoryError`` for a limit that was asked
    for (or beyond this machine's memory), else the route of least workspace (which the engine
    runs one sample at a time, with a warning)."""
    fits = [c for c in costs if c[2].min_bytes <= ask.limit]
    if not fits:
        smallest = min(costs, key=lambda c: c[2].min_bytes)
        if ask.strict or smallest[2].min_bytes > physical_memory():
            raise MemoryError(
                f"memory_limit: no algorithm computes the {pass_.value} pass of "
                f"{describe_spec(spec)} within {format_bytes(ask.limit)}; the smallest "
                f"workspace is {format_bytes(smallest[2].min_bytes)} ({smallest[0].label()})"
            )
        fits = [smallest]
    fits.sort(key=lambda c: c[1])
    route, sec, cost = fits[0]
    runner = next(((r, t) for r, t, _ in fits[1:] if r.algorithm != route.algorithm), None)
    if runner is None and len(fits) > 1:
        runner = (fits[1][0], fits[1][1])
    return (route, sec, cost.bytes_within(ask.limit)), runner


def estimate_plan(spec: ConvSpec, ask: Ask) -> Plan:
    """The estimate-mode plan (uncached).

    Passes are chosen in order, each the fastest given the spectra earlier passes made
    (``ask.reuse``). Chosen alone, a forward pass by whole-map FFT pays for the spectra the
    gradients then reuse, so a route that is cheaper for forward alone can make the step
    dearer (dense k15: tiles chosen at 2x the whole-map step's time); with ``reuse`` the step
    with forward by whole-map FFT is costed too, and the cheaper step wins."""
    k = constants()
    routes = candidate_routes(spec, ask.native, wide=ask.tol is not None)
    choices, notes = _choose(spec, ask, routes, k)
    if ask.reuse and choices[Pass.FORWARD].route != Route("fft"):
        alt = _choose(spec, ask, routes, k, forward=Route("fft"))
        if alt is not None and _total(alt[0]) < _total(choices):
            choices, notes = alt
    return make_plan(spec, "estimate", choices, ask, notes=tuple(notes))


def _total(choices: dict[Pass, Choice]) -> float:
    return sum(c.seconds for c in choices.values())


def _choose(
    spec: ConvSpec, ask: Ask, routes: list[Route], k: Constants, forward: Route | None = None
) -> tuple[dict[Pass, Choice], list[str]] | None:
    """Each pass's choice in order, and the planner's notes. ``forward``: the forward pass
    takes that route (the others stay its runners-up); None when the route is not accurate
    enough or its least workspace exceeds the limit."""
    chosen: dict[Pass, Route] = {}
    choices: dict[Pass, Choice] = {}
    notes: list[str] = []
    for pass_ in PASSES:
        ok, why = accurate(routes, spec, pass_, ask.tol, ask.dyn)
        notes += why
        costs = []
        errors = {}
        for r, err in ok:
            have = _have(pass_, chosen, ask.reuse) if r == Route("fft") else frozenset()
            c = estimate(r, spec, pass_, k, have, ask.threads)
            costs.append((r, c.seconds, c))
            errors[r] = err
        if forward is not None and pass_ == Pass.FORWARD:
            mine = [c for c in costs if c[0] == forward and c[2].min_bytes <= ask.limit]
            if not mine:
                return None
            route, sec, cost = mine[0]
            others = [c for c in costs if c[0] != forward and c[2].min_bytes <= ask.limit]
            others.sort(key=lambda c: (c[0].algorithm == route.algorithm, c[1]))
            runner = (others[0][0], others[0][1]) if others else None
            picked = (route, sec, cost.bytes_within(ask.limit))
        else:
            picked, runner = pick(costs, ask, spec, pass_)
        chosen[pass_] = picked[0]
        choices[pass_] = Choice(*picked, runner, error=errors[picked[0]])
    return choices, notes


def forced_plan(spec: ConvSpec, algorithm: str, memory_limit: int | None = None) -> Plan:
    """A plan computing every pass by ``algorithm`` (``method="fft"`` etc.), estimate mode,
    under the workspace limit in force (``MemoryError`` if the algorithm cannot keep it).

    For ``"fft_tiled"`` the tile size is the one the cost model prefers; a layer whose maps are
    no larger than one tile has no tiled route and gets a clear error.
    """
    ask = Ask.make(memory_limit)

    def make() -> Plan:
        routes = [r for r in candidate_routes(spec) if r.algorithm == algorithm and not r.prep]
        if not routes:
            raise ValueError(
                f"method: {algorithm!r} does not apply to {describe_spec(spec)}: its output is "
                "no larger than one tile (use 'fft' or 'auto')"
            )
        k = constants()
        choices = {}
        for pass_ in PASSES:
            costs = []
            for r in routes:
                c = estimate(r, spec, pass_, k, threads=ask.threads)
                costs.append((r, c.seconds, c))
            (route, sec, nbytes), runner = pick(costs, ask, spec, pass_)
            choices[pass_] = Choice(route, sec, nbytes, runner)
        return make_plan(spec, f"forced {algorithm}", choices, ask)

    return cached(("forced", algorithm, *ask.key(spec)), make)


def resolve(
    method: Any,
    spec: ConvSpec,
    *,
    reuse: bool = False,
    native: bool = False,
    tol: float | None = None,
    dyn: Ranges | None = None,
    passes: tuple[Pass, ...] = PASSES,
) -> Plan:
    """The plan behind a ``method=`` argument: a :class:`Plan`, ``"auto"`` or an algorithm
    (``native``: ``"auto"`` may choose PyTorch's convolution too). With ``tol``, ``"auto"``
    plans for it, and any plan whose route for one of ``passes`` is predicted above it on
    data of range ``dyn`` is refused with a ``ValueError``."""
    check_method(method, Plan)
    check_tol(tol)
    if isinstance(method, Plan):
        if method.spec != spec:
            raise ValueError(
                f"method: the plan was made for {describe_spec(method.spec)}, "
                f"got a call for {describe_spec(spec)}"
            )
        p = method
    elif method == "auto":
        p = plan_for_spec(spec, reuse=reuse, native=native, tol=tol, dyn=dyn)
    else:
        p = forced_plan(spec, method)
    check_accuracy(p, passes, tol, dyn)
    return p
