"""The memory model: the workspace of each pass by each route, as ``fixed + samples * per``.

Workspace is what a call allocates besides its operands and its result: spectra, padded and
unfolded copies, the reductions' inner arrays, per-thread scratch. Every figure here is an upper
bound of what the kernels allocate for a batch chunk (checked under ``tracemalloc`` by
``tests/test_engine.py``), and :mod:`fftbp.engine` chunks the batch so that
``fixed + chunk * per`` stays within the call's limit, or refuses with ``MemoryError`` when
one sample does not fit. The planner prints these figures and picks only routes that fit.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from fftbp._params import ConvSpec, Pass
from fftbp.fft.plans import LINE_BYTES
from fftbp.fft.sizes import transform_shape
from fftbp.planning.routes import Route

__all__ = ["Workspace", "workspace"]

#: FFTW scratch of one sub-chunk of maps (fftbp.fft.plans._SCRATCH_BYTES); per worker thread the
#: plan's scratch, the read-out copies and room for the complex side take 3 such sub-chunks
_SUB_CHUNK = 512 << 10
#: the depthwise kernels' chunk of maps per task (fftbp.kernels.fft_depthwise._SCRATCH_BYTES);
#: per worker thread two plans' arrays, the weight gradient's accumulator and products take 8
_DW_CHUNK = 1 << 20
#: frequency-major buffers pad their map axis by up to 16 maps (see FFTLayout.empty_spectrum)
_LD_PAD = 16


@dataclass(frozen=True)
class Workspace:
    """Bytes a pass needs: ``fixed`` plus ``per_sample`` for every sample of a batch chunk."""

    fixed: int
    per_sample: int

    def at(self, samples: int) -> int:
        return self.fixed + samples * self.per_sample

    def chunk(self, batch: int, limit: int) -> int:
        """Samples per chunk within ``limit`` (at most ``batch``; 0 if one does not fit)."""
        room = limit - self.fixed
        if room < self.per_sample:
            return 0
        return batch if self.per_sample == 0 else min(batch, room // self.per_sample)

    def __add__(self, other: Workspace) -> Workspace:
        return Workspace(self.fixed + other.fixed, self.per_sample + other.per_sample)


def _fft(spec: ConvSpec, pass_: Pass, threads: int, keep_x: bool) -> Workspace:
    shape = transform_shape(spec)
    nfreq = math.prod(shape[:-1]) * (shape[-1] // 2 + 1)
    csize = 2 * spec.dtype.itemsize
    c, f, cg = spec.in_channels, spec.out_channels, spec.in_channels // spec.groups
    map_bytes = math.prod(shape) * spec.dtype.itemsize
    if spec.is_depthwise:
        m = f // c
        wf = 2 * f * nfreq * csize if pass_ != Pass.WEIGHT_GRAD else 0
        kept = c * nfreq * csize if keep_x else 0
        per_task = min(max(_DW_CHUNK, (m + 1) * map_bytes), spec.batch * (c + f) * map_bytes)
        return Workspace(wf + threads * 8 * per_task, kept)
    # the weight's (or the weight gradient's) spectrum, and two spectra per chunk
    maps = max(spec.batch * max(c, f), f * cg)
    # a sub-chunk spans whole cache lines of the spectrum (fftbp.fft.plans._chunking): at
    # least 8 maps of complex64 (4 of complex128), however large the maps
    line_maps = LINE_BYTES // csize
    sub = min(max(_SUB_CHUNK, line_maps * map_bytes), maps * map_bytes)
    # per worker 3 sub-chunks' scratch (module note), and one more plan for each of the pass's
    # three transforms when its last sub-chunk is shorter (its own geometry, planned alongside)
    fixed = (f * cg + 3 * _LD_PAD) * nfreq * csize + (threads * 3 + 3) * sub
    return Workspace(fixed, (c + f) * nfreq * csize)


@functools.lru_cache(maxsize=1024)
def workspace(
    route: Route, spec: ConvSpec, pass_: Pass, threads: int, *, keep_x: bool = False
) -> Workspace:
    """The workspace of ``pass_`` by ``route`` on ``spec`` with ``threads`` workers
    (``keep_x``: the forward pass also keeps the input's spectrum for a weight gradient).

    A pure function of its arguments, cached: every training pass asks for it, outside the
    parallel sections (6 us a call, 30 us with caches cold after a transform).
    """
    pass_ = Pass(pass_)
    item = spec.dtype.itemsize
    extra = Workspace(0, 0)
    if route.precision and item == 4:  # operands, result and the float64 result, cast
        wide = replace(spec, dtype=np.dtype(np.float64))
        per = 8 * 2 * (_per_sample(spec.input_shape) + _per_sample(spec.output_shape))
        base = workspace(replace(route, precision=""), wide, pass_, threads, keep_x=keep_x)
        return base + Workspace(0, per)
    chain = route.reductions(spec)
    for r in chain:
        o, i = r.outer, r.inner
        padded = o.in_channels * math.prod(
            max(h + lo + hi, t) for h, (lo, hi), t in zip(o.in_size, o.padding, _total(r))
        )
        inner_maps = (_per_sample(i.input_shape) + _per_sample(i.output_shape)) * i.batch
        per = 8 * inner_maps // (5 * o.batch)
        per += padded + _per_sample(o.output_shape)
        fixed = 2 * math.prod(i.weight_shape)
        extra = extra + Workspace(fixed * item, per * item)
    inner = chain[-1].inner if chain else spec
    if route.base == "fft":
        base = _fft(inner, pass_, threads, keep_x)
    elif route.base == "torch":  # torch's own allocations, counted as the output
        base = Workspace(0, _per_sample(inner.output_shape) * item)
    else:
        base = direct_workspace(inner, pass_, threads)
    ratio = inner.batch // spec.batch
    # a chunk's result is made apart from the whole batch's when the batch is chunked
    result = {
        Pass.FORWARD: Workspace(0, _per_sample(spec.output_shape) * item),
        Pass.INPUT_GRAD: Workspace(0, _per_sample(spec.input_shape) * item),
        Pass.WEIGHT_GRAD: Workspace(2 * math.prod(spec.weight_shape) * item, 0),
    }[pass_]
    return extra + result + Workspace(base.fixed, base.per_sample * ratio)


def _per_sample(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:])


def _total(r: object) -> tuple[int, ...]:
    """The padded length a reduction materialises per axis (tiles: every window's span)."""
    total = getattr(r, "total", None)
    if total is not None:
        return tuple(total)
    return (0,) * r.outer.nd  # type: ignore[attr-defined]


def direct_workspace(spec: ConvSpec, pass_: Pass, threads: int) -> Workspace:
    """The direct kernels (``fftbp.kernels.direct``): flattened padded copies and the output
    in padded rows (stride 1), or padded input and unfolded blocks (strided)."""
    item = spec.dtype.itemsize
    c, f, cg = spec.in_channels, spec.out_channels, spec.in_channels // spec.groups
    nk = math.prod(spec.kernel)
    weights = f * cg * nk
    padded = [h + lo + hi for h, (lo, hi) in zip(spec.in_size, spec.padding)]
    strided = any(s > 1 for s in spec.stride)
    if pass_ == Pass.INPUT_GRAD:
        # a stride-1 forward pass of grad_output upsampled and padded by the kernel extent
        up = [(o - 1) * s + 1 for o, s in zip(spec.out_size, spec.stride)]
        t_in = [h + e - 1 for h, e in zip(spec.in_size, spec.kernel_extent)]
        tail = sum((e - 1) * math.prod(t_in[i + 1 :]) for i, e in enumerate(spec.kernel_extent))
        positions = spec.in_size[0] * math.prod(t_in[1:])
        per = f * (math.prod(up) + 2 * math.prod(t_in) + tail) + 3 * c * positions
        fixed = (3 * weights + threads * c * positions) * item + (1 << 16)
        return Workspace(fixed, per * item)
    if not strided:
        tail = sum((e - 1) * math.prod(padded[i + 1 :]) for i, e in enumerate(spec.kernel_extent))
        flat = c * (math.prod(padded) + tail)
        positions = spec.out_size[0] * math.prod(padded[1:])
        if pass_ == Pass.FORWARD:
            # per worker a temporary of its piece of the output (at most one sample's)
            fixed = (2 * weights + threads * f * positions) * item + (1 << 16)
            return Workspace(fixed, (flat + 4 * f * positions) * item)
        return Workspace((threads + 3) * weights * item + (1 << 16), (flat + f * positions) * item)
    # strided: a padded copy per sample, and unfolded blocks of at most BLOCK_CAP bytes
    from_blocks = min(128 << 20, spec.batch * c * nk * math.prod(spec.out_size) * item)
    outs = f * math.prod(spec.out_size) * item
    fixed = 2 * from_blocks + 3 * weights * item + (1 << 16)
    return Workspace(fixed, c * math.prod(padded) * item + 3 * outs)
