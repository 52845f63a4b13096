"""Depthwise FFT kernels (``groups == C``): fused per-map pipelines in natural layout.

Every product is elementwise per map, so nothing needs a frequency-major layout: each worker
takes a chunk of maps and runs transform -> product -> inverse transform while it sits in cache.

Placement (``docs/algebra.md``, "Depthwise form"): unlike the dense kernels, x is placed
*unreversed* at its padded position ``[lo, lo + H)``, so that every copy into and out of the
transform buffers runs forward through memory and never wraps (reversed copies cost 2.3x as much
here). The price is a conjugate in two of the three products, paid where it is cheap: Wf is
stored together with its conjugate (F maps, once per weight value), and the weight gradient
conjugates the chunk of Gf that is in cache anyway. With one input channel per group and
``m = F // C``::

    forward      Yf[n, c*m+j] = Xf[n, c] * conj(Wf[c*m+j])      y[o]  = irfft(Yf)[o*s]
    input grad   DXf[n, c]    = sum_j Gf[n, c*m+j] * Wf[c*m+j]   dx[i] = irfft(DXf)[i + lo]
    weight grad  DWf[c*m+j]   = sum_n Xf[n, c] * conj(Gf[n, c*m+j])
                                                                 dw[k] = irfft(DWf)[k*d]

When forward keeps Xf for the weight gradient, FFTW writes it straight into the kept array (the
product then reads it from cache), so keeping it costs no copy.

The 1/n normalisation is folded into the stored Wf (and into the weight gradient's read-out).
"""

from __future__ import annotations

import math
from contextlib import ExitStack

import numpy as np
import pyfftw

from fftbp._config import get_num_threads, parallel_tasks, timed
from fftbp.fft.owned import owned_plan
from fftbp.fft.plans import aligned, count_maps, execute
from fftbp.kernels.layout import FFTLayout, Index, axis_index, place_maps, read_maps

__all__ = ["backward", "forward", "weight_spectrum"]

_SCRATCH_BYTES = 1 << 20


def _x_place(lay: FFTLayout) -> tuple[slice, ...]:
    """x at its padded position ``[lo, lo + H)``."""
    return tuple(slice(lo, lo + h) for h, (lo, _) in zip(lay.spec.in_size, lay.spec.padding))


def _y_index(lay: FFTLayout) -> tuple[Index, ...]:
    s = lay.spec
    return tuple(axis_index(0, o, st, m) for o, st, m in zip(s.out_size, s.stride, lay.shape))


def _w_index(lay: FFTLayout) -> tuple[Index, ...]:
    s = lay.spec
    return tuple(axis_index(0, k, d, m) for k, d, m in zip(s.kernel, s.dilation, lay.shape))


