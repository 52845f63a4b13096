"""Small array helpers shared by the kernels and the reductions (large copies run on fftbp's
worker threads)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fftbp._config import get_num_threads, parallel_for

__all__ = ["pad_or_crop", "parallel_copied", "parallel_copy", "parallel_zeros"]

#: copies of at least this many bytes are split over the worker threads. On two workers a
#: split costs a thread round trip (an empty two-worker section: 52-73 us here), so copies of
#: 1-8 MB run faster on the caller there (1 MB 130 us split against 39 us, 4 MB 213 / 163 us,
#: 16 MB 516 / 818 us); they are split all the same, for the machines with many cores the
#: training steps are meant for, where a copy left on one core is serial time (Amdahl).
PARALLEL_COPY_BYTES = 1 << 20


def _split_over_workers(
    shape: tuple[int, ...], axes: range, body: Callable[[tuple[slice, ...]], None]
) -> None:
    """``body(part)`` for slices ``part`` of the longest of ``axes``, on the worker threads
    (four pieces per worker)."""
    axis = max(axes, key=lambda i: shape[i])
    n = shape[axis]
    lead = (slice(None),) * axis

    def run(_slot: int, a: int, b: int) -> None:
        body((*lead, slice(a, b)))

    parallel_for(run, n, max(1, -(-n // (4 * get_num_threads()))))


def parallel_copy(dst: np.ndarray, src: np.ndarray | float) -> None:
    """``dst[...] = src`` (same shape, or a scalar), split over the worker threads along the
    longest axis but the last: a large copy otherwise runs on one core between the kernels'
    parallel parts."""
    scalar = np.ndim(src) == 0
    if not scalar and dst.shape != np.shape(src):
        raise ValueError(f"src: expected shape {dst.shape}, got {np.shape(src)}")
    if dst.nbytes < PARALLEL_COPY_BYTES or dst.ndim < 2:
        np.copyto(dst, src)
        return

    def copy(part: tuple[slice, ...]) -> None:
        np.copyto(dst[part], src if scalar else src[part])  # type: ignore[index]

    _split_over_workers(dst.shape, range(dst.ndim - 1), copy)


def parallel_copied(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a``, made by :func:`parallel_copy`."""
    out = np.empty(a.shape, dtype=a.dtype)
    parallel_copy(out, a)
    return out


def parallel_zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``np.zeros``, written by the worker threads when large (memory that the allocator
    recycles must be cleared, 5 MB in 1.7 ms on one core here)."""
    out = np.empty(shape, dtype=dtype)
    parallel_copy(out, 0)
    return out


def pad_or_crop(x: np.ndarray, pairs: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Zero-pad (positive) or crop (negative) the trailing ``len(pairs)`` axes of ``x``.

    Parameters
    ----------
    x : np.ndarray
        The array; its last ``len(pairs)`` axes are resized, the leading ones kept.
    pairs : tuple of (int, int)
        ``(lo, hi)`` per trailing axis: zeros added (positive) or samples removed (negative)
        before the start and after the end of that axis.

    Returns
    -------
    np.ndarray
        Per trailing axis of length ``n``, length ``L = n + lo + hi`` with
        ``out[i] = x[i - lo]`` where ``0 <= i - lo < n`` and ``0`` elsewhere, so a crop larger
        than the axis followed by a pad leaves zeros, never a shifted or resized copy. A view
        of ``x`` when nothing is padded (every ``lo, hi <= 0``), a new array otherwise.

    Raises
    ------
    ValueError
        If ``pairs`` names more axes than ``x`` has, or gives some axis a negative length.
    """
    nd = len(pairs)
    lead = x.ndim - nd
    if lead < 0:
        raise ValueError(f"pairs: {nd} (lo, hi) pairs for an array of shape {x.shape!r}")
    shape = x.shape[lead:]
    size = tuple(n + lo + hi for n, (lo, hi) in zip(shape, pairs))
    if any(s < 0 for s in size):
        raise ValueError(
            f"pairs: {pairs!r} crops more than the axes of shape {shape!r} hold (lengths {size!r})"
        )
    # out[i] = x[i - lo]: per axis the source samples [start, stop), the intersection of
    # [0, n) with the destination [0, L) shifted by -lo, land at max(lo, 0) onwards.
    src: list[slice] = []
    dst: list[slice] = []
    for n, (lo, hi) in zip(shape, pairs):
        start = min(max(-lo, 0), n)
        stop = max(min(n, n + hi), start)  # stop == start: the whole axis stays zero
        src.append(slice(start, stop))
        dst.append(slice(max(lo, 0), max(lo, 0) + stop - start))
    keep = (slice(None),) * lead
    if all(lo <= 0 and hi <= 0 for lo, hi in pairs):
        return x[keep + tuple(src)]
    out = np.empty(x.shape[:lead] + size, dtype=x.dtype)
    inner, outer = out[keep + tuple(dst)], x[keep + tuple(src)]

    def fill(part: tuple[slice, ...]) -> None:  # zeros, then the copy while still in cache
        out[part].fill(0)
        np.copyto(inner[part], outer[part])

    if out.nbytes < PARALLEL_COPY_BYTES or lead == 0:
        fill(())
    else:  # one section over a leading axis (unpadded: the same slice of out, inner, x)
        _split_over_workers(out.shape, range(lead), fill)
    return out
