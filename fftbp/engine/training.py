"""A training step through the engine: forward keeps what backward needs, spectra are shared.

State between the passes of a step is a :class:`Residuals` value that :func:`forward_train`
returns and :func:`backward_train` consumes; the only state a layer keeps between steps is the
weight's spectrum, a pure function of the weight (:class:`WeightSpectra`), and a pool of
buffers lent to one call at a time (:class:`~fftbp.kernels.layout.SpectrumPool`).
Every pass that does not share spectra runs through :func:`fftbp.engine.executor.run_pass`.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyfftw

from fftbp._arrays import parallel_copied
from fftbp._config import call_settings, parallel_for
from fftbp._params import ConvSpec, Pass
from fftbp.engine.executor import chunk_within, fft_chunked, run_pass
from fftbp.kernels import fft as _fft
from fftbp.kernels import fft_depthwise as _fdw
from fftbp.kernels.layout import spectrum_ld
from fftbp.planning.decision import Plan
from fftbp.planning.routes import Route
from fftbp.planning.workspace import workspace

__all__ = [
    "Residuals",
    "WeightSpectra",
    "backward_train",
    "equal_values",
    "forward_train",
    "keeps_spectrum",
    "spectrum_buffer",
]

_FFT = Route("fft")


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

    #: spectra kept per weight value (one per transform geometry: input sizes may vary)
    MAX_SPECTRA = 4

    def __init__(self) -> None:
        self._state: _WeightState | None = None
        self._lock = threading.Lock()

    def refresh(self, w: np.ndarray) -> np.ndarray:
        """The current snapshot of ``w`` (a new one if ``w`` changed since the last)."""
        state = self._state
        if state is not None and same_weight(w, state.snapshot):
            return state.snapshot
        new = _WeightState(parallel_copied(w), {})
        new.snapshot.flags.writeable = False
        with self._lock:
            self._state = new
        return new.snapshot

    def get(self, lay: _fft.FFTLayout, snapshot: np.ndarray) -> np.ndarray:
        """Wf of ``snapshot`` for ``lay`` (computed on first use)."""
        state = self._state
        if state is None or state.snapshot is not snapshot:
            state = _WeightState(snapshot, {})  # an older snapshot: compute, do not keep
        s = lay.spec
        key = (lay.shape, s.kernel, s.dilation, s.groups, s.is_depthwise, s.dtype.str)
        wf = state.spectra.get(key)
        if wf is None:
            make = _fdw.weight_spectrum if s.is_depthwise else _fft.weight_spectrum
            wf = make(lay, snapshot)
            wf.flags.writeable = False
            with self._lock:
                state.spectra[key] = wf
                while len(state.spectra) > self.MAX_SPECTRA:
                    del state.spectra[next(iter(state.spectra))]
        return wf


#: weights of at least this many bytes are compared by the worker threads (on two workers
#: the caller alone is faster below 16 MB: 1 MB 159 against 63 us, 16 MB 1041 / 1130 us; they
#: are split for many-core machines all the same, see fftbp._arrays.PARALLEL_COPY_BYTES)
PARALLEL_COMPARE_BYTES = 512 << 10
#: ... in pieces of this size
_PIECE_BYTES = 256 << 10
#: bytes compared before the pieces: where a weight changed by a training step shows at once
_HEAD_BYTES = 16 << 10


def same_weight(w: np.ndarray, snapshot: np.ndarray | None) -> bool:
    """Whether ``w`` still holds ``snapshot``'s values, bit for bit (a NaN left in place is
    unchanged; a -0.0 that became 0.0 counts as a change, which costs a recomputed spectrum).

    Compared as unsigned integers (14x faster than ``np.array_equal(..., equal_nan=True)``:
    0.11 against 1.6 ms for a 4 MB weight), the first 16 KB first (a training step changes
    every element, so that is where a changed weight shows), then the rest, in pieces by the
    worker threads when large: it runs at every forward and backward pass, outside the
    kernels' parallel parts.
    """
    if snapshot is None or w.shape != snapshot.shape or w.dtype != snapshot.dtype:
        return False
    bits = np.dtype(f"u{w.dtype.itemsize}")
    a, b = w.view(bits), snapshot.view(bits)
    if not (a.flags.c_contiguous and b.flags.c_contiguous):
        return bool(np.array_equal(a, b))
    a, b = a.reshape(-1), b.reshape(-1)
    step, head = _PIECE_BYTES // a.itemsize, _HEAD_BYTES // a.itemsize
    if not np.array_equal(a[:head], b[:head]):
        return False
    if w.nbytes < max(PARALLEL_COMPARE_BYTES, 2 * _PIECE_BYTES):
        return bool(np.array_equal(a[head:], b[head:]))
    differ = []

    def compare(_slot: int, i0: int, i1: int) -> None:
        if not differ and not np.array_equal(a[i0:i1], b[i0:i1]):
            differ.append(i0)

    parallel_for(compare, a.size, step)
    return not differ


def equal_values(w: np.ndarray, snapshot: np.ndarray | None) -> bool:
    """Whether ``w`` equals ``snapshot`` as numbers (NaN equal to NaN, -0.0 equal to 0.0): the
    slow check, for when :func:`same_weight` says the bits changed."""
    return snapshot is not None and np.array_equal(w, snapshot, equal_nan=True)


@dataclass(frozen=True)
class Residuals:
    """What a forward pass keeps for its backward pass: the layer, the plan and the limit it
    ran under, the weight it ran with (``weight``: the caller's array, None when no input
    gradient will be asked for, which must be unchanged
    at backward: :class:`fftbp.Conv` checks it against ``snapshot``, torch's saved tensors
    check their version), the
    snapshot its weight spectra were made from, and ``x`` or its spectrum ``xf``."""

    spec: ConvSpec
    plan: Plan
    limit: int
    weight: np.ndarray | None
    snapshot: np.ndarray | None
    x: np.ndarray | None
    xf: np.ndarray | None


def _lend(pool: _fft.SpectrumPool | None, buf: np.ndarray | None, depthwise: bool) -> None:
    """Give ``buf``'s memory back to ``pool`` when the array ``buf`` itself is garbage: every
    value that can reach it (a ``Residuals`` and any copy of it) is gone by then."""
    if pool is not None and buf is not None:
        if depthwise:
            weakref.finalize(buf, pool.give, buf.view())
        else:
            weakref.finalize(buf, pool.give_spectrum, pool.whole(buf))


def keeps_spectrum(plan: Plan, threads: int, limit: int) -> bool:
    """Whether a training forward pass under ``plan`` keeps the input's spectrum for the weight
    gradient: both passes by whole-map FFT, and the whole batch's spectra within ``limit``."""
    if plan.choice(Pass.FORWARD).route != _FFT or plan.choice(Pass.WEIGHT_GRAD).route != _FFT:
        return False
    kept = workspace(_FFT, plan.spec, Pass.FORWARD, threads, keep_x=True)
    return kept.chunk(plan.spec.batch, limit) >= plan.spec.batch


