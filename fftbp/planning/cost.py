"""The estimate-mode cost model: flop, transform and byte counts per route and pass, times
per-machine constants.

Constants are whole-machine rates at the default thread count, float32. They ship with the
values ``fftbp calibrate`` measured on this project's reference machine (2 cores AMD EPYC Zen 4,
OpenBLAS SkylakeX kernels, pyFFTW 0.15.1, 2026-11-26), and ``fftbp calibrate`` replaces them
with values measured on the user's machine (stored per machine fingerprint in the user's cache
directory, see :mod:`fftbp.planning.store`). float64 costs twice as much per flop and per byte;
its transforms 1.8x (FFTW measured).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from fftbp._params import PASSES, ConvSpec, Pass
from fftbp.fft.plans import prunes
from fftbp.fft.sizes import fft_cost, transform_shape
from fftbp.planning.routes import Route
from fftbp.planning.workspace import Workspace, workspace

__all__ = ["NOT_CALIBRATED", "PASSES", "Constants", "PassCost", "estimate"]


#: The constants ``fftbp calibrate`` does not measure: the shipped values are used on every
#: machine, whatever a calibration file holds (they are fitted on the planner benchmark)
NOT_CALIBRATED = ("tile_s", "map_s", "direct_wg_share")


@dataclass(frozen=True)
class Constants:
    # Shipped values: `fftbp calibrate` on the reference machine, 2026-11-26 (two runs, mean),
    # then six of them scaled by `python -m benchmarks.fit --search` on the planner benchmark of
    # 2026-12-01 (fft_s_per_unit 0.27e-9, product_flops 52e9, product_item_s 150e-9, copy_bytes
    # 50e9, direct_flops 140e9, tile_s 30e-6 before): the choices that search makes were
    # 95.9% within 1.2x on the run of 2026-11-30, which it did not see (docs/planner.md).
    #: seconds per unit of :func:`fftbp.fft.sizes.fft_cost` per map, frequency-major transforms
    #: of dense layers (strided writes: 1.8x a natural-layout transform on one core, and they
    #: scale poorly over two workers)
    fft_s_per_unit: float = 0.195e-9
    #: the same for the natural-layout transforms of depthwise layers
    fft_natural_s_per_unit: float = 0.09e-9
    #: complex matrix products per frequency (one stacked numpy matmul), flop/s, and the fixed
    #: cost of each frequency's (and group's) product when the batch is above 1: numpy calls
    #: BLAS once per matrix, which dominates for few channels (per frequency, measured here:
    #: 168 ns for 4x4x4, 1.1 us for 8x32x32, 19 us for 8x128x128). `fftbp calibrate` solves
    #: both from a 32-channel and a 4-channel layer (two runs: 57 and 48 GFLOP/s, 153 and 148 ns)
    product_flops: float = 105e9
    product_item_s: float = 180e-9
    #: seconds per complex multiply(-add) of the elementwise (depthwise) products
    elementwise_s: float = 0.23e-9
    #: bytes/s of the copies into and out of transform buffers and of reductions' index maps
    copy_bytes: float = 60e9
    #: direct path: GEMM flop/s of the shifted-GEMM kernels, and bytes/s of the strided
    #: path's im2col unfold
    direct_flops: float = 98e9
    direct_bytes: float = 2.8e9
    #: the direct weight gradient's thin GEMMs (per offset, over pieces of positions) run at
    #: this share of ``direct_flops`` with 16 channels or more. Machine-dependent: on the
    #: planner benchmark's 3x3 layer (N8 C32 64x64) the weight gradient ran at 0.74x the
    #: forward's rate with OpenBLAS's SkylakeX kernels and 0.93x with its Haswell kernels
    #: (OPENBLAS_CORETYPE=Haswell), same CPU; 0.45 is what the choice search keeps
    direct_wg_share: float = 0.45
    #: fixed cost per pass (Python, thread hand-off), seconds
    call_s: float = 0.056e-3
    #: cost per extra batch entry a reduction creates (each tile is one): per-sample tasks and
    #: small transforms; first fitted to tiled 3x3 layers (1568, 512, 288 tiles: 27-36 us
    #: each), now the choice search's value (with 30 us, 16x16 tiles of a 5x5 layer were
    #: estimated 3x dearer than they ran, and direct was chosen at 1.5-1.9x their time).
    #: Not measured by ``fftbp calibrate``: the shipped value is used on every machine
    #: (:data:`NOT_CALIBRATED`, see docs/planner.md)
    tile_s: float = 10.5e-6
    #: fixed cost per transformed map (placement, hand-off, FFTW call): it makes many small
    #: transforms dearer than their points say (polyphase phases, 3D tiles). Fitted by hand on
    #: the planner benchmark (benchmarks/results/planner.md), not measured by ``fftbp calibrate``
    map_s: float = 1.0e-6
    # PyTorch's native CPU convolution (torch 2.13.0+cpu, oneDNN; 2026-11-26, measured on
    # ResNet-18 and depthwise 3..51 layers, see docs/torch.md). Only fftbp.torch plans with it.
    #: dense layers, every pass (ResNet-18 3x3 layers: 76-208 GFLOP/s; taken at the top so the
    #: planner leaves borderline layers native)
    torch_dense_flops: float = 190e9
    #: depthwise layers on oneDNN's fast paths (forward with kernels <= 13, input gradient)
    torch_dw_fast_flops: float = 100e9
    #: depthwise layers on the generic paths (forward with kernels > 13, weight gradient with
    #: kernels > 3, 3D gradients): 3-8 GFLOP/s
    torch_dw_slow_flops: float = 6e9

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PassCost:
    """Estimated seconds and workspace (:mod:`fftbp.planning.workspace`) of one pass: the
    engine chunks the batch under the workspace limit, down to one sample."""

    seconds: float
    memory: Workspace
    batch: int

    @property
    def bytes(self) -> int:
        """Peak workspace with the whole batch in one chunk."""
        return self.memory.at(self.batch)

    @property
    def min_bytes(self) -> int:
        """The least workspace the pass runs in (one sample per chunk)."""
        return self.memory.at(1)

    def bytes_within(self, limit: int) -> int:
        """Peak workspace of the run under ``limit`` (the chunk the engine will use)."""
        return self.memory.at(max(1, self.memory.chunk(self.batch, limit)))


def _map_parts(
    spec: ConvSpec, pass_: Pass, have: frozenset[str]
) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """The maps one pass by whole-map FFT transforms forward and inverse, as (maps, rows of the
    first axis that hold data or are read), not counting the spectra in ``have`` (``"x"``,
    ``"w"``, ``"g"``: kept from another pass)."""
    n, c, f, cg = spec.batch, spec.in_channels, spec.out_channels, spec.in_channels // spec.groups
    h, o = spec.in_size[0], spec.out_size[0]
    need = {Pass.FORWARD: "xw", Pass.INPUT_GRAD: "gw", Pass.WEIGHT_GRAD: "xg"}[pass_]
    sizes = {
        "x": (n * c, h),
        "w": (f * cg, spec.kernel_extent[0]),
        "g": (n * f, (o - 1) * spec.stride[0] + 1),
    }
    inv = {
        Pass.FORWARD: (n * f, o),
        Pass.INPUT_GRAD: (n * c, h),
        Pass.WEIGHT_GRAD: (f * cg, spec.kernel[0]),
    }[pass_]
    return [sizes[s] for s in need if s not in have], inv


def pruned_maps(spec: ConvSpec, pass_: Pass, have: frozenset[str], shape: tuple[int, ...]) -> float:
    """The transforms of one pass in whole-map equivalents (:func:`_map_parts`): a map with
    data in (or read from) at most half the rows of the first axis is pruned
    (:mod:`fftbp.fft.plans`), at ``0.6 + 0.8 * rows / M`` of the whole map's time (measured in
    a training step: 0.7-0.9 at 15-31 of 72-80 rows)."""
    fwd, inv = _map_parts(spec, pass_, have)

    def factor(rows: int) -> float:
        return 0.6 + 0.8 * rows / shape[0] if prunes(rows, shape) else 1.0

    return sum(count * factor(rows) for count, rows in [*fwd, inv])


def fft_cost_of(
    spec: ConvSpec, pass_: Pass, k: Constants, have: frozenset[str] = frozenset()
) -> float:
    """Whole-map FFT of ``spec`` (no reductions)."""
    shape = transform_shape(spec)
    npts = math.prod(shape)
    nfreq = math.prod(shape[:-1]) * (shape[-1] // 2 + 1)
    f64 = spec.dtype.itemsize == 8
    parts, (inv, _) = _map_parts(spec, pass_, have)
    fwd = sum(count for count, _ in parts)
    unit = k.fft_natural_s_per_unit if spec.is_depthwise else k.fft_s_per_unit
    pruned = fwd + inv if spec.is_depthwise else pruned_maps(spec, pass_, have, shape)
    t_fft = pruned * fft_cost(shape) * unit * (1.8 if f64 else 1.0)
    n, f, cg = spec.batch, spec.out_channels, spec.in_channels // spec.groups
    if spec.is_depthwise:
        t_prod = nfreq * n * f * k.elementwise_s * (2 if pass_ == Pass.WEIGHT_GRAD else 1)
    else:
        t_prod = 8.0 * nfreq * n * f * cg / k.product_flops
        if n > 1:  # one sample: matrix-vector products and outer products, no BLAS call each
            t_prod += nfreq * spec.groups * k.product_item_s
    t_prod *= 2.0 if f64 else 1.0
    t_copy = (fwd + inv) * npts * spec.dtype.itemsize / k.copy_bytes
    if not spec.is_depthwise:  # frequency-major spectra are written and read once more
        t_copy += (fwd + inv) * nfreq * 2 * spec.dtype.itemsize / k.copy_bytes
    t_maps = (fwd + inv) * k.map_s if spec.nd > 1 else 0.0
    return t_fft + t_prod + t_copy + t_maps + k.call_s


def direct_cost_of(spec: ConvSpec, pass_: Pass, k: Constants) -> float:
    """The direct kernels: shifted GEMMs for stride 1 (the input gradient is a stride-1 forward
    pass of the upsampled grad_output), im2col + GEMM for the strided forward and weight grad."""
    f64 = spec.dtype.itemsize == 8
    item = spec.dtype.itemsize
    nk = math.prod(spec.kernel)
    n, c, f = spec.batch, spec.in_channels, spec.out_channels
    strided = any(s > 1 for s in spec.stride)
    if pass_ == Pass.INPUT_GRAD or not strided:
        # flattened padded rows: positions per sample of the (transposed) stride-1 layer
        if pass_ == Pass.INPUT_GRAD:
            rows, padded = (
                spec.in_size[0],
                [h + e - 1 for h, e in zip(spec.in_size, spec.kernel_extent)],
            )
            outs, ins = c, f
        else:
            rows = spec.out_size[0]
            padded = [h + lo + hi for h, (lo, hi) in zip(spec.in_size, spec.padding)]
            outs, ins = f, c
        positions = rows * math.prod(padded[1:])
        cg, og = ins // spec.groups, outs // spec.groups
        if cg == 1:
            # one input channel per group: an elementwise multiply-add (or a matrix-vector
            # product) per kernel offset, bound by memory (~3 accesses per element, fitted on the
            # planner benchmark: depthwise 3x3 ran at 0.6-0.85 of a 5-access estimate)
            moved = nk * n * outs * positions * 3 * item
            t = moved / k.copy_bytes
        elif pass_ == Pass.WEIGHT_GRAD:
            # per offset a (Fg x m) @ (m x Cg) GEMM over pieces of m positions: thin GEMMs,
            # measured at 31, 51, 36, 54, 80 GFLOP/s for 4, 8, 16, 32, 64 channels
            flops = 2.0 * n * f * (c // spec.groups) * positions * nk
            rate = k.direct_wg_share * k.direct_flops * min(1.0, math.sqrt(min(og, cg) / 16))
            t = flops / rate * (2.0 if f64 else 1.0)
        else:
            # per offset a (outs x Cg) @ (Cg x positions) GEMM accumulating into the output:
            # compute-bound for many channels, else bound by streaming its operands
            flops = 2.0 * n * outs * cg * positions * nk
            t_gemm = flops / k.direct_flops * (2.0 if f64 else 1.0)
            t_mem = nk * n * (ins + 2 * outs) * positions * item / k.copy_bytes
            t = max(t_gemm, t_mem) + nk * n * outs * positions * item / k.copy_bytes
        inputs = n * ins * math.prod(padded) * item
        return t + inputs / k.copy_bytes + k.call_s
    cols = n * math.prod(spec.out_size) * c * nk
    unfold = cols * item
    # the GEMM reads its unfolded operand from memory: about half the shifted kernels' rate
    return (
        2 * spec.flops / k.direct_flops * (2.0 if f64 else 1.0) + unfold / k.direct_bytes + k.call_s
    )


def torch_cost_of(spec: ConvSpec, pass_: Pass, k: Constants) -> float:
    """PyTorch's native convolution: the layer's flops at a rate chosen by which oneDNN path
    torch takes (measured, see :class:`Constants`); its workspace is its own, counted as the
    layer's output."""
    kmax = max(spec.kernel)
    if spec.in_channels // spec.groups > 1:
        rate = k.torch_dense_flops
    elif pass_ == Pass.FORWARD:
        rate = k.torch_dw_fast_flops if kmax <= 13 else k.torch_dw_slow_flops
    elif pass_ == Pass.INPUT_GRAD and spec.nd < 3:
        rate = k.torch_dw_fast_flops
    else:
        rate = k.torch_dw_fast_flops if kmax <= 3 and spec.nd < 3 else k.torch_dw_slow_flops
    return spec.flops / rate * (2.0 if spec.dtype.itemsize == 8 else 1.0) + k.call_s


