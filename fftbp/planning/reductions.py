"""Reductions: rewrite a layer as an easier layer plus cheap index maps, for all three passes.

Each reduction turns an *outer* layer into an *inner* one that the base kernels (FFT or direct)
compute, with linear maps on the way in and out::

    forward      y  = y_out(inner.forward(x_in(x), w_in(w)))
    input grad   dx = dx_out(inner.input_grad(w_in(w), g_in(g)))       dx_out = x_in^T
    weight grad  dw = dw_out(inner.weight_grad(x_in(x), g_in(g)))      dw_out = w_in^T

``g_in`` is the adjoint of ``y_out``, so the gradients follow by the chain rule and the index
algebra of each reduction is written once, below. Reductions compose (a polyphase layer can be
tiled). The bias passes through untouched: every reduction keeps the output channels.

``Tiles``: overlap-save. Output tiles of ``T`` positions per axis need input windows of
``L = (T-1)*s + E`` padded positions, ``T*s`` apart; the windows become extra batch entries of
an unpadded inner layer, so the weight gradient's sum over the batch also sums over tiles, and
the input gradient adds overlapping windows back (overlap-add). Transforms of ``L`` instead of
the whole map: for kernels much smaller than the map, far less work.

``Polyphase``: stride ``s`` (dilation 1). With ``k = s*q + r`` and padded input ``xp``::

    y[o] = sum_k xp[o*s + k] w[k] = sum_r sum_q xp[s*(o+q) + r] w[s*q + r]
         = sum_r sum_q  x_r[o + q] w_r[q],   x_r[j] = xp[s*j + r],  w_r[q] = w[s*q + r]

a stride-1 layer on maps ``s`` times smaller, with the ``s**nd`` phases as extra input channels
(space-to-depth) and a kernel of ``ceil(K/s)`` taps: no output is computed and thrown away.

``DilationPhases``: dilation ``d`` (stride 1). With ``o = d*p + r``::

    y[d*p + r] = sum_k xp[d*(p+k) + r] w[k] = sum_k x_r[p + k] w[k],   x_r[j] = xp[d*j + r]

``d**nd`` undilated layers on maps ``d`` times smaller, the phases as extra batch entries.

Both phase reductions store only the window of phase positions that holds input samples and
pass the rest to the inner layer as padding (``_PhaseSplit``): the inner FFT then uses the same
padding-aware transform length as the plain route, instead of transforming zeros.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from fftbp._arrays import pad_or_crop, parallel_copied, parallel_copy, parallel_zeros
from fftbp._config import get_num_threads, parallel_for
from fftbp._params import ConvSpec

__all__ = ["DilationPhases", "Polyphase", "Reduction", "Tiles"]


def _padded(spec: ConvSpec, total: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Pairs that pad (or crop) the input to ``total`` per axis, starting with the low padding."""
    return tuple((lo, t - h - lo) for h, (lo, _), t in zip(spec.in_size, spec.padding, total))


