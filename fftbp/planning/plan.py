"""The planner: per layer and per pass, choose the route (algorithm) and explain the choice.

``plan()`` normalises the layer (one :class:`~fftbp._params.ConvSpec`), lists the candidate
routes (direct, whole-map FFT, tiled FFT with a few tile sizes, and the stride / dilation
decompositions where they apply), costs every candidate for every pass, and returns a
:class:`Plan`: an inspectable object that prints as a table and executes the passes.

Modes:

``"estimate"``
    The cost model of :mod:`fftbp.planning.cost` (well under a millisecond per layer, no FFTW
    planning).
``"measure"``
    Times the candidates on the actual shapes (the best estimated ones, within a factor of the
    best estimate, so planning stays bounded; best of three alternating rounds), returns the
    times and stores the decision, with FFTW's wisdom, under the layer signature, dtype, thread
    count and machine fingerprint.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fftbp._config import (
    best_of_rounds,
    blas_single_threaded,
    get_num_threads,
    workspace_limit_override,
)
from fftbp._params import ConvSpec, IntOrTuple, PaddingArg, is_real
from fftbp.fft.sizes import fast_len, transform_shape
from fftbp.planning import store
from fftbp.planning.cost import PASSES, Constants, PassCost, estimate
from fftbp.planning.errors import DataRange, dynamic_range, route_error
from fftbp.planning.routes import (
    Route,
    applicable_preps,
    run_forward,
    run_input_grad,
    run_weight_grad,
)

__all__ = ["Choice", "Plan", "candidate_routes", "constants", "plan", "plan_for_spec"]

MODES = ("estimate", "measure")
#: measure mode times only candidates estimated within this factor of the best estimate
MEASURE_WINDOW = 4.0


@dataclass(frozen=True)
class Choice:
    """The decision for one pass: the route, its cost and the runner-up."""

    route: Route
    seconds: float
    bytes: int
    runner_up: tuple[Route, float] | None = None
    measured: bool = False
    #: predicted error (``tol=``'s measure, :mod:`fftbp.planning.errors`), when planned with tol
    error: float | None = None


@dataclass(frozen=True)
class Plan:
    """How each pass of one layer is computed. Print it to see why."""

    spec: ConvSpec
    mode: str
    forward_choice: Choice
    input_grad_choice: Choice
    weight_grad_choice: Choice
    memory_limit: int | None = None
    threads: int = 1
    #: measure mode: route label -> pass -> measured seconds, for every timed candidate
    timings: dict[str, dict[str, float]] = field(default_factory=dict, compare=False)
    #: accuracy target the plan meets (``tol=``), and what it excluded to meet it
    tol: float | None = None
    notes: tuple[str, ...] = ()

    def choice(self, pass_: str) -> Choice:
        return getattr(self, f"{pass_}_choice")

    # -- execution ------------------------------------------------------------------------------
    def _check(self, name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
        if tuple(shape) != tuple(expected):
            raise ValueError(
                f"{name}: this plan was made for shape {expected!r}, got {tuple(shape)!r}"
            )

    def forward(self, x: Any, w: Any, b: Any = None) -> np.ndarray:
        """The layer's output, computed by this plan's forward route."""
        from fftbp.api import conv

        return conv(x, w, b, *self._args(), method=self)

    def input_grad(self, w: Any, grad_output: Any) -> np.ndarray:
        from fftbp.api import conv_input_grad

        return conv_input_grad(self.spec.input_shape, w, grad_output, *self._args(), method=self)

    def weight_grad(self, x: Any, grad_output: Any) -> np.ndarray:
        from fftbp.api import conv_weight_grad

        return conv_weight_grad(x, self.spec.weight_shape, grad_output, *self._args(), method=self)

    def _args(self) -> tuple[Any, ...]:
        s = self.spec
        return s.stride, s.padding, s.dilation, s.groups

    def run(self, pass_: str, spec: ConvSpec, a: np.ndarray, b: np.ndarray, bias: Any = None):
        """Execute ``pass_`` (operands already validated against ``spec``)."""
        if spec != self.spec:
            raise ValueError(
                f"method: this plan was made for the layer {describe_spec(self.spec)}, "
                f"got {describe_spec(spec)}"
            )
        route = self.choice(pass_).route
        with blas_single_threaded(), workspace_limit_override(self.memory_limit):
            if pass_ == "forward":
                return run_forward(route, spec, a, b, bias)
            if pass_ == "input_grad":
                return run_input_grad(route, spec, a, b)
            return run_weight_grad(route, spec, a, b)

    # -- explanation ----------------------------------------------------------------------------
    def __str__(self) -> str:
        rows = [
            f"fftbp plan for {describe_spec(self.spec)}",
            f"mode={self.mode}, threads={self.threads}"
            + (f", memory_limit={_fmt_bytes(self.memory_limit)}" if self.memory_limit else "")
            + (f", tol={self.tol:g}" if self.tol is not None else ""),
            "",
            f"{'pass':<12} {'algorithm':<22} {'transform / tile':<24} {'time':>10} "
            f"{'memory':>10}" + (f" {'error':>9}" if self.tol is not None else "") + "  runner-up",
        ]
        for p in PASSES:
            c = self.choice(p)
            ru = (
                f"{c.runner_up[0].label()} {_size(c.runner_up[0], self.spec)} "
                f"({_fmt_s(c.runner_up[1])}, {c.runner_up[1] / c.seconds:.2f}x)"
                if c.runner_up
                else "-"
            )
            err = f" {c.error:9.1e}" if self.tol is not None and c.error is not None else ""
            rows.append(
                f"{p:<12} {c.route.label():<22} {_size(c.route, self.spec):<24} "
                f"{_fmt_s(c.seconds):>10} {_fmt_bytes(c.bytes):>10}{err}  {ru}"
            )
        total = sum(self.choice(p).seconds for p in PASSES)
        rows.append("")
        rows.append(
            f"times are {'measured' if self.mode == 'measure' else 'estimated'}; "
            f"sum over passes {_fmt_s(total)}"
        )
        if self.tol is not None:
            rows.append(
                f"error: predicted error of each output relative to its terms' scale "
                f"(docs/results.md); every pass meets tol={self.tol:g}"
            )
        rows += list(self.notes)
        return "\n".join(rows)

    def __repr__(self) -> str:
        routes = ", ".join(f"{p}={self.choice(p).route.label()}" for p in PASSES)
        return f"Plan({describe_spec(self.spec)}; {routes}; mode={self.mode!r})"


def _make_plan(
    spec: ConvSpec,
    mode: str,
    choices: dict[str, Choice],
    limit: int | None,
    timings: dict[str, dict[str, float]] | None = None,
    tol: float | None = None,
    notes: tuple[str, ...] = (),
) -> Plan:
    return Plan(
        spec,
        mode,
        choices["forward"],
        choices["input_grad"],
        choices["weight_grad"],
        limit,
        get_num_threads(),
        timings or {},
        tol,
        notes,
    )


def describe_spec(s: ConvSpec) -> str:
    x = "x".join
    pads = "x".join(f"{lo}" if lo == hi else f"{lo}:{hi}" for lo, hi in s.padding)
    return (
        f"{s.nd}D N{s.batch} C{s.in_channels} F{s.out_channels} {x(map(str, s.in_size))} "
        f"k{x(map(str, s.kernel))} stride {x(map(str, s.stride))} pad {pads} "
        f"dilation {x(map(str, s.dilation))} groups {s.groups} {s.dtype.name}"
    )


def _size(route: Route, spec: ConvSpec) -> str:
    if route.base in ("direct", "torch"):
        return "-"
    inner = route.inner(spec)
    shape = "x".join(map(str, transform_shape(inner)))
    if route.tile:
        return f"{shape} ({'x'.join(map(str, route.tile))} out)"
    return shape


def _fmt_s(t: float) -> str:
    return f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# -- candidates ---------------------------------------------------------------------------------
def _tiles(spec: ConvSpec) -> list[tuple[int, ...]]:
    """A few overlap-save tile sizes (outputs per tile): windows of fast lengths around 2-8
    kernel extents, only where they are smaller than the whole map."""
    whole = transform_shape(spec)
    out: list[tuple[int, ...]] = []
    for mult in (2, 3, 4, 6, 8):
        tile = []
        for e, st, o in zip(spec.kernel_extent, spec.stride, spec.out_size):
            window = fast_len(max(mult * e, e + 8))
            t = (window - e) // st + 1
            tile.append(max(1, min(t, o)))
        # worth it only if some axis gets more than one tile and windows are smaller than maps
        windows = [(t - 1) * st + e for t, st, e in zip(tile, spec.stride, spec.kernel_extent)]
        if any(t < o for t, o in zip(tile, spec.out_size)) and math.prod(windows) < math.prod(
            whole
        ):
            tup = tuple(tile)
            if tup not in out:
                out.append(tup)
    return out


def candidate_routes(spec: ConvSpec, native: bool = False, wide: bool = False) -> list[Route]:
    """Every route the planner considers for ``spec`` (``native``: PyTorch's convolution too;
    ``wide``: FFT routes computed in float64 for a float32 layer, an option under ``tol=``)."""
    routes = [Route("direct"), Route("fft")] + ([Route("torch")] if native else [])
    routes += [Route("fft", tile=t) for t in _tiles(spec)]
    for prep in applicable_preps(spec)[1:]:
        r = Route("fft", prep)
        routes.append(r)
        routes += [Route("fft", prep, t) for t in _tiles(r.inner(spec))]
        if prep == "polyphase":  # strided im2col -> stride-1 shifted GEMMs (ResNet stem: 3x)
            routes.append(Route("direct", prep))
    if wide and spec.dtype == np.float32:
        routes += [replace(r, precision="float64") for r in routes if r.base == "fft"]
    return routes


# -- constants ----------------------------------------------------------------------------------
_constants: Constants | None = None


def constants() -> Constants:
    """The cost model's constants: calibrated for this machine if ``fftbp calibrate`` ran."""
    global _constants
    if _constants is None:
        values = store.load_constants() or {}
        known = set(Constants.__dataclass_fields__)
        if values and not known <= set(values):
            # constants are fitted jointly: a file from an older cost model is not mixed in
            warnings.warn(
                "fftbp: the calibrated constants predate this version's cost model "
                f"(no {sorted(known - set(values))}); using the shipped ones until "
                "`fftbp calibrate` runs again",
                stacklevel=2,
            )
            values = {}
        _constants = Constants(**{k: v for k, v in values.items() if k in known})
    return _constants


