"""The error model behind ``tol=``: each route's predicted error, and the data's dynamic range.

The error measure
-----------------
``tol`` bounds the error of every output relative to the scale of the terms that form it::

    |y_computed[i] - y_exact[i]|  <=  tol * (|w| * |x|)[i]           (``*``: the same layer)

(and the same for each gradient with its operands). Where the terms do not cancel, the right
side is ``|y_exact[i]|`` and this is the relative error of each output; the relative L2 error of
the whole result then is below ``tol`` too. It is the measure that shows what FFT convolution
loses: a relative L2 error over the whole result cannot see small outputs next to large ones,
and float32 FFT meets a 1e-4 L2 target on every study case while losing such outputs entirely.
Outputs whose terms are all exactly zero carry no requirement.

The model
---------
Direct convolution sums each output's own terms: its error is of order ``eps`` times that
output's scale; the rounding errors of its accumulation add up like a random walk over the
terms it sums (channels times kernel taps; for the weight gradient, batch times positions)::

    direct:  C_DIRECT * eps * (1 + sqrt(terms))

An FFT output's error is of order ``eps * log2(n)`` times the *largest* scale in its transform
(the whole map; for tiles, the tile's window), so relative to its own scale it grows with the
data's dynamic range ``D`` within a transform::

    fft:     C_FFT * eps * (1 + log2(n) + log2(channels summed)) * D

``D`` is measured on the operands by :func:`dynamic_range`: the ratio of the largest to the
smallest non-zero block maximum of ``|x|`` (blocks half a kernel extent wide, maxima over
channels, per sample) within a transform. Without data (:func:`fftbp.plan`), ``D`` is the
``dynamic_range`` argument (default 1: data of one scale). ``float64`` transforms (the route
``fft+f64``) use float64's ``eps`` with the same model. The constants are fitted on the accuracy
study (``fftbp accuracy``), whose every row the model bounds.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from fftbp._params import ConvSpec, Pass
from fftbp.fft.sizes import transform_shape

__all__ = ["C_DIRECT", "C_FFT", "DataRange", "dynamic_range", "predicted_error", "route_error"]

#: constants of the model (see the module docstring), fitted on the accuracy study
C_DIRECT = 1.0
C_FFT = 1.0


@dataclass(frozen=True)
class DataRange:
    """The operands' dynamic range within a whole map (``whole``) and within the windows of
    overlap-save tiles (``tiles``: outputs per tile -> range), for one pass."""

    whole: float = 1.0
    tiles: tuple[tuple[tuple[int, ...], float], ...] = ()

    def for_tile(self, tile: tuple[int, ...] | None) -> float:
        """The range within one transform of a route with ``tile`` (None: whole maps)."""
        if tile is None:
            return self.whole
        for t, d in self.tiles:
            if t == tile:
                return d
        return self.whole


def _terms(spec: ConvSpec, pass_: Pass) -> int:
    return {
        Pass.FORWARD: spec.in_channels // spec.groups,
        Pass.INPUT_GRAD: spec.out_channels // spec.groups,
        Pass.WEIGHT_GRAD: spec.batch,
    }[pass_]


def predicted_error(
    spec: ConvSpec,
    pass_: Pass,
    base: str,
    transform: tuple[int, ...] | None,
    dtype: np.dtype,
    dyn: float,
) -> float:
    """Predicted error (the module's measure) of ``pass_`` by ``base`` (``"direct"``, ``"fft"``,
    ``"torch"``) computed in ``dtype``, with transforms of ``transform`` points and dynamic
    range ``dyn`` within one transform."""
    eps = float(np.finfo(dtype).eps)
    terms = _terms(spec, pass_)
    if base != "fft":
        # rounding errors of a long accumulation add up like a random walk
        taps = math.prod(spec.kernel) if pass_ != Pass.WEIGHT_GRAD else math.prod(spec.out_size)
        return C_DIRECT * eps * (1.0 + math.sqrt(terms * taps))
    n = math.prod(transform or transform_shape(spec))
    return C_FFT * eps * (1.0 + math.log2(n) + math.log2(max(terms, 1))) * max(dyn, 1.0)


# -- the data's dynamic range -------------------------------------------------------------------
def _block_maxima(a: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """Per sample, the maximum of ``|a|`` over channels and over blocks of ``block`` positions:
    shape ``(N, *blocks)``."""
    n, nd = a.shape[0], a.ndim - 2
    m = np.abs(a).max(axis=1)
    pads = [(0, 0)] + [(0, (-s) % b) for s, b in zip(m.shape[1:], block)]
    m = np.pad(m, pads)
    shape = [n]
    for s, b in zip(m.shape[1:], block):
        shape += [s // b, b]
    return m.reshape(shape).max(axis=tuple(range(2, 2 + 2 * nd, 2)))


def _ratio(s: np.ndarray, window_blocks: tuple[int, ...] | None) -> float:
    """Largest ratio of a window's maximum to a non-zero block's own maximum, over samples."""
    worst = 1.0
    for sn in s:
        nz = sn > 0
        if not nz.any():
            continue
        if window_blocks is None or all(w >= d for w, d in zip(window_blocks, sn.shape)):
            top = np.full_like(sn, sn.max())
        else:
            top = ndimage.maximum_filter(sn, size=[2 * w + 1 for w in window_blocks])
        worst = max(worst, float((top[nz] / sn[nz]).max()))
    return worst


def dynamic_range(
    spec: ConvSpec,
    pass_: Pass,
    a: np.ndarray,
    b: np.ndarray | None = None,
    tiles: tuple[tuple[int, ...], ...] = (),
) -> DataRange:
    """The dynamic range of a pass's data operand ``a`` (x forward, grad_output input grad; for
    the weight gradient ``a`` = x and ``b`` = grad_output), within whole maps and within the
    windows of overlap-save ``tiles`` (outputs per tile)."""
    if pass_ == Pass.WEIGHT_GRAD and b is not None:
        return DataRange(_weight_grad_range(spec, a, b))
    ext = spec.kernel_extent
    if pass_ == Pass.INPUT_GRAD:  # grad_output on the output grid: the kernel spans e/s of it
        ext = tuple(max(1, -(-e // s)) for e, s in zip(ext, spec.stride))
    block = tuple(max(1, -(-e // 2)) for e in ext)
    s = _block_maxima(a, block)
    whole = _ratio(s, None)
    ranges = []
    for t in tiles:
        if pass_ == Pass.FORWARD:  # the tile's input window
            window = tuple((ti - 1) * st + e for ti, st, e in zip(t, spec.stride, ext))
        else:  # the tile's grad_output window
            window = tuple(ti + e - 1 for ti, e in zip(t, ext))
        ranges.append((t, _ratio(s, tuple(-(-wi // bi) for wi, bi in zip(window, block)))))
    return DataRange(whole, tuple(ranges))


def route_error(route: Any, spec: ConvSpec, pass_: Pass, dyn: DataRange) -> float:
    """Predicted error of ``pass_`` of ``spec`` by ``route`` on data of range ``dyn``."""
    dtype = np.dtype(np.float64) if route.precision else spec.dtype
    inner = route.inner(spec)
    if route.base != "fft":
        return predicted_error(inner, pass_, "direct", None, dtype, 1.0)
    err = predicted_error(
        inner, pass_, "fft", transform_shape(inner), dtype, dyn.for_tile(route.tile)
    )
    if route.precision:  # the float64 result is rounded to the layer's dtype
        err += float(np.finfo(spec.dtype).eps)
    return err


def _weight_grad_range(spec: ConvSpec, x: np.ndarray, g: np.ndarray) -> float:
    """The weight gradient's range. Each tap sums x against grad_output shifted by the tap's
    offset, over whole maps: its scale is ``sum |x[i + k]| |g[i]|``, while an FFT's error is of
    order ``||x|| ||g||``. Their largest ratio over the kernel's offsets (Cauchy-Schwarz, on
    block maxima an eighth of the kernel wide, with the shifts in block units) is the range."""
    ext = spec.kernel_extent
    block = tuple(max(1, -(-e // 8)) for e in ext)
    sx = _block_maxima(x, block)
    sg = _resample(_block_maxima(g, block), sx.shape[1:])
    reach = tuple(-(-e // b) for e, b in zip(ext, block))
    worst = 1.0
    for xs, gs in zip(sx, sg):
        norm = math.sqrt(float((xs**2).sum() * (gs**2).sum()))
        if norm == 0:
            continue
        for shift in itertools.product(*(range(-r, r + 1) for r in reach)):
            dot = float((_shifted(xs, shift) * gs).sum())
            if dot > 0:
                worst = max(worst, norm / dot)
    return worst


def _shifted(a: np.ndarray, shift: tuple[int, ...]) -> np.ndarray:
    """``a[i + shift]`` with zeros outside."""
    out = np.zeros_like(a)
    src, dst = [], []
    for n, k in zip(a.shape, shift):
        src.append(slice(max(k, 0), n + min(k, 0)))
        dst.append(slice(max(-k, 0), n + min(-k, 0)))
    out[tuple(dst)] = a[tuple(src)]
    return out


def _resample(s: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-index resampling of block maxima onto another block grid."""
    idx = [
        np.minimum((np.arange(t) * s.shape[1 + i]) // max(t, 1), s.shape[1 + i] - 1)
        for i, t in enumerate(shape)
    ]
    return s[(slice(None), *np.ix_(*idx))] if len(idx) > 1 else s[:, idx[0]]
