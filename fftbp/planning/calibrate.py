"""``fftbp calibrate``: measure the cost model's constants on this machine (seconds, not minutes).

Each constant is measured on the code path it models, with fftbp's own time accounting
(:func:`fftbp._config.profiling`): the FFTW executes, the channel products and the copies of a
dense 48x48 layer; the elementwise products of a depthwise layer; the direct path on two layers
(solving for its flop and byte rates); the fixed cost of a tiny call. Every figure is the
median of a few repetitions. The result is stored per machine fingerprint in the cache
directory and used by ``mode="estimate"`` from then on.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np

from fftbp._config import get_num_threads, profiling
from fftbp._params import ConvSpec
from fftbp.fft.sizes import fft_cost, transform_shape
from fftbp.planning import store
from fftbp.planning.cost import Constants
from fftbp.planning.routes import Route, run_forward

__all__ = ["calibrate"]


def _median_time(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _profiled(fn: Callable[[], object], reps: int) -> dict[str, float]:
    """Median per-call profile (CPU-seconds per category and wall seconds)."""
    fn()
    runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        with profiling() as prof:
            fn()
        runs.append({**prof, "wall": time.perf_counter() - t0})
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _layer(spec: ConvSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal(spec.input_shape).astype(spec.dtype)
    w = rng.standard_normal(spec.weight_shape).astype(spec.dtype)
    return x, w


def calibrate(*, reps: int = 5, save: bool = True) -> Constants:
    """Measure the constants of :class:`~fftbp.planning.cost.Constants` and (by default) store
    them for this machine. Returns the measured constants."""
    from fftbp.planning.plan import set_constants

    rng = np.random.default_rng(0)
    threads = get_num_threads()
    default = Constants()

    # transforms, channel products and copies: a dense layer by whole-map FFT
    dense = ConvSpec.from_shapes((8, 32, 48, 48), (32, 32, 9, 9), padding=4)
    x, w = _layer(dense, rng)
    prof = _profiled(lambda: run_forward(Route("fft"), dense, x, w, None), reps)
    shape = transform_shape(dense)
    n, c, f = dense.batch, dense.in_channels, dense.out_channels
    maps = n * c + f * c + n * f
    nfreq = math.prod(shape[:-1]) * (shape[-1] // 2 + 1)
    fft_s = prof["transforms"] / threads / (maps * fft_cost(shape))
    product_flops = 8.0 * nfreq * n * c * f / max(prof["products"] / threads, 1e-9)
    copied = maps * math.prod(shape) * 4 + maps * nfreq * 8
    copy_bytes = copied / max(prof["copies"] / threads, 1e-9)

    # elementwise products: a depthwise layer
    dw = ConvSpec.from_shapes((8, 64, 48, 48), (64, 1, 15, 15), padding=7, groups=64)
    x, w = _layer(dw, rng)
    prof = _profiled(lambda: run_forward(Route("fft"), dw, x, w, None), reps)
    shape = transform_shape(dw)
    nfreq = math.prod(shape[:-1]) * (shape[-1] // 2 + 1)
    elementwise_s = prof["products"] / threads / (nfreq * dw.batch * dw.out_channels)

    # direct: two layers with different flop/byte ratios, t = flops/R + bytes/B + call
    specs = [
        ConvSpec.from_shapes((4, 32, 32, 32), (32, 32, 3, 3), padding=1),
        ConvSpec.from_shapes((4, 32, 32, 32), (32, 32, 9, 9), padding=4),
    ]
    rows, times = [], []
    for s in specs:
        x, w = _layer(s, rng)
        t = _median_time(lambda s=s, x=x, w=w: run_forward(Route("direct"), s, x, w, None), reps)
        unfold = s.batch * math.prod(s.out_size) * s.in_channels * math.prod(s.kernel) * 4
        rows.append([s.flops, unfold])
        times.append(t)
    call_spec = ConvSpec.from_shapes((1, 1, 8, 8), (1, 1, 3, 3), padding=1)
    x, w = _layer(call_spec, rng)
    call_s = _median_time(lambda: run_forward(Route("fft"), call_spec, x, w, None), reps * 4)
    inv = np.linalg.lstsq(np.array(rows, float), np.array(times) - call_s, rcond=None)[0]
    direct_flops = 1.0 / inv[0] if inv[0] > 0 else default.direct_flops
    direct_bytes = 1.0 / inv[1] if inv[1] > 0 else default.direct_bytes

    k = Constants(
        fft_s_per_unit=fft_s,
        product_flops=product_flops,
        elementwise_s=elementwise_s,
        copy_bytes=copy_bytes,
        direct_flops=direct_flops,
        direct_bytes=direct_bytes,
        call_s=call_s,
    )
    if save:
        store.save_constants(k.to_json())
        set_constants(k)
    return k
