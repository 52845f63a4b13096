"""Transform geometry and buffers of the FFT kernels: where each map sits in its transform
buffer, where each pass reads its result, and the spectrum buffers (frequency-major, lent by a
:class:`SpectrumPool` to one call at a time). The index algebra is in :mod:`fftbp.kernels.fft`.
"""

from __future__ import annotations

import collections
import functools
import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyfftw

from fftbp._config import timed
from fftbp._params import ConvSpec
from fftbp.fft import transform_shape

__all__ = [
    "FFTLayout",
    "Index",
    "SpectrumPool",
    "axis_index",
    "flip_maps",
    "layout",
    "place_maps",
    "read_maps",
    "spectrum_ld",
]

Index = slice | np.ndarray


def axis_index(start: int, count: int, step: int, m: int) -> Index:
    """Positions ``(start + i*step) mod m`` for ``i < count``, as a slice when no wrap occurs."""
    last = start + (count - 1) * step
    if 0 <= start < m and 0 <= last < m:
        stop = last + (1 if step > 0 else -1)
        return slice(start, None if stop < 0 else stop, step)
    return (start + step * np.arange(count)) % m


def _gather(src: np.ndarray, index: tuple[Index, ...]) -> np.ndarray:
    """``src[:, i0, i1, ...]`` as an outer (not broadcast) index, slices first."""
    view = src[(slice(None),) + tuple(i if isinstance(i, slice) else slice(None) for i in index)]
    for axis, i in enumerate(index):
        if not isinstance(i, slice):
            view = np.take(view, i, axis=axis + 1)
    return view


