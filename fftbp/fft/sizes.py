"""Transform sizes: the smallest wrap-free size per axis, rounded up to a fast FFTW length.

The derivation is in ``docs/algebra.md`` ("How large must the transform be").
"""

from __future__ import annotations

import pyfftw

from fftbp._params import ConvSpec

__all__ = ["fast_len", "min_transform_len", "transform_shape"]


def fast_len(n: int) -> int:
    """Smallest length >= n that FFTW transforms fast (``pyfftw.next_fast_len``)."""
    return int(pyfftw.next_fast_len(int(n)))


def min_transform_len(h: int, lo: int, extent: int, stride: int, out: int) -> int:
    """Smallest circular length that leaves every needed output of all three passes exact.

    With the input occupying ``[lo, lo + h)`` of the padded line and the dilated kernel
    ``[0, extent)``, output ``o`` reads lags ``o*stride .. o*stride + extent - 1``. Wrap-around
    is avoided iff ``M >= h + lo`` (the input's last sample never reaches the first lag) and
    ``M >= (out - 1)*stride + extent - lo`` (the last lag never wraps onto the input's start).
    For stride 1 and padding (lo, hi) this is ``h + max(lo, hi)``. The buffers must also hold
    the kernel (``extent``) and the upsampled grad_output (``(out - 1)*stride + 1``), which only
    binds when the padding exceeds the kernel.
    """
    return max(h + lo, (out - 1) * stride + extent - lo, extent, (out - 1) * stride + 1)


def transform_shape(spec: ConvSpec) -> tuple[int, ...]:
    """Per-axis FFT size used by the whole-map FFT path for ``spec``."""
    return tuple(
        fast_len(min_transform_len(h, lo, e, s, o))
        for h, (lo, _), e, s, o in zip(
            spec.in_size, spec.padding, spec.kernel_extent, spec.stride, spec.out_size
        )
    )