def estimate(
    route: Route,
    spec: ConvSpec,
    pass_: Pass,
    k: Constants,
    have: frozenset[str] = frozenset(),
    threads: int = 1,
) -> PassCost:
    """Estimated seconds and workspace of ``pass_`` by ``route`` on ``spec`` with ``threads``
    workers (``have``: spectra another pass already made, see :func:`_map_parts`)."""
    memory = workspace(route, spec, pass_, threads)
    return PassCost(_seconds(route, spec, pass_, k, have), memory, spec.batch)


def _seconds(
    route: Route, spec: ConvSpec, pass_: Pass, k: Constants, have: frozenset[str]
) -> float:
    if route.precision and spec.dtype.itemsize == 4:  # cast in, compute in float64, cast out
        wide = _seconds(
            replace(route, precision=""), replace(spec, dtype=np.dtype(np.float64)), pass_, k, have
        )
        moved = 12 * (math.prod(spec.input_shape) + math.prod(spec.output_shape))
        return wide + moved / k.copy_bytes
    chain = route.reductions(spec)
    inner = chain[-1].inner if chain else spec
    if route.base == "fft":
        base = fft_cost_of(inner, pass_, k, have)
    elif route.base == "torch":
        base = torch_cost_of(inner, pass_, k)
    else:
        base = direct_cost_of(inner, pass_, k)
    # the reductions' index maps copy the inner operands once each way
    item = spec.dtype.itemsize
    moved = 0
    extra = 0.0
    for r in chain:
        i = r.inner
        extra += max(0, i.batch - r.outer.batch) * k.tile_s
        sizes = {
            Pass.FORWARD: math.prod(i.input_shape) + math.prod(i.output_shape),
            Pass.INPUT_GRAD: math.prod(i.output_shape) + 2 * math.prod(i.input_shape),
            Pass.WEIGHT_GRAD: math.prod(i.input_shape) + math.prod(i.output_shape),
        }
        moved += sizes[pass_] * item
    return base + moved / k.copy_bytes + extra