def set_constants(k: Constants | None) -> None:
    """Use ``k`` (None: reload from the cache directory) and drop cached plans."""
    global _constants
    _constants = k
    with _cache_lock:
        _cache.clear()


# -- planning -----------------------------------------------------------------------------------
_cache: OrderedDict[tuple[Any, ...], Plan] = OrderedDict()
_cache_lock = threading.Lock()
_MAX_CACHED = 512


def plan(
    input_shape: Any,
    weight_shape: Any,
    stride: IntOrTuple = 1,
    padding: PaddingArg = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    dtype: Any = "float32",
    *,
    mode: str = "estimate",
    memory_limit: int | None = None,
    native: bool = False,
    tol: float | None = None,
    dynamic_range: float = 1.0,
) -> Plan:
    """Plan every pass of a layer. ``print()`` the result to see the choices and their costs.

    Parameters
    ----------
    input_shape, weight_shape : tuples ``(N, C, *spatial)`` and ``(F, C // groups, *kernel)``
    stride, padding, dilation, groups : as in :func:`fftbp.conv`
    dtype : ``"float32"`` or ``"float64"``
    mode : ``"estimate"`` (cost model, no timing) or ``"measure"`` (time the candidates; the
        decision is stored with FFTW wisdom, see :func:`fftbp.save_wisdom`)
    memory_limit : bytes of workspace allowed (default: the global workspace limit); routes
        whose peak workspace exceeds it are not chosen.
    native : also consider PyTorch's own convolution for each pass (needs torch; this is how
        :mod:`fftbp.torch` plans).
    tol : accuracy target, or None: every output's error relative to the scale of its terms
        (:mod:`fftbp.planning.errors`). Routes the error model predicts above it are excluded
        (float32 layers may then be computed with float64 transforms); ``ValueError`` if none
        meets it.
    dynamic_range : the data's dynamic range the error model assumes (ratio of the largest to
        the smallest local magnitude in a map; >= 1). The functions measure it on their
        operands instead.

    Returns
    -------
    Plan
        Run it with ``p.forward(x, w, b)``, ``p.input_grad(w, gy)``, ``p.weight_grad(x, gy)``,
        pass it as ``method=p`` to the functions, or to :class:`fftbp.Conv`.
    """
    spec = ConvSpec.from_shapes(
        input_shape,
        weight_shape,
        stride,
        padding,
        dilation,
        groups,
        dtype,
        input_name="input_shape",
        weight_name="weight_shape",
    )
    if not isinstance(native, bool):
        raise ValueError(f"native: expected True or False, got {native!r}")
    if native:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise ImportError("native=True: PyTorch is not installed (pip install 'torch>=2.1')")
    check_tol(tol)
    if not is_real(dynamic_range) or not dynamic_range >= 1:
        raise ValueError(f"dynamic_range: expected a number >= 1, got {dynamic_range!r}")
    dyn = None
    if tol is not None:
        d = DataRange(float(dynamic_range))
        dyn = {p: d for p in PASSES}
    p = plan_for_spec(spec, mode=mode, memory_limit=memory_limit, native=native, tol=tol, dyn=dyn)
    check_accuracy(p, PASSES, tol, dyn)
    return p


