"""Depthwise FFT kernels (``groups == C``): fused per-map pipelines in natural layout.

The algebra is that of :mod:`fftbp.kernels.fft` (``docs/algebra.md``); only the channel
contraction changes: with one input channel per group and ``m = F // C`` outputs per channel,

    forward:      Yf[n, c*m+j] = Xf[n, c] * Wf[c*m+j]
    input grad:   DXf[n, c]    = sum_j Gf[n, c*m+j] * Wf[c*m+j]
    weight grad:  DWf[c*m+j]   = sum_n Xf[n, c] * Gf[n, c*m+j]

Every product is elementwise per map, so nothing needs a frequency-major layout. Each worker
takes a chunk of (sample, channel) maps and runs transform -> product -> inverse transform on
it while it sits in cache; only Xf (for the weight gradient) is written back to memory. Wf is
computed once per weight value; Gf lives only inside the chunk that uses it for both gradients.
"""

from __future__ import annotations

import math

import numpy as np

from fftbp._config import get_num_threads, parallel_map, split_range, timed
from fftbp.fft.plans import count_maps, execute, owned_plan
from fftbp.kernels.fft import FFTLayout, _gather, flip_maps, place_maps

__all__ = ["backward", "forward", "weight_spectrum"]

_SCRATCH_BYTES = 1 << 20


