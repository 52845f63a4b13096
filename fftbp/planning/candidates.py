"""The routes the planner considers for a layer: direct, whole-map FFT, a few overlap-save tile
sizes, the stride / dilation decompositions where they apply, and (for ``tol=``) FFT in
float64; PyTorch's convolution when :mod:`fftbp.torch` plans."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from fftbp._params import ConvSpec
from fftbp.fft.sizes import fast_len, transform_shape
from fftbp.planning.routes import Route, applicable_preps

__all__ = ["candidate_routes", "tiles"]


def tiles(spec: ConvSpec) -> list[tuple[int, ...]]:
    """A few overlap-save tile sizes (outputs per tile): windows of fast lengths around 2-8
    kernel extents, only where they are smaller than the whole map."""
    whole = transform_shape(spec)
    out: list[tuple[int, ...]] = []
    for mult in (2, 3, 4, 6, 8):
        tile = []
        for e, st, o in zip(spec.kernel_extent, spec.stride, spec.out_size):
            window = fast_len(max(mult * e, e + 8))
            t = (window - e) // st + 1
            tile.append(max(1, min(t, o)))
        # worth it only if some axis gets more than one tile and windows are smaller than maps
        windows = [(t - 1) * st + e for t, st, e in zip(tile, spec.stride, spec.kernel_extent)]
        if any(t < o for t, o in zip(tile, spec.out_size)) and math.prod(windows) < math.prod(
            whole
        ):
            tup = tuple(tile)
            if tup not in out:
                out.append(tup)
    return out


def candidate_routes(spec: ConvSpec, native: bool = False, wide: bool = False) -> list[Route]:
    """Every route the planner considers for ``spec`` (``native``: PyTorch's convolution too;
    ``wide``: FFT routes computed in float64 for a float32 layer, an option under ``tol=``)."""
    routes = [Route("direct"), Route("fft")] + ([Route("torch")] if native else [])
    routes += [Route("fft", tile=t) for t in tiles(spec)]
    for prep in applicable_preps(spec)[1:]:
        r = Route("fft", prep)
        routes.append(r)
        routes += [Route("fft", prep, t) for t in tiles(r.inner(spec))]
        if prep == "polyphase":  # strided im2col -> stride-1 shifted GEMMs (ResNet stem: 3x)
            routes.append(Route("direct", prep))
    if wide and spec.dtype == np.float32:
        routes += [replace(r, precision="float64") for r in routes if r.base == "fft"]
    return routes
