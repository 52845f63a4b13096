"""Batched real FFTs between natural and frequency-major layouts (pyFFTW plans, cached)."""

from fftbp.fft.plans import clear_plan_cache, irfft_batch, plan_cache_info, rfft_batch
from fftbp.fft.sizes import fast_len, transform_shape

__all__ = [
    "clear_plan_cache",
    "fast_len",
    "irfft_batch",
    "plan_cache_info",
    "rfft_batch",
    "transform_shape",
]
