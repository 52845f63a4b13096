"""The rule behind ``method="auto"``: compare flop counts weighted by measured throughputs.

Throughputs (float32, 2 cores, this project's reference machine, see
``benchmarks/results/layers.md``): the direct path's im2col + GEMM sustains about
``DIRECT_GFLOPS``; batched FFTW transforms about ``FFT_GFLOPS`` (counting 2.5 n log2 n flops per
real transform); the frequency-domain channel products about ``PRODUCT_GFLOPS`` (8 flops per
complex multiply-add). The rule picks the cheaper estimate for one forward pass; its error is a
factor of about 2 near the crossover, which the planner (a later issue) replaces with per-pass,
measured decisions.
"""

from __future__ import annotations

import math

from fftbp._params import ConvSpec

__all__ = ["METHODS", "choose_method", "estimate_costs"]

METHODS = ("auto", "fft", "direct")

#: im2col + GEMM, float32, 2 threads: measured 14 GFLOP/s at dense k=3 and 36 at k=15
#: (benchmarks/results/layers.md, 2026-11-26, N8 C=F=32 64x64); numpy sgemm reaches ~240.
DIRECT_GFLOPS = 30.0
#: pyFFTW r2c/c2r, 1 thread per worker x 2 workers: 8-13 us per 72x72 map per core measured
#: in docs/design.md, i.e. 12-20 GFLOP/s per core at 2.5 n log2 n.
FFT_GFLOPS = 20.0
#: complex64 batched matmul at one frequency per call, 2 workers (CALIBRATION.md: 20-150).
PRODUCT_GFLOPS = 30.0


def estimate_costs(spec: ConvSpec) -> dict[str, float]:
    """Estimated seconds of one forward pass by each method (no weight-spectrum reuse)."""
    from fftbp.fft.sizes import transform_shape

    shape = transform_shape(spec)
    m = math.prod(shape)
    nfreq = math.prod(shape[:-1]) * (shape[-1] // 2 + 1)
    cg = spec.in_channels // spec.groups
    maps = spec.batch * spec.in_channels + spec.out_channels * cg + spec.batch * spec.out_channels
    fft_flops = 2.5 * m * max(math.log2(m), 1.0) * maps
    prod_flops = 8.0 * spec.batch * spec.out_channels * cg * nfreq
    return {
        "direct": spec.flops / (DIRECT_GFLOPS * 1e9),
        "fft": fft_flops / (FFT_GFLOPS * 1e9) + prod_flops / (PRODUCT_GFLOPS * 1e9),
    }


def choose_method(spec: ConvSpec) -> str:
    """``"fft"`` or ``"direct"``, whichever :func:`estimate_costs` says is faster."""
    costs = estimate_costs(spec)
    return "fft" if costs["fft"] < costs["direct"] else "direct"