def data_ranges(
    spec: ConvSpec, pass_: str, a: np.ndarray, b: np.ndarray | None = None
) -> dict[str, DataRange]:
    """The dynamic range of ``pass_``'s operands (see :func:`fftbp.planning.errors.
    dynamic_range`) within whole maps and within every candidate tile: what ``tol=`` plans on."""
    tiles = tuple(dict.fromkeys(r.tile for r in candidate_routes(spec) if r.tile and not r.prep))
    return {pass_: dynamic_range(spec, pass_, a, b, tiles)}


def check_tol(tol: Any) -> None:
    """``tol=`` must be None or a number in (0, 1)."""
    if tol is None:
        return
    if not is_real(tol) or not 0 < tol < 1:
        raise ValueError(f"tol: expected None or a number between 0 and 1, got {tol!r}")


def _check_args(mode: Any, memory_limit: Any) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if memory_limit is not None and (
        not isinstance(memory_limit, (int, np.integer))
        or isinstance(memory_limit, bool)
        or memory_limit <= 0
    ):
        raise ValueError(
            f"memory_limit: expected a positive int (bytes) or None, got {memory_limit!r}"
        )


def plan_for_spec(
    spec: ConvSpec,
    *,
    mode: str = "estimate",
    memory_limit: int | None = None,
    reuse: bool = False,
    native: bool = False,
    tol: float | None = None,
    dyn: dict[str, DataRange] | None = None,
) -> Plan:
    """:func:`plan` for an already validated layer (cached per signature).

    ``reuse=True`` plans for a :class:`fftbp.Conv` training step, where passes computed by
    whole-map FFT share spectra (the gradients' FFT cost then omits what forward already made).
    ``native=True`` adds PyTorch's own convolution as a candidate (:mod:`fftbp.torch`).
    ``tol`` excludes routes predicted above it on data of dynamic range ``dyn`` (per pass;
    rounded up to decades, so plans are shared between similar data).
    """
    _check_args(mode, memory_limit)
    if tol is not None:
        dyn = _rounded(dyn)
    dkey = tuple(sorted((p, d.decade()) for p, d in dyn.items())) if dyn else None
    key = (spec, mode, memory_limit, reuse, native, tol, dkey, get_num_threads())
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    ask = _Ask(memory_limit, reuse, native, tol, dyn)
    p = _measure(spec, ask) if mode == "measure" else _estimate(spec, ask)
    with _cache_lock:
        _cache[key] = p
        while len(_cache) > _MAX_CACHED:
            _cache.popitem(last=False)
    return p


