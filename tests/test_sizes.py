"""Transform sizes: the same candidates as the old scan, and fast for any n."""

from __future__ import annotations

import math
import threading
import time

import pytest

from fftbp.fft import sizes
from fftbp.fft.sizes import _candidates, _penalty, fast_len, fast_shape

_ORACLE_MAX = 5000


def _is_smooth(n: int) -> bool:
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


# The scan's _smooth test for every m it can meet (m < 2 * _ORACLE_MAX), precomputed so the
# 12.5 M-step oracle below runs in about a second.
_SMOOTH = [m > 0 and _is_smooth(m) for m in range(2 * _ORACLE_MAX)]


def _old_candidates(n: int, last: bool) -> tuple[int, ...]:
    """The scan ``_candidates`` replaced, verbatim but for the precomputed ``_smooth`` table."""
    if n <= 2:
        return (max(n, 1),)
    lens = [m for m in range(n, 2 * n) if _SMOOTH[m]]
    lens.sort(key=lambda m: m * math.log2(m) * _penalty(m, last))
    return tuple(lens[:4])


def test_candidates_match_the_old_scan() -> None:
    compute = _candidates.__wrapped__  # bypass the cache: check the computation itself
    for n in range(1, _ORACLE_MAX + 1):
        for last in (False, True):
            assert compute(n, last) == _old_candidates(n, last), (n, last)


def test_smooth_octave_lists_every_7_smooth_length() -> None:
    for n in range(1, 2000):
        assert sizes._smooth_octave(n) == [m for m in range(n, 2 * n) if _is_smooth(m)], n


def _timed_fast_len(n: int, limit: float) -> tuple[int, float]:
    """``fast_len(n)`` and its wall time, run in a daemon thread so a hang fails the test."""
    result: list[tuple[int, float]] = []

    def work() -> None:
        t0 = time.perf_counter()
        m = fast_len(n)
        result.append((m, time.perf_counter() - t0))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout=limit)
    assert result, f"fast_len({n}) did not return within {limit} s"
    return result[0]


@pytest.mark.parametrize("n", [10**7, 2**40, 2**40 + 1, 3**25, 2**62, 2**62 - 1])
def test_fast_len_is_fast_for_huge_lengths(n: int) -> None:
    _candidates.cache_clear()
    fast_shape.cache_clear()
    m, elapsed = _timed_fast_len(n, limit=5.0)
    assert n <= m < 2 * n
    assert _is_smooth(m)
    assert elapsed < 1.0, f"fast_len({n}) took {elapsed:.3f} s"  # a hang guard, not a benchmark


@pytest.mark.parametrize("n", [1, 2, 3, 7, 11, 13, 51, 97, 1000, 12345])
def test_fast_len_small(n: int) -> None:
    m = fast_len(n)
    assert m >= n and _is_smooth(m)
    assert m == fast_shape((n,))[0]
