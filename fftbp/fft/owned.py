"""Plans between arrays they own, in natural layout (the depthwise kernels' transforms), from
the same bounded cache as the frequency-major plans (:mod:`fftbp.fft.plans`)."""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
import pyfftw

from fftbp._config import get_fftw_effort
from fftbp.fft.plans import _ALIGN, _Plan, checkout

__all__ = ["owned_plan"]


def owned_plan(
    forward: bool, b: int, shape: tuple[int, ...], real: np.dtype, tag: str = ""
) -> AbstractContextManager[_Plan]:
    """Check out a plan transforming ``b`` maps between two arrays it owns, in natural layout.

    ``plan.fftw.input_array`` / ``plan.fftw.output_array`` are ``(b, *shape)`` real and
    ``(b, *half)`` complex (swapped for the inverse), the caller's until the ``with`` block
    ends. A caller that rebinds the plan's arrays (``fftw.update_arrays``) passes its own
    ``tag`` so that it is handed back only to callers that rebind them too.
    """
    effort = get_fftw_effort()
    key = ("owned", tag, forward, b, shape, real.str, effort)
    return checkout(key, lambda: _build_owned(forward, b, shape, real, effort))


def _build_owned(
    forward: bool, b: int, shape: tuple[int, ...], real: np.dtype, effort: str
) -> _Plan:
    complex_dt = np.result_type(real, np.complex64)
    half = (*shape[:-1], shape[-1] // 2 + 1)
    r = pyfftw.empty_aligned((b, *shape), dtype=real, n=_ALIGN)
    c = pyfftw.empty_aligned((b, *half), dtype=complex_dt, n=_ALIGN)
    axes = tuple(range(1, len(shape) + 1))
    flags = [effort] if forward else [effort, "FFTW_DESTROY_INPUT"]  # as in _build_strided
    if forward:
        fftw = pyfftw.FFTW(r, c, axes=axes, direction="FFTW_FORWARD", flags=flags, threads=1)
    else:
        fftw = pyfftw.FFTW(c, r, axes=axes, direction="FFTW_BACKWARD", flags=flags, threads=1)
    return _Plan(fftw, r, (fftw.input_array, fftw.output_array), extra=c.nbytes)