def _have(pass_: str, chosen: dict[str, Route], reuse: bool) -> frozenset[str]:
    """Spectra a whole-map FFT pass gets from earlier passes of a training step."""
    if not reuse or chosen.get("forward") != Route("fft"):
        return frozenset()
    if pass_ == "input_grad":
        return frozenset("w")
    if pass_ == "weight_grad":
        return frozenset("xg") if chosen.get("input_grad") == Route("fft") else frozenset("x")
    return frozenset()


def _pick(
    costs: list[tuple[Route, float, PassCost]], limit: int | None, spec: ConvSpec, pass_: str
) -> tuple[tuple[Route, float, int], tuple[Route, float] | None]:
    """The fastest route whose least workspace fits ``limit``, and the runner-up (preferably
    of another algorithm). ``costs`` holds (route, seconds, estimated PassCost)."""
    fits = [c for c in costs if limit is None or c[2].min_bytes <= limit]
    if not fits:
        smallest = min(costs, key=lambda c: c[2].min_bytes)
        raise MemoryError(
            f"memory_limit: no algorithm computes the {pass_} pass of {describe_spec(spec)} "
            f"within {_fmt_bytes(limit)}; the smallest workspace is "
            f"{_fmt_bytes(smallest[2].min_bytes)} ({smallest[0].label()})"
        )
    fits.sort(key=lambda c: c[1])
    route, sec, cost = fits[0]
    nbytes = cost.bytes if limit is None else min(cost.bytes, limit)
    runner = next(((r, t) for r, t, _ in fits[1:] if r.algorithm != route.algorithm), None)
    if runner is None and len(fits) > 1:
        runner = (fits[1][0], fits[1][1])
    return (route, sec, nbytes), runner


