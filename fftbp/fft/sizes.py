"""Transform sizes: the smallest wrap-free size per axis, rounded up to a fast FFTW length.

The derivation of the wrap-free size is in ``docs/algebra.md`` ("How large must the transform
be"). Rounding up uses a measured cost rule instead of plain ``pyfftw.next_fast_len``, which
returns the smallest 2·3·5·7·11·13-smooth length whatever its speed. Single-threaded FFTW_MEASURE
r2c plans of 16 float32 maps on the reference machine (AMD EPYC, AVX-512), us per map:

======== ===== ======== ===== ======== =====
shape    us    shape    us    shape    us
======== ===== ======== ===== ======== =====
72x72    7.8   80x80    9.3   81x81    22.6
84x84    13.5  81x84    16.4  84x81    28.1
66x66    11.0  96x96    14.5  75x80    16.4
90x90    15.3  70x70    11.2  64x64    7.3
======== ===== ======== ===== ======== =====

So next_fast_len's 81 (for a 'same' 51x51 kernel on 56x56 maps) costs 1.7x the larger 84, and
66 = 2·3·11 costs 1.4x the larger 72. The rule: a d-dimensional transform costs
``prod(n) * sum_i log2(n_i) * penalty(n_i)``, with penalty 1 for even 2·3·5-smooth lengths,
1.15 with a factor 7, 2 for odd lengths and 3 for an odd last axis (the half-complex axis); factors
11 and 13 are not used. Each axis tries the cheapest candidates among the 7-smooth lengths in
``[n, 2n)``, enumerated as ``2^a 3^b 5^c 7^d`` (microseconds for any n). Differences
of 20% between even lengths are codelet luck that no rule captures; the planner's measure mode
times the candidates instead.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

from fftbp._params import ConvSpec

__all__ = ["fast_len", "fft_cost", "min_transform_len", "transform_shape"]


def _smooth_octave(n: int) -> list[int]:
    """Every 7-smooth number (``2^a 3^b 5^c 7^d``) in ``[n, 2n)``, ascending (``n >= 1``).

    Each odd part ``3^b 5^c 7^d < 2n`` lands in ``[n, 2n)`` times exactly one power of two, the
    smallest ``2^a >= ceil(n / odd)``; so the work is the number of odd parts, ``O(log^3 n)``,
    not a scan of ``n`` integers.
    """
    hi = 2 * n
    out: list[int] = []
    p7 = 1
    while p7 < hi:
        p75 = p7
        while p75 < hi:
            odd = p75
            while odd < hi:
                out.append(odd << (-(-n // odd) - 1).bit_length())
                odd *= 3
            p75 *= 5
        p7 *= 7
    out.sort()
    return out


def _penalty(n: int, last: bool) -> float:
    if n % 2:
        return 3.0 if last else 2.0
    return 1.15 if n % 7 == 0 else 1.0


def fft_cost(shape: tuple[int, ...]) -> float:
    """Relative cost of one real transform of ``shape`` (the measured rule above)."""
    last = len(shape) - 1
    return math.prod(shape) * sum(
        math.log2(max(n, 2)) * _penalty(n, i == last) for i, n in enumerate(shape)
    )


@lru_cache(maxsize=4096)
def _candidates(n: int, last: bool) -> tuple[int, ...]:
    """The few 7-smooth lengths in ``[n, 2n)`` worth trying for one axis, best first."""
    if n <= 2:
        return (max(n, 1),)
    lens = _smooth_octave(n)  # ascending, so the stable sort breaks cost ties by length
    lens.sort(key=lambda m: m * math.log2(m) * _penalty(m, last))
    return tuple(lens[:4])


@lru_cache(maxsize=4096)
def fast_shape(min_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The cheapest shape (by :func:`fft_cost`) with every axis at least ``min_shape``."""
    last = len(min_shape) - 1
    options = [_candidates(n, i == last) for i, n in enumerate(min_shape)]
    return min(itertools.product(*options), key=fft_cost)


def fast_len(n: int) -> int:
    """The cheapest length >= n for a one-dimensional real transform."""
    return fast_shape((int(n),))[0]


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
    return fast_shape(
        tuple(
            min_transform_len(h, lo, e, s, o)
            for h, (lo, _), e, s, o in zip(
                spec.in_size, spec.padding, spec.kernel_extent, spec.stride, spec.out_size
            )
        )
    )