def spectrum_buffer(spec: ConvSpec) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a whole buffer that a kept input spectrum is written into (the
    frequency-major layout of dense layers has a padded leading dimension)."""
    lay = _fft.layout(spec)
    maps = spec.batch * spec.in_channels
    if spec.is_depthwise:
        return (maps, *lay.half_shape), lay.complex_dtype
    return (*lay.half_shape, spectrum_ld(maps)), lay.complex_dtype


def _spectrum_in(spec: ConvSpec, buf: np.ndarray) -> np.ndarray:
    """The spectrum within a :func:`spectrum_buffer`-shaped buffer."""
    return buf if spec.is_depthwise else buf[..., : spec.batch * spec.in_channels]


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
    xf_out: np.ndarray | None = None,
) -> tuple[np.ndarray, Residuals]:
    """The forward pass of a training step and what its backward pass needs.

    By whole-map FFT the input's spectrum is kept for the weight gradient when that is by
    whole-map FFT too and the whole batch fits the limit; otherwise ``x`` is kept (copied
    unless ``copy_x=False``: the caller guarantees it stays unchanged, as torch's saved
    tensors do). ``weight_grad=False`` keeps nothing for a weight gradient; ``keep_x=True``
    keeps ``x`` in any case (``tol=`` re-plans the gradients on grad_output's range);
    ``snapshot=True`` takes a weight snapshot whatever the route (for a later in-place check).
    ``xf_out`` (a :func:`spectrum_buffer`, owned by the caller) receives the input spectrum; the
    caller decided with :func:`keeps_spectrum` that it is kept.
    """
    routes = {p: plan.choice(p).route for p in Pass}
    with call_settings(plan.memory_limit) as call:
        snap = weights.refresh(w) if snapshot else None
        xf = None
        if routes[Pass.FORWARD] == _FFT:
            snap = weights.refresh(w) if snap is None else snap
            lay = _fft.layout(spec)
            wf = weights.get(lay, snap)
            if xf_out is not None:
                want_xf = True
            else:  # keeping Xf may not fit: keep x instead
                want_xf = weight_grad and keeps_spectrum(plan, call.threads, call.limit)
            memory = workspace(_FFT, spec, Pass.FORWARD, call.threads, keep_x=want_xf)
            n = chunk_within(memory, spec, _FFT, Pass.FORWARD, call)
            if spec.is_depthwise:
                buf = xf_out
                if want_xf and buf is None:
                    shape, dtype = spectrum_buffer(spec)
                    make = lambda: pyfftw.empty_aligned(shape, dtype=dtype, n=64)  # noqa: E731
                    buf = pool.take(shape, dtype, make) if pool is not None else make()
                y, xf = _fdw.forward(lay, x, wf, bias, keep_xf=want_xf, xf_out=buf)
                assert xf_out is None or xf is xf_out
            elif want_xf:
                out = None if xf_out is None else _spectrum_in(spec, xf_out)
                xf = _fft.input_spectrum(lay, x, pool, out)
                y = _fft.forward_from_spectra(lay, xf, wf, bias, pool)
            else:
                y = fft_chunked(spec, Pass.FORWARD, x, wf, bias, n, wf, pool)
        else:
            y = run_pass(routes[Pass.FORWARD], spec, Pass.FORWARD, x, w, bias, pool=pool)
        kept_x = None
        if weight_grad and (xf is None or keep_x):
            kept_x = parallel_copied(x) if copy_x else x
        res = Residuals(spec, plan, call.limit, w, snap, kept_x, xf)
    if xf_out is None:
        _lend(pool, xf, spec.is_depthwise)
    return y, res


def backward_train(
    res: Residuals,
    g: np.ndarray,
    weights: WeightSpectra,
    *,
    input_grad: bool = True,
    weight_grad: bool = True,
    routes: dict[Pass, Route] | None = None,
    pool: _fft.SpectrumPool | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Input and weight gradients of the forward pass that made ``res``, under the limit it ran
    under, from what it kept, with the weight it ran with (``routes``: the gradients' routes,
    default the plan's)."""
    spec, w = res.spec, res.weight
    routes = routes or {p: res.plan.choice(p).route for p in Pass}
    fft_dx = input_grad and routes[Pass.INPUT_GRAD] == _FFT
    fft_dw = weight_grad and routes[Pass.WEIGHT_GRAD] == _FFT and res.xf is not None
    if weight_grad and not fft_dw and res.x is None:
        raise RuntimeError("backward: the forward pass kept nothing for a weight gradient")
    if input_grad and w is None:
        raise RuntimeError("backward: the residuals hold no weight for an input gradient")
    dx = dw = None
    with call_settings(res.limit) as call:
        if fft_dx or fft_dw:
            lay = _fft.layout(spec)
            wf = None
            if fft_dx:
                snapshot = res.snapshot if res.snapshot is not None else weights.refresh(w)
                wf = weights.get(lay, snapshot)
            memory = workspace(_FFT, spec, Pass.INPUT_GRAD, call.threads)
            n = chunk_within(memory, spec, _FFT, Pass.INPUT_GRAD, call)
            if spec.is_depthwise:  # no workspace per sample: the batch is one chunk
                dx, dw = _fdw.backward(
                    lay, g, wf, xf=res.xf if fft_dw else None, need_dx=fft_dx, need_dw=fft_dw
                )
            else:
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
                        dx = fft_chunked(spec, Pass.INPUT_GRAD, w, g, None, n, wf, pool)
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
            dx = run_pass(routes[Pass.INPUT_GRAD], spec, Pass.INPUT_GRAD, w, g, pool=pool)
        if weight_grad and dw is None:
            dw = run_pass(routes[Pass.WEIGHT_GRAD], spec, Pass.WEIGHT_GRAD, res.x, g, pool=pool)
    return dx, dw