@dataclass(frozen=True)
class _Ask:
    """What a plan is made for besides the layer: workspace limit, Conv reuse, torch as a
    candidate, accuracy target and the data's dynamic range per pass."""

    limit: int | None = None
    reuse: bool = False
    native: bool = False
    tol: float | None = None
    dyn: dict[str, DataRange] | None = field(default=None, hash=False)

    def key(self, spec: ConvSpec) -> str:
        """The stored decision's key (with the thread count)."""
        key = (
            f"{describe_spec(spec)}|limit={self.limit}|reuse={self.reuse}"
            f"|threads={get_num_threads()}"
        )
        if self.tol is not None:
            key += f"|tol={self.tol:g}|range=" + ",".join(
                f"{p}:{d.decade()}" for p, d in sorted((self.dyn or {}).items())
            )
        return key + ("|native" if self.native else "")


def _rounded(dyn: dict[str, DataRange] | None) -> dict[str, DataRange]:
    """Ranges rounded up to whole decades (what the plan cache keys on)."""
    out = {}
    for p in PASSES:
        d = (dyn or {}).get(p, DataRange())
        whole, tiles = d.decade()
        out[p] = DataRange(10.0**whole, tuple((t, 10.0**v) for t, v in tiles))
    return out


def _accurate(
    routes: list[Route],
    spec: ConvSpec,
    pass_: str,
    tol: float | None,
    dyn: dict[str, DataRange] | None,
) -> tuple[list[tuple[Route, float | None]], list[str]]:
    """The routes predicted to meet ``tol`` with their predicted errors, and notes on the
    excluded ones. If none meets it: the most accurate one (:func:`resolve` refuses to run it)."""
    if tol is None:
        return [(r, None) for r in routes], []
    d = (dyn or {}).get(pass_, DataRange())
    errs = [(r, route_error(r, spec, pass_, d)) for r in routes]
    ok = [(r, e) for r, e in errs if e <= tol]
    if not ok:
        best = min(errs, key=lambda re: re[1])
        return [best], [
            f"{pass_}: no algorithm is predicted to meet tol={tol:g} on data of dynamic range "
            f"{d.whole:.0e}; the most accurate is {best[0].label()} ({best[1]:.1e})"
        ]
    out: dict[str, float] = {}
    for r, e in errs:
        if e > tol and r.label() not in out:
            out[r.label()] = e
    notes = (
        [f"{pass_}: tol excludes " + ", ".join(f"{k} ({v:.1e})" for k, v in out.items())]
        if out
        else []
    )
    return ok, notes


