"""Small array helpers shared by the kernels and the reductions (no fftbp imports)."""

from __future__ import annotations

import numpy as np

__all__ = ["pad_or_crop"]


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
    out = np.zeros(x.shape[:lead] + size, dtype=x.dtype)
    out[keep + tuple(dst)] = x[keep + tuple(src)]
    return out
