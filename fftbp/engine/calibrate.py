"""``fftbp calibrate``: measure the cost model's constants on this machine (seconds, not minutes).

Each constant is measured on the code path it models, with fftbp's own time accounting
(:func:`fftbp._config.profiling`): the FFTW executes, the channel products and the copies of a
dense 48x48 layer, and the products of a 4-channel layer (whose fixed cost per frequency
they dominate); the elementwise products of a depthwise layer; the fixed cost of a tiny call;
the direct path's GEMM rate on a stride-1 layer and its unfold rate on a strided one (each
after subtracting what the model already accounts for); with torch installed, PyTorch's own
convolution rates on a dense and two depthwise layers (the candidate :mod:`fftbp.torch` plans
with). Every figure is the
median of a few repetitions. The result is stored per machine fingerprint in the cache
directory and used by ``mode="estimate"`` from then on.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from fftbp._config import call_settings, get_num_threads, median_time, profiling
from fftbp._params import ConvSpec, Pass
from fftbp.engine.executor import has_base, run_pass
from fftbp.fft.sizes import fft_cost, transform_shape
from fftbp.planning import store
from fftbp.planning.cost import Constants, direct_cost_of, pruned_maps
from fftbp.planning.planner import set_constants
from fftbp.planning.routes import Route

__all__ = ["calibrate"]


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


def _rate(amount: float, seconds: float, fallback: float) -> float:
    """amount / seconds, or ``fallback`` when the remainder is too small to measure."""
    return amount / seconds if seconds > 1e-5 else fallback


def _solve(model: Callable[[float], float], seconds: float, fallback: float) -> float:
    """The rate at which ``model(rate)`` (decreasing in the rate) predicts ``seconds``:
    bisection on a log scale between 1e8 and 1e14; ``fallback`` if none does."""
    lo, hi = 1e8, 1e14
    if not model(hi) <= seconds <= model(lo):
        return fallback
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if model(mid) > seconds:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def _layer(spec: ConvSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal(spec.input_shape).astype(spec.dtype)
    w = rng.standard_normal(spec.weight_shape).astype(spec.dtype)
    return x, w


def calibrate(*, reps: int = 5, save: bool = True) -> Constants:
    """Measure the constants of :class:`~fftbp.planning.cost.Constants` and (by default) store
    them for this machine. Returns the measured constants."""
    with call_settings():  # as every fftbp call runs
        k = _measure_constants(reps)
    if save:
        store.save_constants(k.to_json())
        set_constants(k)
    return k


def _measure_constants(reps: int) -> Constants:

    rng = np.random.default_rng(0)
    threads = get_num_threads()
    default = Constants()

    # transforms, channel products and copies: a dense layer by whole-map FFT
    dense = ConvSpec.from_shapes((8, 32, 48, 48), (32, 32, 9, 9), padding=4)
    x, w = _layer(dense, rng)
    prof = _profiled(lambda: run_pass(Route("fft"), dense, Pass.FORWARD, x, w), reps)
    shape = transform_shape(dense)
    n, c, f = dense.batch, dense.in_channels, dense.out_channels
    maps = n * c + f * c + n * f
    nfreq = math.prod(shape[:-1]) * (shape[-1] // 2 + 1)
    # in whole-map equivalents: the weight maps (9 rows of 54) take pruned transforms
    whole = pruned_maps(dense, Pass.FORWARD, frozenset(), shape)
    fft_s = prof["transforms"] / threads / (whole * fft_cost(shape))
    t_dense = prof["products"] / threads / nfreq  # per frequency
    flops_dense = 8.0 * n * c * f

    # the fixed cost of a frequency's product: a layer of 4 channels, where it dominates
    few = ConvSpec.from_shapes((4, 4, 96, 96), (4, 4, 31, 31), padding=15)
    xs, ws = _layer(few, rng)
    few_prof = _profiled(lambda: run_pass(Route("fft"), few, Pass.FORWARD, xs, ws), reps)
    few_shape = transform_shape(few)
    t_few = few_prof["products"] / threads / (math.prod(few_shape[:-1]) * (few_shape[-1] // 2 + 1))
    flops_few = 8.0 * few.batch * few.in_channels * few.out_channels
    # t = item + flops / rate for both layers
    dt = t_dense - t_few
    product_flops = (flops_dense - flops_few) / dt if dt > 0 else default.product_flops
    product_item_s = max(t_few - flops_few / product_flops, 1e-9)  # stored constants are > 0
    copied = maps * math.prod(shape) * 4 + maps * nfreq * 8
    copy_bytes = copied / max(prof["copies"] / threads, 1e-9)

    # elementwise products: a depthwise layer
    dw = ConvSpec.from_shapes((8, 64, 48, 48), (64, 1, 15, 15), padding=7, groups=64)
    x, w = _layer(dw, rng)
    prof = _profiled(lambda: run_pass(Route("fft"), dw, Pass.FORWARD, x, w), reps)
    shape = transform_shape(dw)
    nfreq = math.prod(shape[:-1]) * (shape[-1] // 2 + 1)
    elementwise_s = prof["products"] / threads / (nfreq * dw.batch * dw.out_channels)
    dw_maps = 2 * dw.batch * dw.in_channels + dw.out_channels
    fft_natural_s = prof["transforms"] / threads / (dw_maps * fft_cost(shape))

    call_spec = ConvSpec.from_shapes((1, 1, 8, 8), (1, 1, 3, 3), padding=1)
    x, w = _layer(call_spec, rng)
    call_s = median_time(lambda: run_pass(Route("fft"), call_spec, Pass.FORWARD, x, w), reps * 4)

    # direct, stride 1 (shifted GEMMs): the GEMM rate, after the modelled copies
    partial = Constants(copy_bytes=copy_bytes, call_s=call_s)
    s1 = ConvSpec.from_shapes((4, 32, 32, 32), (32, 32, 7, 7), padding=3)
    x, w = _layer(s1, rng)
    t = median_time(lambda: run_pass(Route("direct"), s1, Pass.FORWARD, x, w), reps)
    direct_flops = _solve(
        lambda rate: direct_cost_of(s1, Pass.FORWARD, replace(partial, direct_flops=rate)),
        t,
        default.direct_flops,
    )

    # direct, strided (im2col + GEMM): the unfold's byte rate, after the GEMM
    s2 = ConvSpec.from_shapes((4, 32, 32, 32), (32, 32, 7, 7), stride=2, padding=3)
    x, w = _layer(s2, rng)
    t = median_time(lambda: run_pass(Route("direct"), s2, Pass.FORWARD, x, w), reps)
    unfold = s2.batch * math.prod(s2.out_size) * s2.in_channels * math.prod(s2.kernel) * 4
    direct_bytes = _rate(unfold, t - 2 * s2.flops / direct_flops - call_s, default.direct_bytes)

    k = Constants(
        fft_s_per_unit=fft_s,
        fft_natural_s_per_unit=fft_natural_s,
        product_flops=product_flops,
        product_item_s=product_item_s,
        elementwise_s=elementwise_s,
        copy_bytes=copy_bytes,
        direct_flops=direct_flops,
        direct_bytes=direct_bytes,
        call_s=call_s,
        **_torch_rates(s1, reps, rng, default),
    )
    return k


def _torch_rates(
    dense: ConvSpec, reps: int, rng: np.random.Generator, default: Constants
) -> dict[str, float]:
    """PyTorch's convolution rates (:func:`fftbp.planning.cost.torch_cost_of`), if torch is
    installed and :mod:`fftbp.torch` registered it (the command imports it): a dense 7x7
    layer, and a depthwise layer on oneDNN's fast path (7x7 forward) and on the generic one
    (31x31 forward)."""
    if not has_base("torch"):
        return {}
    fast = ConvSpec.from_shapes((4, 64, 32, 32), (64, 1, 7, 7), padding=3, groups=64)
    slow = ConvSpec.from_shapes((4, 64, 32, 32), (64, 1, 31, 31), padding=15, groups=64)
    rates = {}
    for name, spec, fallback in (
        ("torch_dense_flops", dense, default.torch_dense_flops),
        ("torch_dw_fast_flops", fast, default.torch_dw_fast_flops),
        ("torch_dw_slow_flops", slow, default.torch_dw_slow_flops),
    ):
        x, w = _layer(spec, rng)
        # the best time, not the median: torch is taken at its fastest, so that the planner
        # leaves borderline layers to it
        t = min(
            median_time(lambda s=spec, x=x, w=w: run_pass(Route("torch"), s, Pass.FORWARD, x, w), 1)
            for _ in range(reps)
        )
        rates[name] = _rate(spec.flops, t, fallback)
    return rates