def check_accuracy(plan: Plan, passes: tuple[str, ...], tol: float | None, dyn: Any) -> None:
    """``ValueError`` if a pass of ``plan`` is predicted above ``tol`` on data of range ``dyn``."""
    if tol is None:
        return
    for p in passes:
        c = plan.choice(p)
        d = (dyn or {}).get(p, DataRange())
        err = route_error(c.route, plan.spec, p, d)
        if err > tol:
            raise ValueError(
                f"tol: the {p} pass by {c.route.label()} is predicted at {err:.1e} on this data "
                f"(dynamic range {d.whole:.0e}), above tol={tol:g}; "
                + (
                    "no algorithm meets it (use float64 operands or a looser tol)"
                    if plan.tol is not None
                    else "use method='auto' to let the planner choose one that does"
                )
            )


def _estimate(spec: ConvSpec, ask: _Ask) -> Plan:
    k = constants()
    routes = candidate_routes(spec, ask.native, wide=ask.tol is not None)
    chosen: dict[str, Route] = {}
    choices: dict[str, Choice] = {}
    notes: list[str] = []
    for pass_ in PASSES:
        ok, why = _accurate(routes, spec, pass_, ask.tol, ask.dyn)
        notes += why
        costs = []
        errors = {}
        for r, err in ok:
            have = _have(pass_, chosen, ask.reuse) if r == Route("fft") else frozenset()
            c = estimate(r, spec, pass_, k, have)
            costs.append((r, c.seconds, c))
            errors[r] = err
        (route, sec, nbytes), runner = _pick(costs, ask.limit, spec, pass_)
        chosen[pass_] = route
        choices[pass_] = Choice(route, sec, nbytes, runner, error=errors[route])
    return _make_plan(spec, "estimate", choices, ask.limit, tol=ask.tol, notes=tuple(notes))


def call_pass(route: Route, spec: ConvSpec, pass_: str, ops: dict[str, np.ndarray]) -> None:
    """One call of ``pass_`` by ``route`` on operands ``ops`` (x, w, g)."""
    if pass_ == "forward":
        run_forward(route, spec, ops["x"], ops["w"], None)
    elif pass_ == "input_grad":
        run_input_grad(route, spec, ops["w"], ops["g"])
    else:
        run_weight_grad(route, spec, ops["x"], ops["g"])


def time_routes(
    routes: list[Route],
    spec: ConvSpec,
    pass_: str,
    ops: dict[str, np.ndarray],
    rounds: int = 3,
    min_time: float = 0.05,
) -> list[float]:
    """Best time of each route (:func:`fftbp._config.best_of_rounds`; the warm-up call also
    plans FFTW)."""
    calls = [lambda r=r: call_pass(r, spec, pass_, ops) for r in routes]
    return best_of_rounds(calls, rounds, min_time=min_time)


#: measure mode re-times the candidates within this factor of the fastest, longer
TIE_WINDOW = 1.25