def _unpadded(spec: ConvSpec, total: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Pairs that map a gradient of the ``total``-long padded input back to ``[lo, lo + H)``."""
    return tuple((-lo, -(t - h - lo)) for h, (lo, _), t in zip(spec.in_size, spec.padding, total))


def _split_axes(a: np.ndarray, lead: int, outer: tuple[int, ...], inner: tuple[int, ...]):
    """View axes ``lead..`` of length ``outer[i]*inner[i]`` as ``(outer[i], inner[i])`` pairs."""
    shape = a.shape[:lead] + tuple(v for pair in zip(outer, inner) for v in pair)
    return a.reshape(shape)


class Reduction:
    """Base class: an outer layer rewritten as ``inner`` plus index maps (see module docs)."""

    outer: ConvSpec
    inner: ConvSpec
    name: str = ""

    def x_in(self, x: np.ndarray) -> np.ndarray:
        return x

    def w_in(self, w: np.ndarray) -> np.ndarray:
        return w

    def g_in(self, g: np.ndarray) -> np.ndarray:
        return g

    def y_out(self, y: np.ndarray) -> np.ndarray:
        return y

    def dx_out(self, dx: np.ndarray) -> np.ndarray:
        return dx

    def dw_out(self, dw: np.ndarray) -> np.ndarray:
        return dw


@dataclass(frozen=True)
class Tiles(Reduction):
    """Overlap-save tiles of ``tile`` outputs per axis."""

    outer: ConvSpec
    tile: tuple[int, ...]
    name: str = "tiles"

    @cached_property
    def counts(self) -> tuple[int, ...]:
        return tuple(-(-o // t) for o, t in zip(self.outer.out_size, self.tile))

    @cached_property
    def window(self) -> tuple[int, ...]:
        """Padded input positions per tile, ``(T-1)*s + E``."""
        s = self.outer
        return tuple((t - 1) * st + e for t, st, e in zip(self.tile, s.stride, s.kernel_extent))

    @cached_property
    def total(self) -> tuple[int, ...]:
        """Padded input length covering every tile."""
        s = self.outer
        return tuple(
            (n * t - 1) * st + e
            for n, t, st, e in zip(self.counts, self.tile, s.stride, s.kernel_extent)
        )

    @cached_property
    def inner(self) -> ConvSpec:
        s = self.outer
        return replace(
            s,
            batch=s.batch * math.prod(self.counts),
            in_size=self.window,
            padding=((0, 0),) * s.nd,
        )

    def x_in(self, x: np.ndarray) -> np.ndarray:
        s = self.outer
        xp = pad_or_crop(x, _padded(s, self.total))
        st = xp.strides
        hops = tuple(t * sd * st[2 + i] for i, (t, sd) in enumerate(zip(self.tile, s.stride)))
        view = np.lib.stride_tricks.as_strided(
            xp,
            shape=(s.batch, *self.counts, s.in_channels, *self.window),
            strides=(st[0], *hops, st[1], *st[2:]),
            writeable=False,
        )
        return parallel_copied(view).reshape(self.inner.input_shape)  # a copy: windows overlap

    def g_in(self, g: np.ndarray) -> np.ndarray:
        s, nd = self.outer, self.outer.nd
        full = tuple(n * t for n, t in zip(self.counts, self.tile))
        gp = pad_or_crop(g, tuple((0, f - o) for f, o in zip(full, s.out_size)))
        v = _split_axes(gp, 2, self.counts, self.tile)
        order = (0, *range(2, 2 + 2 * nd, 2), 1, *range(3, 3 + 2 * nd, 2))
        return parallel_copied(v.transpose(order)).reshape(self.inner.output_shape)

    def y_out(self, y: np.ndarray) -> np.ndarray:
        s, nd = self.outer, self.outer.nd
        v = y.reshape(s.batch, *self.counts, s.out_channels, *self.tile)
        order = (0, 1 + nd, *itertools.chain(*((1 + i, 2 + nd + i) for i in range(nd))))
        full = tuple(n * t for n, t in zip(self.counts, self.tile))
        whole = np.empty((s.batch, s.out_channels, *full), dtype=y.dtype)
        parallel_copy(_split_axes(whole, 2, self.counts, self.tile), v.transpose(order))
        if full == s.out_size:
            return whole
        # the last tiles overhang: crop
        return parallel_copied(whole[(slice(None), slice(None), *map(slice, s.out_size))])

    def dx_out(self, dx: np.ndarray) -> np.ndarray:
        s = self.outer
        v = dx.reshape(s.batch, *self.counts, s.in_channels, *self.window)
        acc = parallel_zeros((s.batch, s.in_channels, *self.total), dx.dtype)
        hop = tuple(t * sd for t, sd in zip(self.tile, s.stride))
        tiles = list(itertools.product(*map(range, self.counts)))

        def add(_slot: int, c0: int, c1: int) -> None:  # overlap-add of channels c0:c1
            for idx in tiles:
                dest = tuple(slice(i * h, i * h + w) for i, h, w in zip(idx, hop, self.window))
                acc[(slice(None), slice(c0, c1), *dest)] += v[(slice(None), *idx, slice(c0, c1))]

        parallel_for(add, s.in_channels, max(1, -(-s.in_channels // (2 * get_num_threads()))))
        return parallel_copied(pad_or_crop(acc, _unpadded(s, self.total)))


def _phase_in(xp: np.ndarray, count: tuple[int, ...], phases: tuple[int, ...]) -> np.ndarray:
    """``(N, C, *count*phases)`` -> ``(N, C, *phases, *count)``, ``[.., r, j] = xp[.., j*p + r]``
    per axis (a view; for the kernel, whose phases are small)."""
    nd = len(count)
    v = _split_axes(xp, 2, count, phases)
    return v.transpose(0, 1, *range(3, 3 + 2 * nd, 2), *range(2, 2 + 2 * nd, 2))


def _phase_out(a: np.ndarray, count: tuple[int, ...], phases: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`_phase_in`: ``(N, C, *phases, *count)`` -> ``(N, C, *count*phases)``."""
    nd = len(count)
    order = (0, 1, *itertools.chain(*((2 + nd + i, 2 + i) for i in range(nd))))
    v = a.transpose(order)
    return v.reshape(*a.shape[:2], *(c * p for c, p in zip(count, phases)))


def _data_window(h: int, lo: int, step: int, length: int) -> tuple[int, int]:
    """Phase positions ``[first, stop)`` (within ``[0, length)``) where some phase of a line of
    ``h`` samples placed at ``lo`` holds a sample: ``floor(lo/step) .. ceil((lo+h)/step)``."""
    first = min(max(lo // step, 0), length - 1)
    return first, max(min(-(-(lo + h) // step), length), first + 1)


@dataclass(frozen=True)
class _PhaseSplit:
    """Per axis, ``a_r[j] = ap[step*j + r]`` for ``j`` in ``[first, first + count)``, where ``ap``
    is the array (``size`` samples) placed at ``lo`` on a zero line: one strided copy per phase,
    zeros where a phase reads no sample. ``phases_first`` stores the phases before the channel
    axis (as batch entries) instead of after it (as channels)."""

    size: tuple[int, ...]
    lo: tuple[int, ...]
    step: tuple[int, ...]
    first: tuple[int, ...]
    count: tuple[int, ...]
    phases_first: bool = False

    @cached_property
    def copies(self) -> list[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]]:
        """Per phase ``r`` holding samples: (r, slices of ``a_r``, slices of ``a``)."""
        axes = []
        for h, lo, s, j0, n in zip(self.size, self.lo, self.step, self.first, self.count):
            per_phase = []
            for r in range(s):
                ja = max(j0, -(-(lo - r) // s))
                jb = min(j0 + n, -(-(lo + h - r) // s))
                if jb > ja:
                    i0 = s * ja + r - lo
                    per_phase.append((r, slice(ja - j0, jb - j0), slice(i0, i0 + s * (jb - ja), s)))
            axes.append(per_phase)
        return [tuple(zip(*combo)) for combo in itertools.product(*axes)]  # type: ignore[misc]

    @cached_property
    def covers(self) -> bool:
        """Whether every sample lands in some phase (else the gradient of the rest is zero)."""
        return all(
            j0 <= lo // s and -(-(lo + h) // s) <= j0 + n
            for h, lo, s, j0, n in zip(self.size, self.lo, self.step, self.first, self.count)
        )

    def _at(self, r: tuple[int, ...], where: tuple[slice, ...]) -> tuple[slice | int, ...]:
        if self.phases_first:
            return (slice(None), *r, slice(None), *where)
        return (slice(None), slice(None), *r, *where)

    def split(self, a: np.ndarray) -> np.ndarray:
        """``(N, C, *size)`` -> ``(N, C, *step, *count)`` or ``(N, *step, C, *count)``."""
        n, c = a.shape[:2]
        lead = (n, *self.step, c) if self.phases_first else (n, c, *self.step)
        out = np.zeros((*lead, *self.count), dtype=a.dtype)
        for r, dst, src in self.copies:
            out[self._at(r, dst)] = a[(slice(None), slice(None), *src)]
        return out

    def merge(self, v: np.ndarray) -> np.ndarray:
        """The adjoint of :meth:`split` (each sample is read by exactly one phase)."""
        n, c = v.shape[0], v.shape[1 + len(self.step)] if self.phases_first else v.shape[1]
        out = (np.empty if self.covers else np.zeros)((n, c, *self.size), dtype=v.dtype)
        for r, src, dst in self.copies:
            out[(slice(None), slice(None), *dst)] = v[self._at(r, src)]
        return out


def _window_spec(
    outer: ConvSpec, step: tuple[int, ...], length: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...], tuple[int, ...]]:
    """Phase maps of ``length`` positions of ``outer``'s padded input: the inner layer's
    ``in_size`` and ``padding`` and each axis's first stored position. Only the window that
    holds samples is stored; the rest stays padding, so the inner transforms are no larger
    than the plain route's."""
    windows = [
        _data_window(h, lo, st, n)
        for h, (lo, _), st, n in zip(outer.in_size, outer.padding, step, length)
    ]
    size = tuple(b - a for a, b in windows)
    padding = tuple((a, n - b) for (a, b), n in zip(windows, length))
    return size, padding, tuple(a for a, _ in windows)


@dataclass(frozen=True)
class Polyphase(Reduction):
    """Stride -> stride-1 layer on ``s**nd`` phase channels (space-to-depth). Needs dilation 1."""

    outer: ConvSpec
    name: str = "polyphase"

    @cached_property
    def taps(self) -> tuple[int, ...]:
        return tuple(-(-k // s) for k, s in zip(self.outer.kernel, self.outer.stride))

    @cached_property
    def length(self) -> tuple[int, ...]:
        """Phase-map length: exactly what the inner layer's outputs read."""
        return tuple(o + q - 1 for o, q in zip(self.outer.out_size, self.taps))

    @cached_property
    def _x(self) -> _PhaseSplit:
        s = self.outer
        size, _, first = _window_spec(s, s.stride, self.length)
        return _PhaseSplit(s.in_size, tuple(lo for lo, _ in s.padding), s.stride, first, size)

    @cached_property
    def inner(self) -> ConvSpec:
        s = self.outer
        size, padding, _ = _window_spec(s, s.stride, self.length)
        return replace(
            s,
            in_channels=s.in_channels * math.prod(s.stride),
            in_size=size,
            kernel=self.taps,
            stride=(1,) * s.nd,
            padding=padding,
        )

    def x_in(self, x: np.ndarray) -> np.ndarray:
        return self._x.split(x).reshape(self.inner.input_shape)

    def w_in(self, w: np.ndarray) -> np.ndarray:
        s = self.outer
        full = tuple(q * st for q, st in zip(self.taps, s.stride))
        wp = pad_or_crop(w, tuple((0, f - k) for f, k in zip(full, s.kernel)))
        v = _phase_in(wp, self.taps, s.stride)
        return np.ascontiguousarray(v).reshape(self.inner.weight_shape)

    def dx_out(self, dx: np.ndarray) -> np.ndarray:
        s = self.outer
        return self._x.merge(dx.reshape(s.batch, s.in_channels, *s.stride, *self.inner.in_size))

    def dw_out(self, dw: np.ndarray) -> np.ndarray:
        s = self.outer
        cg = s.in_channels // s.groups
        v = dw.reshape(s.out_channels, cg, *s.stride, *self.taps)
        full = _phase_out(v, self.taps, s.stride)
        return np.ascontiguousarray(full[(slice(None), slice(None), *map(slice, s.kernel))])


@dataclass(frozen=True)
class DilationPhases(Reduction):
    """Dilation -> ``d**nd`` undilated layers (phases as batch entries). Needs stride 1."""

    outer: ConvSpec
    name: str = "dilation phases"

    @cached_property
    def phase_out(self) -> tuple[int, ...]:
        return tuple(-(-o // d) for o, d in zip(self.outer.out_size, self.outer.dilation))

    @cached_property
    def length(self) -> tuple[int, ...]:
        return tuple(p + k - 1 for p, k in zip(self.phase_out, self.outer.kernel))

    @cached_property
    def _x(self) -> _PhaseSplit:
        s = self.outer
        size, _, first = _window_spec(s, s.dilation, self.length)
        lo = tuple(lo for lo, _ in s.padding)
        return _PhaseSplit(s.in_size, lo, s.dilation, first, size, phases_first=True)

    @cached_property
    def _g(self) -> _PhaseSplit:
        s = self.outer
        zero = (0,) * s.nd
        return _PhaseSplit(s.out_size, zero, s.dilation, zero, self.phase_out, phases_first=True)

    @cached_property
    def inner(self) -> ConvSpec:
        s = self.outer
        size, padding, _ = _window_spec(s, s.dilation, self.length)
        return replace(
            s,
            batch=s.batch * math.prod(s.dilation),
            in_size=size,
            dilation=(1,) * s.nd,
            padding=padding,
        )

    def _batch(self, a: np.ndarray) -> np.ndarray:
        """``(N, *d, C, *count)`` -> ``(N * prod(d), C, *count)`` (a view)."""
        return a.reshape(-1, *a.shape[1 + self.outer.nd :])

    def _unbatch(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self.outer.batch, *self.outer.dilation, *a.shape[1:])

    def x_in(self, x: np.ndarray) -> np.ndarray:
        return self._batch(self._x.split(x))

    def g_in(self, g: np.ndarray) -> np.ndarray:
        return self._batch(self._g.split(g))

    def y_out(self, y: np.ndarray) -> np.ndarray:
        return self._g.merge(self._unbatch(y))

    def dx_out(self, dx: np.ndarray) -> np.ndarray:
        return self._x.merge(self._unbatch(dx))
