"""The one executor: every pass of every route runs through :func:`run_pass` (stateless calls)
or :func:`forward_train` / :func:`backward_train` (a training step that reuses spectra).

A route (:class:`~fftbp.planning.routes.Route`) is a base kernel after a chain of reductions
(:mod:`fftbp.planning.reductions`), optionally computed in float64. The executor

* fixes the call's settings once (:func:`fftbp._config.call_settings`): thread count and
  workspace limit, so that a setting changed by another thread never changes a running call;
* chunks the batch so that the workspace (:mod:`fftbp.planning.workspace`) stays within the
  limit, or raises ``MemoryError`` when one sample does not fit;
* applies the reductions' index maps around the base kernel: ``fft`` (whole maps), ``direct``,
  or a base registered by a higher layer (:func:`register_base`; :mod:`fftbp.torch` registers
  PyTorch's convolution as ``torch``).

State between the passes of a step is a :class:`Residuals` value that forward returns and
backward consumes; the only state a layer keeps between steps is the weight's spectrum, a pure
function of the weight (:class:`WeightSpectra`), and a pool of buffers lent to one call at a
time.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyfftw

from fftbp._config import CallSettings, WorkspaceWarning, call_settings, physical_memory
from fftbp._params import ConvSpec, Pass
from fftbp.kernels import direct as _direct
from fftbp.kernels import fft as _fft
from fftbp.kernels import fft_depthwise as _fdw
from fftbp.planning.decision import Plan, describe_spec, format_bytes
from fftbp.planning.routes import Route
from fftbp.planning.workspace import Workspace, workspace

__all__ = [
    "Base",
    "Residuals",
    "WeightSpectra",
    "backward_train",
    "forward_train",
    "register_base",
    "run_pass",
]

_FFT = Route("fft")


# -- base kernels ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Base:
    """A base kernel's three passes on numpy operands of one (inner) layer."""

    forward: Callable[[ConvSpec, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]
    input_grad: Callable[[ConvSpec, np.ndarray, np.ndarray], np.ndarray]
    weight_grad: Callable[[ConvSpec, np.ndarray, np.ndarray], np.ndarray]


_bases: dict[str, Base] = {}


def register_base(name: str, base: Base) -> None:
    """Make ``Route(name)`` runnable (how :mod:`fftbp.torch` adds PyTorch's convolution)."""
    _bases[name] = base


def has_base(name: str) -> bool:
    return name in ("fft", "direct") or name in _bases


def _fft_forward(
    spec: ConvSpec, x: np.ndarray, w: np.ndarray, b: Any, pool: _fft.SpectrumPool | None = None
) -> np.ndarray:
    lay = _fft.layout(spec)
    if spec.is_depthwise:
        return _fdw.forward(lay, x, _fdw.weight_spectrum(lay, w), b, keep_xf=False)[0]
    return _fft.forward(lay, x, _fft.weight_spectrum(lay, w), b, pool)


def _fft_input_grad(
    spec: ConvSpec, w: np.ndarray, g: np.ndarray, pool: _fft.SpectrumPool | None = None
) -> np.ndarray:
    lay = _fft.layout(spec)
    if spec.is_depthwise:
        return _fdw.backward(lay, g, _fdw.weight_spectrum(lay, w), need_dw=False)[0]
    return _fft.input_grad(lay, _fft.weight_spectrum(lay, w), g, pool)


def _fft_weight_grad(
    spec: ConvSpec, x: np.ndarray, g: np.ndarray, pool: _fft.SpectrumPool | None = None
) -> np.ndarray:
    lay = _fft.layout(spec)
    if spec.is_depthwise:
        return _fdw.backward(lay, g, None, x=x, need_dx=False)[1]
    return _fft.weight_grad(lay, x, g, spec.batch, pool)


_BUILTIN = {
    "fft": Base(_fft_forward, _fft_input_grad, _fft_weight_grad),
    "direct": Base(_direct.forward, _direct.input_grad, _direct.weight_grad),
}


def _base(name: str) -> Base:
    base = _BUILTIN.get(name) or _bases.get(name)
    if base is None:
        raise RuntimeError(
            f"route: the base {name!r} is not registered; "
            + (
                "import fftbp.torch first (it registers PyTorch's convolution)"
                if name == "torch"
                else f"known bases: {', '.join(sorted({*_BUILTIN, *_bases}))}"
            )
        )
    return base


# -- one route, one pass -------------------------------------------------------------------------
def _once(
    route: Route,
    spec: ConvSpec,
    pass_: Pass,
    a: np.ndarray,
    b: np.ndarray,
    bias: Any,
    pool: _fft.SpectrumPool | None = None,
) -> np.ndarray:
    """``pass_`` by ``route`` on the whole batch of ``spec`` (operands already validated;
    ``pool``: spectrum buffers shared by the chunks of one call)."""
    if route.precision and spec.dtype == np.float32:
        wide = replace(spec, dtype=np.dtype(np.float64))
        f64 = [None if v is None else v.astype(np.float64) for v in (a, b, bias)]
        out = _once(replace(route, precision=""), wide, pass_, *f64, pool)
        return out.astype(spec.dtype)
    chain = route.reductions(spec)
    inner = chain[-1].inner if chain else spec
    base = _base(route.base)
    if route.base == "fft" and pool is not None:
        base = Base(
            lambda s, x, w, b_: _fft_forward(s, x, w, b_, pool),
            lambda s, w, g: _fft_input_grad(s, w, g, pool),
            lambda s, x, g: _fft_weight_grad(s, x, g, pool),
        )

    def into(attr: str, v: np.ndarray) -> np.ndarray:
        for r in chain:
            v = getattr(r, attr)(v)
        return v

    def out_of(attr: str, v: np.ndarray) -> np.ndarray:
        for r in reversed(chain):
            v = getattr(r, attr)(v)
        return v

    if pass_ == Pass.FORWARD:
        return out_of("y_out", base.forward(inner, into("x_in", a), into("w_in", b), bias))
    if pass_ == Pass.INPUT_GRAD:
        return out_of("dx_out", base.input_grad(inner, into("w_in", a), into("g_in", b)))
    return out_of("dw_out", base.weight_grad(inner, into("x_in", a), into("g_in", b)))


def _chunk(memory: Workspace, spec: ConvSpec, route: Route, pass_: Pass, call: CallSettings) -> int:
    """Samples per chunk within the call's limit. When one sample does not fit: a
    :class:`~fftbp._config.WorkspaceWarning` and one sample at a time, or ``MemoryError`` when
    one sample needs more than this machine's memory."""
    n = memory.chunk(spec.batch, call.limit)
    if n >= 1:
        return n
    one = memory.at(1)
    what = f"the {pass_.value} pass of {describe_spec(spec)} by {route.label()}"
    if one > physical_memory():
        raise MemoryError(
            f"{what} needs {format_bytes(one)} of workspace for one sample, more than this "
            f"machine's memory ({format_bytes(physical_memory())})"
        )
    warnings.warn(
        f"workspace: {what} needs {format_bytes(one)} for one sample, more than the limit of "
        f"{format_bytes(call.limit)} (fftbp.set_workspace_limit); computing one sample at a "
        "time; plan with memory_limit= to choose a route that fits",
        WorkspaceWarning,
        stacklevel=4,
    )
    return 1


def _sub(spec: ConvSpec, n: int) -> ConvSpec:
    return spec if n == spec.batch else replace(spec, batch=n)


def run_pass(
    route: Route,
    spec: ConvSpec,
    pass_: Pass | str,
    a: np.ndarray,
    b: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    limit: int | None = None,
) -> np.ndarray:
    """Run ``pass_`` of ``spec`` by ``route``: forward ``(x, w, bias)``, input gradient
    ``(w, grad_output)``, weight gradient ``(x, grad_output)``; in batch chunks within the
    workspace limit (``limit``, default the global one)."""
    pass_ = Pass(pass_)
    with call_settings(limit) as call:
        memory = workspace(route, spec, pass_, call.threads)
        n = _chunk(memory, spec, route, pass_, call)
        if route == _FFT and not spec.is_depthwise and n < spec.batch:
            return _fft_chunked(spec, pass_, a, b, bias, n, None)
        if n >= spec.batch:
            return _once(route, spec, pass_, a, b, bias)
        return _chunked(route, spec, pass_, a, b, bias, n)


def _chunked(
    route: Route,
    spec: ConvSpec,
    pass_: Pass,
    a: np.ndarray,
    b: np.ndarray,
    bias: Any,
    n: int,
) -> np.ndarray:
    """``pass_`` by ``route`` over chunks of ``n`` samples (their spectra reuse one set of
    buffers: a plan's arrays from the last chunk are not kept beside the next chunk's)."""
    pool = _fft.SpectrumPool()
    if pass_ == Pass.WEIGHT_GRAD:
        total = None
        for n0 in range(0, spec.batch, n):
            sub = _sub(spec, min(n, spec.batch - n0))
            part = _once(route, sub, pass_, a[n0 : n0 + n], b[n0 : n0 + n], None, pool)
            if total is None:
                total = part
            else:
                total += part
        return total
    shape = spec.output_shape if pass_ == Pass.FORWARD else spec.input_shape
    out = np.empty(shape, dtype=spec.dtype)
    for n0 in range(0, spec.batch, n):
        sub = _sub(spec, min(n, spec.batch - n0))
        if pass_ == Pass.FORWARD:
            out[n0 : n0 + n] = _once(route, sub, pass_, a[n0 : n0 + n], b, bias, pool)
        else:
            out[n0 : n0 + n] = _once(route, sub, pass_, a, b[n0 : n0 + n], None, pool)
    return out


def _fft_chunked(
    spec: ConvSpec,
    pass_: Pass,
    a: np.ndarray,
    b: np.ndarray,
    bias: Any,
    n: int,
    wf: np.ndarray | None,
    pool: _fft.SpectrumPool | None = None,
) -> np.ndarray:
    """Whole-map FFT of a dense layer over chunks of ``n`` samples: one weight spectrum for
    every chunk, and the weight gradient accumulated in the frequency domain."""
    lay = _fft.layout(spec)
    pool = pool or _fft.SpectrumPool()  # the chunks reuse one set of buffers
    if pass_ == Pass.WEIGHT_GRAD:
        return _fft.weight_grad(lay, a, b, n, pool)
    if wf is None:
        wf = _fft.weight_spectrum(lay, b if pass_ == Pass.FORWARD else a)
    if pass_ == Pass.FORWARD:
        y = np.empty(spec.output_shape, dtype=spec.dtype)
        for n0 in range(0, spec.batch, n):
            y[n0 : n0 + n] = _fft.forward(lay, a[n0 : n0 + n], wf, bias, pool)
        return y
    dx = np.empty(spec.input_shape, dtype=spec.dtype)
    for n0 in range(0, spec.batch, n):
        dx[n0 : n0 + n] = _fft.input_grad(lay, wf, b[n0 : n0 + n], pool)
    return dx


# -- a training step: spectra shared between passes ----------------------------------------------
@dataclass(frozen=True)
class _WeightState:
    """A snapshot of the weight and the spectra made from it (layout key -> Wf)."""

    snapshot: np.ndarray
    spectra: dict[tuple[Any, ...], np.ndarray]


class WeightSpectra:
    """The weight's spectra of one layer, made once per weight value (thread-safe).

    A spectrum is a pure function of the weight: :meth:`refresh` compares the weight with the
    snapshot the spectra were made from, and starts over when it changed (``w -= lr * dw``
    in place included). Two threads may compute the same spectrum at once; both are right.
    """

    def __init__(self) -> None:
        self._state: _WeightState | None = None
        self._lock = threading.Lock()

    def refresh(self, w: np.ndarray) -> np.ndarray:
        """The current snapshot of ``w`` (a new one if ``w`` changed since the last)."""
        state = self._state
        if state is not None and np.array_equal(w, state.snapshot):
            return state.snapshot
        new = _WeightState(np.array(w, copy=True), {})
        new.snapshot.flags.writeable = False
        with self._lock:
            self._state = new
        return new.snapshot

    def changed_since(self, w: np.ndarray, snapshot: np.ndarray | None) -> bool:
        return snapshot is None or not np.array_equal(w, snapshot)

    def get(self, lay: _fft.FFTLayout, snapshot: np.ndarray) -> np.ndarray:
        """Wf of ``snapshot`` for ``lay`` (computed on first use)."""
        state = self._state
        if state is None or state.snapshot is not snapshot:
            state = _WeightState(snapshot, {})  # an older snapshot: compute, do not keep
        depthwise = lay.spec.is_depthwise
        key = (lay.shape, lay.spec.kernel, lay.spec.dilation, lay.spec.groups, depthwise)
        wf = state.spectra.get(key)
        if wf is None:
            make = _fdw.weight_spectrum if depthwise else _fft.weight_spectrum
            wf = make(lay, snapshot)
            wf.flags.writeable = False
            with self._lock:
                state.spectra[key] = wf
        return wf


@dataclass(frozen=True)
class Residuals:
    """What a forward pass keeps for its backward pass: the layer, the plan and the limit it
    ran under, the weight snapshot it used, and ``x`` or its spectrum ``xf``."""

    spec: ConvSpec
    plan: Plan
    limit: int
    snapshot: np.ndarray | None
    x: np.ndarray | None
    xf: np.ndarray | None


def _keep_pool(res: Residuals, pool: _fft.SpectrumPool | None, buf: np.ndarray | None) -> None:
    """Give ``buf`` back to ``pool`` when ``res`` is garbage (nobody can reach it then)."""
    if pool is not None and buf is not None:
        give = pool.give if res.spec.is_depthwise else pool.give_spectrum
        weakref.finalize(res, give, buf)


def forward_train(
    plan: Plan,
    spec: ConvSpec,
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    weights: WeightSpectra,
    *,
    weight_grad: bool = True,
    keep_x: bool = False,
    copy_x: bool = True,
    snapshot: bool = False,
    pool: _fft.SpectrumPool | None = None,
) -> tuple[np.ndarray, Residuals]:
    """The forward pass of a training step and what its backward pass needs.

    By whole-map FFT the input's spectrum is kept for the weight gradient when that is by
    whole-map FFT too and the whole batch fits the limit; otherwise ``x`` is kept (copied
    unless ``copy_x=False``: the caller guarantees it stays unchanged, as torch's saved
    tensors do). ``weight_grad=False`` keeps nothing for a weight gradient; ``keep_x=True``
    keeps ``x`` in any case (``tol=`` re-plans the gradients on grad_output's range);
    ``snapshot=True`` takes a weight snapshot whatever the route (for a later in-place check).
    """
    routes = {p: plan.choice(p).route for p in Pass}
    with call_settings(plan.memory_limit) as call:
        snap = weights.refresh(w) if snapshot else None
        xf = None
        if routes[Pass.FORWARD] == _FFT:
            snap = weights.refresh(w) if snap is None else snap
            lay = _fft.layout(spec)
            wf = weights.get(lay, snap)
            want_xf = weight_grad and routes[Pass.WEIGHT_GRAD] == _FFT
            memory = workspace(_FFT, spec, Pass.FORWARD, call.threads, keep_x=want_xf)
            n = _chunk(memory, spec, _FFT, Pass.FORWARD, call)
            if want_xf and n < spec.batch:  # keeping Xf does not fit: keep x instead
                memory = workspace(_FFT, spec, Pass.FORWARD, call.threads)
                n, want_xf = _chunk(memory, spec, _FFT, Pass.FORWARD, call), False
            if spec.is_depthwise:
                xf_out = None
                if want_xf:
                    shape = (spec.batch * spec.in_channels, *lay.half_shape)
                    dtype = lay.complex_dtype
                    make = lambda: pyfftw.empty_aligned(shape, dtype=dtype, n=64)  # noqa: E731
                    xf_out = pool.take(shape, dtype, make) if pool is not None else make()
                y, xf = _fdw.forward(lay, x, wf, bias, keep_xf=want_xf, xf_out=xf_out)
            elif want_xf:
                xf = _fft.input_spectrum(lay, x, pool)
                y = _fft.forward_from_spectra(lay, xf, wf, bias, pool)
            else:
                y = _fft_chunked(spec, Pass.FORWARD, x, wf, bias, n, wf, pool)
        else:
            y = run_pass(routes[Pass.FORWARD], spec, Pass.FORWARD, x, w, bias)
        kept_x = None
        if weight_grad and (xf is None or keep_x):
            kept_x = np.array(x, copy=True) if copy_x else x
        res = Residuals(spec, plan, call.limit, snap, kept_x, xf)
    _keep_pool(res, pool, xf)
    return y, res


def backward_train(
    res: Residuals,
    g: np.ndarray,
    w: np.ndarray,
    weights: WeightSpectra,
    *,
    input_grad: bool = True,
    weight_grad: bool = True,
    routes: dict[Pass, Route] | None = None,
    pool: _fft.SpectrumPool | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Input and weight gradients of the forward pass that made ``res``, under the limit it ran
    under, from what it kept (``routes``: the gradients' routes, default the plan's)."""
    spec = res.spec
    routes = routes or {p: res.plan.choice(p).route for p in Pass}
    fft_dx = input_grad and routes[Pass.INPUT_GRAD] == _FFT
    fft_dw = weight_grad and routes[Pass.WEIGHT_GRAD] == _FFT and res.xf is not None
    if weight_grad and not fft_dw and res.x is None:
        raise RuntimeError("backward: the forward pass kept nothing for a weight gradient")
    dx = dw = None
    with call_settings(res.limit) as call:
        if fft_dx or fft_dw:
            lay = _fft.layout(spec)
            snapshot = res.snapshot if res.snapshot is not None else weights.refresh(w)
            wf = weights.get(lay, snapshot) if fft_dx else None
            if spec.is_depthwise:
                dx, dw = _fdw.backward(
                    lay, g, wf, xf=res.xf if fft_dw else None, need_dx=fft_dx, need_dw=fft_dw
                )
            else:
                memory = workspace(_FFT, spec, Pass.INPUT_GRAD, call.threads)
                n = _chunk(memory, spec, _FFT, Pass.INPUT_GRAD, call)
                if n >= spec.batch:  # one transform of grad_output serves both gradients
                    gf = _fft.grad_spectrum(lay, g, pool)
                    if fft_dx:
                        dx = _fft.input_grad_from_spectra(lay, gf, wf, pool)
                    if fft_dw:
                        dwf = _fft.weight_grad_spectrum(lay, res.xf, gf, pool=pool)
                        dw = _fft.weight_grad_from_spectra(lay, dwf, pool)
                    if pool is not None:
                        pool.give_spectrum(gf)
                else:
                    if fft_dx:
                        dx = _fft_chunked(spec, Pass.INPUT_GRAD, w, g, None, n, wf, pool)
                    if fft_dw:  # the kept spectrum covers the batch: only Gf is chunked
                        dwf = None
                        chunks = _fft.SpectrumPool()
                        c = spec.in_channels
                        for n0 in range(0, spec.batch, n):
                            xf_part = res.xf[..., n0 * c : (n0 + n) * c]
                            gf = _fft.grad_spectrum(lay, g[n0 : n0 + n], chunks)
                            dwf = _fft.weight_grad_spectrum(lay, xf_part, gf, dwf)
                            chunks.give_spectrum(gf)
                        dw = _fft.weight_grad_from_spectra(lay, dwf)
        if input_grad and dx is None:
            dx = run_pass(routes[Pass.INPUT_GRAD], spec, Pass.INPUT_GRAD, w, g)
        if weight_grad and dw is None:
            dw = run_pass(routes[Pass.WEIGHT_GRAD], spec, Pass.WEIGHT_GRAD, res.x, g)
    return dx, dw