def _time_candidates(
    routes: list[Route], spec: ConvSpec, pass_: str, ops: dict[str, np.ndarray]
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


def _measure(spec: ConvSpec, ask: _Ask) -> Plan:
    est = _estimate(spec, ask)
    key = ask.key(spec)
    limit, native, tol, dyn = ask.limit, ask.native, ask.tol, ask.dyn
    stored = store.get_decision(key)
    if stored is not None:
        try:
            return _plan_from_stored(spec, limit, stored, tol, est.notes)
        except (KeyError, TypeError, ValueError):
            pass  # a malformed entry is re-measured and overwritten
    k = constants()
    rng = np.random.default_rng(0)
    ops = {
        "x": rng.standard_normal(spec.input_shape).astype(spec.dtype),
        "w": rng.standard_normal(spec.weight_shape).astype(spec.dtype),
        "g": rng.standard_normal(spec.output_shape).astype(spec.dtype),
    }
    timings: dict[str, dict[str, float]] = {}
    choices: dict[str, Choice] = {}
    with blas_single_threaded(), workspace_limit_override(limit):
        for pass_ in PASSES:
            best_est = est.choice(pass_).seconds
            cands = []
            ok, _ = _accurate(
                candidate_routes(spec, native, tol is not None), spec, pass_, tol, dyn
            )
            errors = dict(ok)
            for r, _err in ok:
                c = estimate(r, spec, pass_, k)
                if c.seconds <= MEASURE_WINDOW * best_est and (
                    limit is None or c.min_bytes <= limit
                ):
                    cands.append((r, c))
            times = _time_candidates([r for r, _ in cands], spec, pass_, ops)
            costs = []
            for (r, c), t in zip(cands, times):
                timings.setdefault(_route_key(r), {})[pass_] = t
                costs.append((r, t, c))
            (route, sec, nbytes), runner = _pick(costs, limit, spec, pass_)
            choices[pass_] = Choice(route, sec, nbytes, runner, True, errors[route])
    store.put_decision(
        key,
        {
            p: {
                "route": c.route.to_json(),
                "seconds": c.seconds,
                "bytes": c.bytes,
                "runner_up": [c.runner_up[0].to_json(), c.runner_up[1]] if c.runner_up else None,
                "error": c.error,
            }
            for p, c in choices.items()
        },
    )
    return _make_plan(spec, "measure", choices, limit, timings, tol, est.notes)


def _route_key(r: Route) -> str:
    return r.label() + (f" {'x'.join(map(str, r.tile))}" if r.tile else "")


def _plan_from_stored(
    spec: ConvSpec,
    limit: int | None,
    stored: dict[str, Any],
    tol: float | None = None,
    notes: tuple[str, ...] = (),
) -> Plan:
    choices = {}
    for p in PASSES:
        d = stored[p]
        ru = d.get("runner_up")
        runner = (Route.from_json(ru[0]), float(ru[1])) if ru else None
        err = d.get("error")
        choices[p] = Choice(
            Route.from_json(d["route"]),
            float(d["seconds"]),
            int(d["bytes"]),
            runner,
            True,
            None if err is None else float(err),
        )
    return _make_plan(spec, "measure", choices, limit, tol=tol, notes=notes)


METHOD_NAMES = ("auto", "fft", "fft_tiled", "direct")


def forced_plan(spec: ConvSpec, algorithm: str) -> Plan:
    """A plan computing every pass by ``algorithm`` (``method="fft"`` etc.), estimate mode.

    For ``"fft_tiled"`` the tile size is the one the cost model prefers; a layer whose maps are
    no larger than one tile has no tiled route and gets a clear error.
    """
    key = ("forced", spec, algorithm, get_num_threads())
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            return hit
    routes = [r for r in candidate_routes(spec) if r.algorithm == algorithm and not r.prep]
    if not routes:
        raise ValueError(
            f"method: {algorithm!r} does not apply to {describe_spec(spec)}: its output is no "
            "larger than one tile (use 'fft' or 'auto')"
        )
    k = constants()
    choices = {}
    for pass_ in PASSES:
        costs = []
        for r in routes:
            c = estimate(r, spec, pass_, k)
            costs.append((r, c.seconds, c))
        (route, sec, nbytes), runner = _pick(costs, None, spec, pass_)
        choices[pass_] = Choice(route, sec, nbytes, runner)
    p = _make_plan(spec, f"forced {algorithm}", choices, None)
    with _cache_lock:
        _cache[key] = p
    return p


def check_method(method: Any) -> None:
    """``method=`` must be a :class:`Plan` or one of :data:`METHOD_NAMES`."""
    if isinstance(method, Plan):
        return
    if not isinstance(method, str) or method not in METHOD_NAMES:
        raise ValueError(
            f"method: expected one of {', '.join(map(repr, METHOD_NAMES))} or a Plan from "
            f"fftbp.plan(), got {method!r}"
        )


def resolve(
    method: Any,
    spec: ConvSpec,
    *,
    reuse: bool = False,
    native: bool = False,
    tol: float | None = None,
    dyn: dict[str, DataRange] | None = None,
    passes: tuple[str, ...] = PASSES,
) -> Plan:
    """The plan behind a ``method=`` argument: a :class:`Plan`, ``"auto"`` or an algorithm
    (``native``: ``"auto"`` may choose PyTorch's convolution too). With ``tol``, ``"auto"``
    plans for it, and any plan whose route for one of ``passes`` is predicted above it on
    data of range ``dyn`` is refused with a ``ValueError``."""
    check_method(method)
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
