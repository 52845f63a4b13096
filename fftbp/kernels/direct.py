"""Direct kernels for all three passes: shifted GEMMs (stride 1) or im2col + GEMM (strided).

The index algebra is the one in :mod:`fftbp.kernels.fft` (``docs/algebra.md``):

    y[o]  = sum_k  x[o*s + k*d - lo] * w[k]          forward
    dw[k] = sum_o  g[o] * x[o*s + k*d - lo]          weight grad
    dx[j] = sum_{o,k: o*s + k*d = j + lo} g[o] w[k]  input grad: a stride-1 forward pass of g
            upsampled by s and padded by ((K-1)d - lo, ...), with the kernel flipped and its
            channel axes swapped (the transpose rule of JAX's ``lax.conv_general_dilated``).

Stride 1 (``_shifted_*``): with the padded input flattened (row-major, sizes ``P``), kernel
offset ``k`` is a constant shift ``off(k) = sum_i k_i d_i stride_P(i)`` of the flat index, so
the forward pass is one ``(F x C) @ (C x positions)`` GEMM per kernel offset on a contiguous
slice, accumulated; no unfolded copy at all. Output positions run over whole padded rows (the
``P_i - O_i`` extra columns are computed and dropped); the weight gradient contracts each
shifted slice against grad_output placed in the same layout with those columns zero. Measured
on the reference machine (dense N8 C=F=32 64x64, one core): 54-56 GFLOP/s at k=3..15, against
25-35 for im2col + GEMM.

Strided layers (``_im2col_*``) unfold the padded input (``sliding_window_view``, subsampled by
stride and dilation) in blocks under the workspace limit and make one batched GEMM per block;
the planner's polyphase route turns them into stride-1 layers when that is cheaper.

Work is split over fftbp's worker threads by samples (and, for small batches, by ranges of
output positions); BLAS runs single-threaded inside each worker.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fftbp._arrays import pad_or_crop
from fftbp._config import get_num_threads, parallel_tasks, split_range
from fftbp._params import ConvSpec

__all__ = ["BLOCK_CAP", "forward", "input_grad", "weight_grad"]

#: largest unfolded block of the strided kernels (the engine may pass a smaller budget)
BLOCK_CAP = 128 << 20


def _windows(spec: ConvSpec, x: np.ndarray) -> np.ndarray:
    """Strided view ``(N, C, *out, *kernel)`` of the padded input: ``x_pad[o*s + k*d]``."""
    nd = spec.nd
    xp = pad_or_crop(x, spec.padding)
    v = sliding_window_view(xp, spec.kernel_extent, axis=tuple(range(2, 2 + nd)))
    sl = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(spec.out_size, spec.stride))
    sl += tuple(slice(None, None, d) for d in spec.dilation)
    return v[(slice(None), slice(None)) + sl]


def _blocks(spec: ConvSpec, budget: int) -> Iterator[tuple[slice, slice]]:
    """(sample slice, first-output-axis slice) blocks whose unfolded matrix fits ``budget``."""
    row_bytes = (
        spec.in_channels
        * math.prod(spec.kernel)
        * math.prod(spec.out_size[1:])
        * spec.dtype.itemsize
    )
    rows = max(1, min(spec.out_size[0], budget // row_bytes))
    if rows < spec.out_size[0]:
        for n in range(spec.batch):
            for r0 in range(0, spec.out_size[0], rows):
                yield slice(n, n + 1), slice(r0, r0 + rows)
        return
    per = max(1, budget // (row_bytes * spec.out_size[0]))
    for n0 in range(0, spec.batch, per):
        yield slice(n0, n0 + per), slice(None)


def _cols(
    spec: ConvSpec, win: np.ndarray, ns: slice, rs: slice
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Unfold one block into a ``(groups, n*out, C/g * K)`` matrix (the im2col copy)."""
    nd, g = spec.nd, spec.groups
    blk = win[ns, :, rs]
    n, out = blk.shape[0], blk.shape[2 : 2 + nd]
    blk = blk.reshape(n, g, spec.in_channels // g, *out, *spec.kernel)
    # (n, g, Cg, *out, *k) -> (g, n, *out, Cg, *k)
    order = (1, 0, *range(3, 3 + nd), 2, *range(3 + nd, 3 + 2 * nd))
    cols = np.ascontiguousarray(blk.transpose(order))
    return cols.reshape(g, n * math.prod(out), -1), out


def forward(
    spec: ConvSpec,
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    block_bytes: int = BLOCK_CAP,
) -> np.ndarray:
    """y = conv(x, w) + bias; returns ``(N, F, *out)`` (``block_bytes``: the strided kernel's
    largest unfolded block)."""
    if all(st == 1 for st in spec.stride):
        y = _shifted_forward(spec, x, w)
    else:
        y = _im2col_forward(spec, x, w, block_bytes)
    if bias is not None:
        y += bias.reshape((-1,) + (1,) * spec.nd)
    return y


def _im2col_forward(spec: ConvSpec, x: np.ndarray, w: np.ndarray, budget: int) -> np.ndarray:
    """y = conv(x, w) by im2col + GEMM."""
    g, nd = spec.groups, spec.nd
    fg = spec.out_channels // g
    wm = w.reshape(g, fg, -1).transpose(0, 2, 1)  # (g, Cg*K, Fg)
    win = _windows(spec, x)
    y = np.empty(spec.output_shape, dtype=spec.dtype)
    for ns, rs in _blocks(spec, budget):
        cols, out = _cols(spec, win, ns, rs)
        res = np.matmul(cols, wm)  # (g, n*out, Fg)
        n = res.shape[1] // math.prod(out)
        res = res.reshape(g, n, *out, fg)
        # (g, n, *out, Fg) -> (n, g, Fg, *out)
        res = res.transpose(1, 0, 2 + nd, *range(2, 2 + nd))
        y[ns, :, rs] = res.reshape(n, spec.out_channels, *out)
    return y


def input_grad(spec: ConvSpec, w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """dx as the transposed convolution of g (see the module docstring); ``(N, C, *in)``."""
    nd, groups = spec.nd, spec.groups
    up = tuple((o - 1) * s + 1 for o, s in zip(spec.out_size, spec.stride))
    if any(s > 1 for s in spec.stride):
        gu = np.zeros((*g.shape[:2], *up), dtype=g.dtype)
        gu[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in spec.stride)] = g
    else:
        gu = g
    pairs = []
    for h, (lo, _), e, u in zip(spec.in_size, spec.padding, spec.kernel_extent, up):
        pl = e - 1 - lo
        pairs.append((pl, h + e - 1 - pl - u))
    gp = pad_or_crop(gu, tuple(pairs))
    cg, fg = spec.in_channels // groups, spec.out_channels // groups
    flip = (slice(None),) * 3 + (slice(None, None, -1),) * nd
    wt = w.reshape(groups, fg, cg, *spec.kernel)[flip].transpose(0, 2, 1, *range(3, 3 + nd))
    wt = wt.reshape(spec.in_channels, fg, *spec.kernel)
    t_spec = ConvSpec(
        spec.batch,
        spec.out_channels,
        spec.in_channels,
        gp.shape[2:],
        spec.kernel,
        (1,) * nd,
        ((0, 0),) * nd,
        spec.dilation,
        groups,
        spec.dtype,
    )
    return forward(t_spec, gp, wt)


def weight_grad(
    spec: ConvSpec, x: np.ndarray, g: np.ndarray, *, block_bytes: int = BLOCK_CAP
) -> np.ndarray:
    """dw = sum over samples and outputs of g times the shifted x; ``(F, C/g, *k)``."""
    if all(st == 1 for st in spec.stride):
        return _shifted_weight_grad(spec, x, g)
    return _im2col_weight_grad(spec, x, g, block_bytes)


def _im2col_weight_grad(spec: ConvSpec, x: np.ndarray, g: np.ndarray, budget: int) -> np.ndarray:
    """dw = sum over samples and outputs of g times the unfolded x."""
    groups, nd = spec.groups, spec.nd
    fg = spec.out_channels // groups
    win = _windows(spec, x)
    dw = np.zeros(
        (groups, fg, (spec.in_channels // groups) * math.prod(spec.kernel)), dtype=spec.dtype
    )
    for ns, rs in _blocks(spec, budget):
        cols, out = _cols(spec, win, ns, rs)
        gb = g[ns, :, rs]
        n = gb.shape[0]
        gb = gb.reshape(n, groups, fg, *out).transpose(1, 2, 0, *range(3, 3 + nd))
        gm = gb.reshape(groups, fg, -1)  # (g, Fg, n*out)
        dw += np.matmul(gm, cols)
    return dw.reshape(spec.weight_shape)


# -- stride 1: shifted GEMMs on the flattened padded input ---------------------------------------
class _Flat:
    """Flattened geometry of a stride-1 layer (see the module docstring)."""

    def __init__(self, spec: ConvSpec) -> None:
        self.spec = spec
        self.padded = tuple(h + lo + hi for h, (lo, hi) in zip(spec.in_size, spec.padding))
        strides = [1] * spec.nd
        for i in range(spec.nd - 2, -1, -1):
            strides[i] = strides[i + 1] * self.padded[i + 1]
        self.strides = tuple(strides)
        #: flat output positions: whole padded rows for the first axis' outputs
        self.positions = spec.out_size[0] * self.strides[0]
        self.offsets = [
            sum(k * d * st for k, d, st in zip(ks, spec.dilation, self.strides))
            for ks in np.ndindex(*spec.kernel)
        ]
        tail = sum((e - 1) * st for e, st in zip(spec.kernel_extent[1:], self.strides[1:]))
        self.length = math.prod(self.padded) + tail

    def flat_input(self, x: np.ndarray) -> np.ndarray:
        """``(N, C, length)``: x zero-padded, flattened, with a zero tail for the last shifts."""
        s = self.spec
        buf = np.zeros((s.batch, s.in_channels, self.length), dtype=s.dtype)
        view = buf[:, :, : math.prod(self.padded)].reshape(s.batch, s.in_channels, *self.padded)
        inner = tuple(slice(lo, lo + h) for h, (lo, _) in zip(s.in_size, s.padding))
        view[(slice(None), slice(None), *inner)] = x
        return buf

    def valid(self, a: np.ndarray) -> np.ndarray:
        """The ``(N, ch, *out)`` view of the valid positions of ``(N, ch, positions)``."""
        s = self.spec
        v = a.reshape(*a.shape[:2], s.out_size[0], *self.padded[1:])
        return v[(slice(None), slice(None), slice(None), *map(slice, s.out_size[1:]))]

    def tasks(self) -> list[tuple[int, int, int]]:
        """(sample, first position, last position) pieces: at least one per worker thread."""
        n = self.spec.batch
        parts = max(1, -(-get_num_threads() // n))
        return [
            (i, a, b) for i in range(n) for a, b in split_range(self.positions, parts, align=16)
        ]


def _piece(spec: ConvSpec, rows: int) -> int:
    """Positions per piece so that ``rows`` rows of them stay in L2 while every kernel offset's
    GEMM reads them (at least 2048: shorter GEMMs cost more in calls than they save). Without
    pieces each offset streamed the operands from memory again: the weight gradient of 8
    channels on 256x256 maps took 26 ms, in pieces 6.5 ms (side by side, median of 7). The
    forward kernel, tried the same way, got slower, so it is left as it was."""
    return max(2048, (256 << 10) // (rows * spec.dtype.itemsize) // 16 * 16)


def _shifted_forward(spec: ConvSpec, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    geo = _Flat(spec)
    g, cg, fg = spec.groups, spec.in_channels // spec.groups, spec.out_channels // spec.groups
    xf = geo.flat_input(x).reshape(spec.batch, g, cg, geo.length)
    # wk[k] = w[:, :, k] as (g, Fg, Cg)
    wk = np.ascontiguousarray(np.moveaxis(w.reshape(g, fg, cg, -1), -1, 0))
    yf = np.empty((spec.batch, g, fg, geo.positions), dtype=spec.dtype)
    depthwise = cg == 1

    def body(_slot: int, n: int, a: int, b: int) -> None:
        out = yf[n, :, :, a:b]
        tmp = np.empty((g, fg, b - a), dtype=spec.dtype)
        for i, off in enumerate(geo.offsets):
            src = xf[n, :, :, off + a : off + b]
            dest = out if i == 0 else tmp
            if depthwise:
                np.multiply(wk[i], src, out=dest)  # (g, fg, 1) * (g, 1, m)
            else:
                np.matmul(wk[i], src, out=dest)
            if i:
                out += tmp

    parallel_tasks(geo.tasks(), body)
    y = geo.valid(yf.reshape(spec.batch, spec.out_channels, geo.positions))
    return np.ascontiguousarray(y)


def _shifted_weight_grad(spec: ConvSpec, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    geo = _Flat(spec)
    gr, cg, fg = spec.groups, spec.in_channels // spec.groups, spec.out_channels // spec.groups
    xf = geo.flat_input(x).reshape(spec.batch, gr, cg, geo.length)
    gf = np.zeros((spec.batch, spec.out_channels, geo.positions), dtype=spec.dtype)
    geo.valid(gf)[...] = g
    gf = gf.reshape(spec.batch, gr, fg, geo.positions)
    nk = len(geo.offsets)
    acc = [np.zeros((nk, gr, fg, cg), dtype=spec.dtype) for _ in range(get_num_threads())]

    piece = _piece(spec, gr * (fg + cg))

    def body(slot: int, n: int, a: int, b: int) -> None:
        dw = acc[slot]
        tmp = np.empty((gr, fg, cg), dtype=spec.dtype)
        for p0 in range(a, b, piece):
            p1 = min(p0 + piece, b)
            gb = gf[n, :, :, p0:p1]
            for i, off in enumerate(geo.offsets):
                xs = xf[n, :, :, off + p0 : off + p1]  # (g, Cg, m)
                np.matmul(gb, xs.transpose(0, 2, 1), out=tmp)
                dw[i] += tmp

    parallel_tasks(geo.tasks(), body)
    total = acc[0]
    for a in acc[1:]:
        total += a
    # (K, g, Fg, Cg) -> (F, Cg, *kernel)
    out = np.moveaxis(total, 0, -1).reshape(spec.out_channels, cg, *spec.kernel)
    return np.ascontiguousarray(out)
