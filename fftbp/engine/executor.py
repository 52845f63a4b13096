"""The one executor: every pass of every route runs through :func:`run_pass`, for the
stateless functions and, through :mod:`fftbp.engine.training` (a training step that reuses
spectra between its passes), for :class:`fftbp.Conv` and :mod:`fftbp.torch`.

A route (:class:`~fftbp.planning.routes.Route`) is a base kernel after a chain of reductions
(:mod:`fftbp.planning.reductions`), optionally computed in float64. The executor

* fixes the call's settings once (:func:`fftbp._config.call_settings`): thread count and
  workspace limit, so that a setting changed by another thread never changes a running call;
* chunks the batch so that the workspace (:mod:`fftbp.planning.workspace`) stays within the
  limit, or raises ``MemoryError`` when one sample does not fit;
* applies the reductions' index maps around the base kernel: ``fft`` (whole maps), ``direct``,
  or a base registered by a higher layer (:func:`register_base`; :mod:`fftbp.torch` registers
  PyTorch's convolution as ``torch``).

"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fftbp._config import CallSettings, WorkspaceWarning, call_settings, physical_memory
from fftbp._params import ConvSpec, Pass
from fftbp.kernels import direct as _direct
from fftbp.kernels import fft as _fft
from fftbp.kernels import fft_depthwise as _fdw
from fftbp.planning.decision import describe_spec, format_bytes
from fftbp.planning.routes import Route
from fftbp.planning.workspace import Workspace, workspace

__all__ = ["Base", "chunk_within", "fft_chunked", "has_base", "register_base", "run_pass"]

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
    """Whether ``Route(name)`` can run (built in, or registered)."""
    return name in _BUILTIN or name in _bases


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


def chunk_within(
    memory: Workspace, spec: ConvSpec, route: Route, pass_: Pass, call: CallSettings
) -> int:
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
        f"{format_bytes(call.limit)} (fftbp.set_workspace_limit); computing with the least "
        "workspace the route allows; plan with memory_limit= to choose a route that fits",
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
    pool: _fft.SpectrumPool | None = None,
) -> np.ndarray:
    """Run ``pass_`` of ``spec`` by ``route``: forward ``(x, w, bias)``, input gradient
    ``(w, grad_output)``, weight gradient ``(x, grad_output)``; in batch chunks within the
    workspace limit (``limit``, default the global one). ``pool``: the caller's spectrum
    buffers (a layer's, reused from step to step: a fresh 40 MB buffer costs its page faults,
    and freeing it its unmapping, 1 ms or more here)."""
    pass_ = Pass(pass_)
    with call_settings(limit) as call:
        memory = workspace(route, spec, pass_, call.threads)
        n = chunk_within(memory, spec, route, pass_, call)
        if route == _FFT and not spec.is_depthwise and n < spec.batch:
            return fft_chunked(spec, pass_, a, b, bias, n, None, pool)
        if n >= spec.batch:
            return _once(route, spec, pass_, a, b, bias, pool)
        return _chunked(route, spec, pass_, a, b, bias, n, pool)


def _chunked(
    route: Route,
    spec: ConvSpec,
    pass_: Pass,
    a: np.ndarray,
    b: np.ndarray,
    bias: Any,
    n: int,
    pool: _fft.SpectrumPool | None = None,
) -> np.ndarray:
    """``pass_`` by ``route`` over chunks of ``n`` samples (their spectra reuse one set of
    buffers: a plan's arrays from the last chunk are not kept beside the next chunk's)."""
    pool = pool or _fft.SpectrumPool()
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


def fft_chunked(
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