def _chunk(lay: FFTLayout, channels: int, maps_per_channel: int, parts: int = 1) -> int:
    """Channels per task: the largest divisor of ``channels`` whose scratch fits the target
    and that leaves at least ``parts`` tasks (when there are that many channels)."""
    per = math.prod(lay.shape) * lay.spec.dtype.itemsize * max(maps_per_channel, 1)
    target = max(1, min(_SCRATCH_BYTES // per, channels // parts))
    return max(d for d in range(1, channels + 1) if channels % d == 0 and d <= target)


def weight_spectrum(lay: FFTLayout, w: np.ndarray) -> np.ndarray:
    """``(2, F, *half)``: ``[Wf / n, conj(Wf) / n]`` for the dilated kernels (``n = prod(M)``)."""
    spec = lay.spec
    f = spec.out_channels
    wflat = w.reshape(f, *spec.kernel)
    out = np.empty((2, f, *lay.half_shape), dtype=lay.complex_dtype)
    step = _chunk(lay, f, 1)

    def body(_slot: int, _n: int, c0: int) -> None:
        with owned_plan(True, step, lay.shape, spec.dtype) as p:
            place_maps(p.fftw.input_array, wflat[c0 : c0 + step], lay.w_place)
            execute(p)
            np.multiply(p.fftw.output_array, lay.scale, out=out[0, c0 : c0 + step])
        np.conjugate(out[0, c0 : c0 + step], out=out[1, c0 : c0 + step])

    parallel_tasks([(0, c0) for c0 in range(0, f, step)], body)
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
    """y, and Xf if ``keep_xf`` (written into ``xf_out`` when it has the right shape).

    ``wf`` is the pair from :func:`weight_spectrum`.
    """
    spec = lay.spec
    n_, c_, f_ = spec.batch, spec.in_channels, spec.out_channels
    m = f_ // c_
    xflat = x.reshape(n_ * c_, *spec.in_size)
    y = np.empty(spec.output_shape, dtype=spec.dtype)
    yflat = y.reshape(n_ * f_, *spec.out_size)
    xf = None
    if keep_xf:
        xf_shape = (n_ * c_, *lay.half_shape)
        ok = xf_out is not None and xf_out.shape == xf_shape and xf_out.dtype == lay.complex_dtype
        xf = xf_out if ok else pyfftw.empty_aligned(xf_shape, dtype=lay.complex_dtype, n=64)
    wc = wf[1].reshape(c_, m, *lay.half_shape)
    step = _chunk(lay, c_, m + 1)
    # FFTW writes Xf into ``xf`` directly when every chunk of it keeps the SIMD alignment.
    direct = xf is not None and aligned(xf) and aligned(xf[step : step + 1])
    place, y_index = _x_place(lay), _y_index(lay)
    brows = None if bias is None else bias.reshape(c_, m)

    def body(_slot: int, n: int, c0: int) -> None:
        b0 = n * c_ + c0
        with (
            owned_plan(True, step, lay.shape, spec.dtype, tag="xf" if direct else "x") as fp,
            owned_plan(False, step * m, lay.shape, spec.dtype) as ip,
        ):
            place_maps(fp.fftw.input_array, xflat[b0 : b0 + step], place)
            if direct:
                fp.fftw.update_arrays(fp.fftw.input_array, xf[b0 : b0 + step])
            execute(fp)
            xs = fp.fftw.output_array
            if xf is not None and not direct:
                with timed("copies"):
                    xf[b0 : b0 + step] = xs
            prod = ip.fftw.input_array.reshape(step, m, *lay.half_shape)
            with timed("products"):
                np.multiply(xs[:, None], wc[c0 : c0 + step], out=prod)
            execute(ip)
            dest = yflat[n * f_ + c0 * m : n * f_ + (c0 + step) * m]
            rows = None if brows is None else brows[c0 : c0 + step].reshape(-1)
            read_maps(dest, ip.fftw.output_array, y_index, None, rows)

    parallel_tasks([(n, c0) for n in range(n_) for c0 in range(0, c_, step)], body)
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

    The weight gradient needs Xf: pass the one kept by :func:`forward` as ``xf``, or ``x``
    to recompute it chunk by chunk. Each task owns a chunk of channels for the whole batch, so
    the weight gradient accumulates in cache and needs no reduction across threads.
    """
    spec = lay.spec
    n_, c_, f_ = spec.batch, spec.in_channels, spec.out_channels
    m = f_ // c_
    gflat = g.reshape(n_ * f_, *spec.out_size)
    xflat = None if x is None else x.reshape(n_ * c_, *spec.in_size)
    if need_dw and xf is None and xflat is None:
        raise ValueError("backward: the weight gradient needs xf or x")
    if need_dx and wf is None:
        raise ValueError("backward: the input gradient needs wf")
    dx = np.empty(spec.input_shape, dtype=spec.dtype) if need_dx else None
    dxflat = None if dx is None else dx.reshape(n_ * c_, *spec.in_size)
    dw = np.empty(spec.weight_shape, dtype=spec.dtype) if need_dw else None
    dwflat = None if dw is None else dw.reshape(c_, m, *spec.kernel)
    w_c = None if wf is None else wf[0].reshape(c_, m, *lay.half_shape)
    step = _chunk(lay, c_, m + 1, parts=2 * get_num_threads())
    x_place, w_index = _x_place(lay), _w_index(lay)

    def body(_slot: int, _n: int, c0: int) -> None:
        acc = np.zeros((step, m, *lay.half_shape), dtype=lay.complex_dtype) if need_dw else None
        for n in range(n_):
            b0 = n * c_ + c0
            with ExitStack() as held:  # every plan is held until its arrays are last read
                xs = None
                if acc is not None:
                    if xf is not None:
                        xs = xf[b0 : b0 + step]
                    else:  # recompute this chunk's Xf
                        fp = held.enter_context(
                            owned_plan(True, step, lay.shape, spec.dtype, tag="x")
                        )
                        place_maps(fp.fftw.input_array, xflat[b0 : b0 + step], x_place)
                        execute(fp)
                        xs = fp.fftw.output_array
                gp = held.enter_context(owned_plan(True, step * m, lay.shape, spec.dtype, tag="g"))
                g0 = n * f_ + c0 * m
                place_maps(gp.fftw.input_array, gflat[g0 : g0 + step * m], lay.g_place)
                execute(gp)
                gs = gp.fftw.output_array.reshape(step, m, *lay.half_shape)
                if dxflat is not None and w_c is not None:
                    with owned_plan(False, step, lay.shape, spec.dtype) as ip:
                        prod = ip.fftw.input_array
                        with timed("products"):
                            if m == 1:
                                np.multiply(gs[:, 0], w_c[c0 : c0 + step, 0], out=prod)
                            else:
                                np.sum(gs * w_c[c0 : c0 + step], axis=1, out=prod)
                        execute(ip)
                        read_maps(dxflat[b0 : b0 + step], ip.fftw.output_array, lay.dx_index)
                if acc is not None and xs is not None:
                    with timed("products"):  # Gf's buffer is scratch from here on
                        np.conjugate(gs, out=gs)
                        np.multiply(gs, xs[:, None], out=gs)
                        acc += gs
        if acc is None or dwflat is None:
            return
        with owned_plan(False, step * m, lay.shape, spec.dtype) as p:
            p.fftw.input_array[...] = acc.reshape(step * m, *lay.half_shape)
            execute(p)
            dest = dwflat[c0 : c0 + step].reshape(step * m, *spec.kernel)
            read_maps(dest, p.fftw.output_array, w_index, lay.scale)

    parallel_tasks([(0, c0) for c0 in range(0, c_, step)], body)
    count_maps(True, n_ * f_ + (n_ * c_ if (need_dw and xf is None) else 0))
    if need_dx:
        count_maps(False, n_ * c_)
    if need_dw:
        count_maps(False, f_)
    return dx, dw