@dataclass(frozen=True)
class FFTLayout:
    """Transform geometry of one layer: FFT sizes and the read-out positions of each pass."""

    spec: ConvSpec
    shape: tuple[int, ...]
    out_index: tuple[Index, ...] = field(repr=False)
    dx_index: tuple[Index, ...] = field(repr=False)
    dw_index: tuple[Index, ...] = field(repr=False)
    # derived once at construction (a layout is cached and read by every pass; no
    # cached_property, whose per-class lock a fork could catch held on Python 3.11)
    half_shape: tuple[int, ...] = field(init=False, repr=False, compare=False)
    nfreq: int = field(init=False, repr=False, compare=False)
    scale: float = field(init=False, repr=False, compare=False)
    complex_dtype: np.dtype = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        half = (*self.shape[:-1], self.shape[-1] // 2 + 1)
        object.__setattr__(self, "half_shape", half)
        object.__setattr__(self, "nfreq", math.prod(half))
        object.__setattr__(self, "scale", 1.0 / math.prod(self.shape))
        object.__setattr__(self, "complex_dtype", np.result_type(self.spec.dtype, np.complex64))

    # Where each spectrum's maps sit in the zero buffer (see the module docstring).
    @property
    def x_place(self) -> tuple[slice, ...]:
        """x, already reversed by :func:`flip_maps`, at ``[0, H)``."""
        return tuple(slice(0, h) for h in self.spec.in_size)

    @property
    def w_place(self) -> tuple[slice, ...]:
        """The dilated kernel at ``0, d, 2d, ...``."""
        return tuple(slice(0, e, d) for e, d in zip(self.spec.kernel_extent, self.spec.dilation))

    @property
    def g_place(self) -> tuple[slice, ...]:
        """grad_output upsampled by the stride: ``0, s, 2s, ...``."""
        return tuple(
            slice(0, (o - 1) * s + 1, s) for o, s in zip(self.spec.out_size, self.spec.stride)
        )

    def spectrum_bytes(self, maps: int) -> int:
        return self.nfreq * maps * self.complex_dtype.itemsize

    def spectrum(self, maps: int, pool: SpectrumPool | None = None) -> np.ndarray:
        """A frequency-major buffer of ``maps`` maps, lent by ``pool`` (None: a new one).

        Reusing buffers across steps matters: a fresh 40 MB array costs 5-35 ms of page faults
        on the reference machine, as much as its transforms.
        """
        if pool is None:
            return self.empty_spectrum(maps)
        return pool.take_spectrum(
            self.half_shape, maps, self.complex_dtype, lambda: self.empty_spectrum(maps)
        )

    def empty_spectrum(self, maps: int) -> np.ndarray:
        """Uninitialised frequency-major array ``(*half_shape, maps)``.

        The batch axis is padded to a leading dimension that is an odd multiple of 8 elements:
        with a power-of-two stride, FFTW's strided writes hit one cache set and ran 2-5x slower
        (measured here: 40 us per 72x72 map at stride 2048, 9.4 us at stride 2056).
        """
        raw = pyfftw.empty_aligned(
            (*self.half_shape, spectrum_ld(maps)), dtype=self.complex_dtype, n=64
        )
        return raw[..., :maps]


def spectrum_ld(maps: int) -> int:
    """The leading dimension of a spectrum buffer of ``maps`` maps: an odd multiple of 8."""
    ld = -(-maps // 8) * 8
    return ld + 8 if (ld // 8) % 2 == 0 else ld


class SpectrumPool:
    """Spectrum buffers lent to one call at a time (thread-safe): a :class:`fftbp.Conv` keeps
    one so that its training steps reuse memory, and no two running calls share a buffer.

    At most ``max_free`` buffers wait in the pool, the most recently returned ones: a layer
    that sees many input sizes keeps the buffers of the last few, not of all.
    """

    def __init__(self, max_free: int = 6) -> None:
        self._free: list[tuple[tuple[Any, ...], np.ndarray]] = []
        #: id of a narrowed view lent by take_spectrum -> (that view, weakly; the whole buffer)
        self._whole: dict[int, tuple[weakref.ref, np.ndarray]] = {}
        self._max_free = max_free
        self._lock = threading.Lock()
        #: buffers given back, not yet filed: giving never waits for the lock, because it runs
        #: in finalizers, which the garbage collector may call while this thread holds it
        self._returned: collections.deque[tuple[tuple[Any, ...], np.ndarray]] = collections.deque()

    def take(
        self, shape: tuple[int, ...], dtype: np.dtype, make: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """A free buffer of ``shape`` and ``dtype``, else a new one, ``make()``."""
        key = (shape, np.dtype(dtype).str)
        with self._lock:
            self._file()
            for i in range(len(self._free) - 1, -1, -1):
                if self._free[i][0] == key:
                    return self._free.pop(i)[1]
        return make()

    def take_spectrum(
        self,
        half_shape: tuple[int, ...],
        maps: int,
        dtype: np.dtype,
        make: Callable[[], np.ndarray],
    ) -> np.ndarray:
        """A frequency-major buffer of at least ``maps`` maps (the smallest free one, viewed
        down to ``maps``: a batch's last, smaller chunk reuses the chunks' buffer), else
        ``make()``."""
        key = ("spectrum", half_shape, np.dtype(dtype).str)
        with self._lock:
            self._file()
            for k, (ref, _) in list(self._whole.items()):
                if ref() is None:  # views that died without coming back
                    self._whole.pop(k, None)
            fits = [i for i, (k, b) in enumerate(self._free) if k == key and b.shape[-1] >= maps]
            if fits:
                whole = self._free.pop(min(fits, key=lambda i: self._free[i][1].shape[-1]))[1]
                if whole.shape[-1] == maps:
                    return whole
                view = whole[..., :maps]
                self._whole[id(view)] = (weakref.ref(view), whole)
                return view
        return make()

    def give(self, buf: np.ndarray | None) -> None:
        """Take back a buffer its borrower no longer reads or writes."""
        if buf is not None:
            self._give((buf.shape, buf.dtype.str), buf)

    def give_spectrum(self, buf: np.ndarray | None) -> None:
        """Take back a buffer lent by :meth:`take_spectrum` (whole again if it was narrowed)."""
        if buf is not None:
            buf = self.whole(buf)
            self._give(("spectrum", buf.shape[:-1], buf.dtype.str), buf)

    def whole(self, buf: np.ndarray) -> np.ndarray:
        """The whole buffer behind ``buf`` if :meth:`take_spectrum` narrowed it, else a new view
        of ``buf`` (to give back later, once ``buf`` itself is garbage)."""
        entry = self._whole.pop(id(buf), None)  # atomic: no lock (see ``_returned``)
        if entry is not None and entry[0]() is buf:
            return entry[1]
        return buf.view()

    def _give(self, key: tuple[Any, ...], buf: np.ndarray) -> None:
        self._returned.append((key, buf))  # atomic
        if self._lock.acquire(blocking=False):  # else the holder files it
            try:
                self._file()
            finally:
                self._lock.release()

    def _file(self) -> None:
        """Move returned buffers to the free list (the caller holds the lock)."""
        while self._returned:
            self._free.append(self._returned.popleft())
        del self._free[: -self._max_free]


def layout(spec: ConvSpec, shape: tuple[int, ...] | None = None) -> FFTLayout:
    """The FFT geometry for ``spec`` (transform sizes from :func:`transform_shape`)."""
    return _layout(spec, None if shape is None else tuple(shape))


@functools.lru_cache(maxsize=256)
def _layout(spec: ConvSpec, shape: tuple[int, ...] | None) -> FFTLayout:
    """Cached, the transform sizes included (every pass asks for it outside the parallel
    sections): a layout is immutable, its index arrays read-only."""
    shape = transform_shape(spec) if shape is None else shape
    out_i, dx_i, dw_i = [], [], []
    for h, (lo, _), k, s, d, o, m in zip(
        spec.in_size, spec.padding, spec.kernel, spec.stride, spec.dilation, spec.out_size, shape
    ):
        out_i.append(axis_index(lo + h - 1, o, -s, m))
        dx_i.append(axis_index(lo, h, 1, m))
        dw_i.append(axis_index(lo + h - 1, k, -d, m))
    for index in (*out_i, *dx_i, *dw_i):
        if isinstance(index, np.ndarray):
            index.flags.writeable = False
    return FFTLayout(spec, shape, tuple(out_i), tuple(dx_i), tuple(dw_i))


# -- spectra -------------------------------------------------------------------------------------
def flip_maps(a: np.ndarray) -> np.ndarray:
    """Reverse every spatial axis of a ``(B, *size)`` stack of maps (a view)."""
    return a[(slice(None),) + (slice(None, None, -1),) * (a.ndim - 1)]


#: buffer id -> (weak reference to the buffer, placement whose complement is known to be zero)
_zero_outside: dict[int, tuple[weakref.ref, tuple[Any, ...]]] = {}
_zero_lock = threading.Lock()


def place_maps(dst: np.ndarray, src: np.ndarray, place: tuple[slice, ...]) -> None:
    """Write ``src`` maps at ``place`` in ``dst`` and zero everything else.

    Transform scratch buffers are refilled with the same placement over and over, and forward
    FFTW plans preserve their input, so the zeros outside ``place`` survive: they are written
    only when the buffer last held another placement (checked by identity and geometry).
    """
    token = (place, dst.shape, dst.strides, dst.dtype.str)
    key = id(dst)
    with timed("copies"):
        entry = _zero_outside.get(key)
        if entry is None or entry[0]() is not dst or entry[1] != token:
            if all(p.start == 0 and p.step in (None, 1) for p in place):
                for axis, p in enumerate(place):
                    dst[(slice(None), *place[:axis], slice(p.stop, None))] = 0
            else:
                dst.fill(0)
            with _zero_lock:  # several calls place maps at once
                if len(_zero_outside) > 4096:  # drop entries of buffers that no longer exist
                    for k in [k for k, (ref, _) in _zero_outside.items() if ref() is None]:
                        del _zero_outside[k]
                _zero_outside[key] = (weakref.ref(dst), token)
        dst[(slice(None), *place)] = src


def read_maps(
    dest: np.ndarray,
    src: np.ndarray,
    index: tuple[Index, ...],
    scale: float | None = None,
    bias_rows: np.ndarray | None = None,
) -> None:
    """``dest = scale * src[:, index] (+ bias_rows per map)``, in one pass over ``dest``."""
    with timed("copies"):
        res = _gather(src, index)
        if scale is not None:
            np.multiply(res, scale, out=dest)
            if bias_rows is not None:
                dest += bias_rows[(slice(None), *(None,) * (dest.ndim - 1))]
        elif bias_rows is not None:
            np.add(res, bias_rows[(slice(None), *(None,) * (dest.ndim - 1))], out=dest)
        else:
            np.copyto(dest, res)