def _chunk(lay: FFTLayout, channels: int, maps_per_channel: int) -> int:
    """Channels per task: the largest divisor of ``channels`` whose scratch fits the target."""
    per = math.prod(lay.shape) * lay.spec.dtype.itemsize * max(maps_per_channel, 1)
    target = max(1, _SCRATCH_BYTES // per)
    return max(d for d in range(1, channels + 1) if channels % d == 0 and d <= target)


def _tasks(batch: int, channels: int, step: int) -> list[tuple[int, int]]:
    """(sample, first channel) pairs covering every map."""
    return [(n, c0) for n in range(batch) for c0 in range(0, channels, step)]


def _run_tasks(tasks: list[tuple[int, int]], body) -> None:
    ranges = split_range(len(tasks), get_num_threads())

    def work(slot: int, a: int, b: int) -> None:
        for t in range(a, b):
            body(slot, *tasks[t])

    parallel_map(work, ranges)


def weight_spectrum(lay: FFTLayout, w: np.ndarray) -> np.ndarray:
    """Wf in natural layout ``(F, *half)``: spectra of the dilated kernels."""
    spec = lay.spec
    f = spec.out_channels
    wflat = w.reshape(f, *spec.kernel)
    out = np.empty((f, *lay.half_shape), dtype=lay.complex_dtype)
    step = _chunk(lay, f, 1)

    def body(slot: int, _n: int, c0: int) -> None:
        p = owned_plan(True, step, lay.shape, spec.dtype, slot)
        with p.lock:
            place_maps(p.fftw.input_array, wflat[c0 : c0 + step], lay.w_place)
            execute(p)
            out[c0 : c0 + step] = p.fftw.output_array

    _run_tasks(_tasks(1, f, step), body)
    count_maps(True, f)
    return out


def forward(
    lay: FFTLayout,
    x: np.ndarray,
    wf: np.ndarray,
    bias: np.ndarray | None,
    keep_xf: bool,
    xf_out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """y (and Xf if ``keep_xf``, written into ``xf_out`` when it has the right shape)."""
    spec = lay.spec
    n_, c_, f_ = spec.batch, spec.in_channels, spec.out_channels
    m = f_ // c_
    xflat = flip_maps(x.reshape(n_ * c_, *spec.in_size))
    y = np.empty(spec.output_shape, dtype=spec.dtype)
    yflat = y.reshape(n_ * f_, *spec.out_size)
    xf = None
    if keep_xf:
        xf_shape = (n_ * c_, *lay.half_shape)
        ok = xf_out is not None and xf_out.shape == xf_shape and xf_out.dtype == lay.complex_dtype
        xf = xf_out if ok else np.empty(xf_shape, dtype=lay.complex_dtype)
    wf_c = wf.reshape(c_, m, *lay.half_shape)
    step = _chunk(lay, c_, m + 1)
    place, scale = lay.x_place, lay.scale
    extra = (None,) * spec.nd
    brows = None if bias is None else bias.reshape(c_, m)

    def body(slot: int, n: int, c0: int) -> None:
        fp = owned_plan(True, step, lay.shape, spec.dtype, slot)
        ip = owned_plan(False, step * m, lay.shape, spec.dtype, slot)
        b0 = n * c_ + c0
        with fp.lock, ip.lock:
            place_maps(fp.fftw.input_array, xflat[b0 : b0 + step], place)
            execute(fp)
            xs = fp.fftw.output_array
            if xf is not None:
                xf[b0 : b0 + step] = xs
            prod = ip.fftw.input_array.reshape(step, m, *lay.half_shape)
            with timed("products"):
                np.multiply(xs[:, None], wf_c[c0 : c0 + step], out=prod)
            execute(ip)
            dest = yflat[n * f_ + c0 * m : n * f_ + (c0 + step) * m]
            np.multiply(_gather(ip.fftw.output_array, lay.out_index), scale, out=dest)
            if brows is not None:
                dest += brows[c0 : c0 + step].reshape(-1)[(slice(None), *extra)]

    _run_tasks(_tasks(n_, c_, step), body)
    count_maps(True, n_ * c_)
    count_maps(False, n_ * f_)
    return y, xf


def backward(
    lay: FFTLayout,
    g: np.ndarray,
    wf: np.ndarray | None,
    *,
    xf: np.ndarray | None = None,
    x: np.ndarray | None = None,
    need_dx: bool = True,
    need_dw: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """dx and dw of a depthwise layer from one transform of grad_output.

    The weight gradient needs Xf: pass the one kept by :func:`forward`, or ``x`` to recompute it
    chunk by chunk.
    """
    spec = lay.spec
    n_, c_, f_ = spec.batch, spec.in_channels, spec.out_channels
    m = f_ // c_
    gflat = g.reshape(n_ * f_, *spec.out_size)
    xflat = None if x is None else flip_maps(x.reshape(n_ * c_, *spec.in_size))
    if need_dw and xf is None and xflat is None:
        raise ValueError("backward: the weight gradient needs xf or x")
    dx = np.empty(spec.input_shape, dtype=spec.dtype) if need_dx else None
    dxflat = None if dx is None else dx.reshape(n_ * c_, *spec.in_size)
    if need_dx and wf is None:
        raise ValueError("backward: the input gradient needs wf")
    wf_c = None if wf is None else wf.reshape(c_, m, *lay.half_shape)
    threads = get_num_threads()
    acc = (
        [np.zeros((c_, m, *lay.half_shape), dtype=lay.complex_dtype) for _ in range(threads)]
        if need_dw
        else []
    )
    step = _chunk(lay, c_, m + 1)
    scale = lay.scale

    def body(slot: int, n: int, c0: int) -> None:
        b0 = n * c_ + c0
        xs = None
        if acc:
            if xf is not None:
                xs = xf[b0 : b0 + step]
            else:  # recompute this chunk's Xf (before Gf: the two may share a plan)
                fp = owned_plan(True, step, lay.shape, spec.dtype, slot)
                with fp.lock:
                    place_maps(fp.fftw.input_array, xflat[b0 : b0 + step], lay.x_place)
                    execute(fp)
                    xs = fp.fftw.output_array.copy()
        gp = owned_plan(True, step * m, lay.shape, spec.dtype, slot)
        with gp.lock:
            place_maps(
                gp.fftw.input_array, gflat[n * f_ + c0 * m : n * f_ + (c0 + step) * m], lay.g_place
            )
            execute(gp)
            gs = gp.fftw.output_array.reshape(step, m, *lay.half_shape)
            if dxflat is not None and wf_c is not None:
                ip = owned_plan(False, step, lay.shape, spec.dtype, slot)
                with ip.lock:
                    prod = ip.fftw.input_array
                    with timed("products"):
                        if m == 1:
                            np.multiply(gs[:, 0], wf_c[c0 : c0 + step, 0], out=prod)
                        else:
                            np.sum(gs * wf_c[c0 : c0 + step], axis=1, out=prod)
                    execute(ip)
                    np.multiply(
                        _gather(ip.fftw.output_array, lay.dx_index),
                        scale,
                        out=dxflat[b0 : b0 + step],
                    )
            if xs is not None:
                with timed("products"):
                    acc[slot][c0 : c0 + step] += gs * xs[:, None]

    _run_tasks(_tasks(n_, c_, step), body)
    count_maps(True, n_ * f_ + (n_ * c_ if (need_dw and xf is None) else 0))
    if need_dx:
        count_maps(False, n_ * c_)
    dw = None
    if need_dw:
        total = acc[0]
        for a in acc[1:]:
            total += a
        dw = np.empty(spec.weight_shape, dtype=spec.dtype)
        dwflat = dw.reshape(f_, *spec.kernel)
        tflat = total.reshape(f_, *lay.half_shape)
        step_f = _chunk(lay, f_, 1)

        def inv(slot: int, _n: int, f0: int) -> None:
            p = owned_plan(False, step_f, lay.shape, spec.dtype, slot)
            with p.lock:
                p.fftw.input_array[...] = tflat[f0 : f0 + step_f]
                execute(p)
                np.multiply(
                    _gather(p.fftw.output_array, lay.dw_index), scale, out=dwflat[f0 : f0 + step_f]
                )

        _run_tasks(_tasks(1, f_, step_f), inv)
        count_maps(False, f_)
    return dx, dw
