"""Direct kernels: im2col (``sliding_window_view``) + BLAS GEMM, for all three passes.

The index algebra is the one in :mod:`fftbp.kernels.fft` (``docs/algebra.md``):

    y[o]  = sum_k  x[o*s + k*d - lo] * w[k]          forward: unfold x, one GEMM over (C/g)*K
    dw[k] = sum_o  g[o] * x[o*s + k*d - lo]          weight grad: the same unfolded x, GEMM over n*O
    dx[j] = sum_{o,k: o*s + k*d = j + lo} g[o] w[k]  input grad: a stride-1 forward pass of g
            upsampled by s and padded by ((K-1)d - lo, ...), with the kernel flipped and its
            channel axes swapped (the transpose rule of JAX's ``lax.conv_general_dilated``).

The unfolded matrix is built in blocks of samples and first-axis output rows so that it stays
under the workspace limit (and under 128 MiB, where larger blocks stop paying off).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fftbp._config import get_workspace_limit
from fftbp._params import ConvSpec

__all__ = ["forward", "input_grad", "pad_or_crop", "weight_grad"]

_BLOCK_CAP = 128 << 20


def pad_or_crop(x: np.ndarray, pairs: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Zero-pad (positive) or crop (negative) the trailing ``len(pairs)`` axes of ``x``."""
    nd = len(pairs)
    lead = x.ndim - nd
    crop = tuple(
        slice(max(-lo, 0), x.shape[lead + i] - max(-hi, 0)) for i, (lo, hi) in enumerate(pairs)
    )
    x = x[(slice(None),) * lead + crop]
    if all(lo <= 0 and hi <= 0 for lo, hi in pairs):
        return x
    size = tuple(x.shape[lead + i] + max(lo, 0) + max(hi, 0) for i, (lo, hi) in enumerate(pairs))
    out = np.zeros(x.shape[:lead] + size, dtype=x.dtype)
    inner = tuple(
        slice(max(lo, 0), max(lo, 0) + x.shape[lead + i]) for i, (lo, _) in enumerate(pairs)
    )
    out[(slice(None),) * lead + inner] = x
    return out


def _windows(spec: ConvSpec, x: np.ndarray) -> np.ndarray:
    """Strided view ``(N, C, *out, *kernel)`` of the padded input: ``x_pad[o*s + k*d]``."""
    nd = spec.nd
    xp = pad_or_crop(x, spec.padding)
    v = sliding_window_view(xp, spec.kernel_extent, axis=tuple(range(2, 2 + nd)))
    sl = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(spec.out_size, spec.stride))
    sl += tuple(slice(None, None, d) for d in spec.dilation)
    return v[(slice(None), slice(None)) + sl]


def _blocks(spec: ConvSpec) -> Iterator[tuple[slice, slice]]:
    """(sample slice, first-output-axis slice) blocks whose unfolded matrix fits the budget."""
    budget = min(get_workspace_limit(), _BLOCK_CAP)
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
    spec: ConvSpec, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None
) -> np.ndarray:
    """y = conv(x, w) + bias by im2col + GEMM; returns ``(N, F, *out)``."""
    g, nd = spec.groups, spec.nd
    fg = spec.out_channels // g
    wm = w.reshape(g, fg, -1).transpose(0, 2, 1)  # (g, Cg*K, Fg)
    win = _windows(spec, x)
    y = np.empty(spec.output_shape, dtype=spec.dtype)
    for ns, rs in _blocks(spec):
        cols, out = _cols(spec, win, ns, rs)
        res = np.matmul(cols, wm)  # (g, n*out, Fg)
        n = res.shape[1] // math.prod(out)
        res = res.reshape(g, n, *out, fg)
        # (g, n, *out, Fg) -> (n, g, Fg, *out)
        res = res.transpose(1, 0, 2 + nd, *range(2, 2 + nd))
        y[ns, :, rs] = res.reshape(n, spec.out_channels, *out)
    if bias is not None:
        y += bias.reshape((-1,) + (1,) * nd)
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


def weight_grad(spec: ConvSpec, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """dw = sum over samples and outputs of g times the unfolded x; ``(F, C/g, *k)``."""
    groups, nd = spec.groups, spec.nd
    fg = spec.out_channels // groups
    win = _windows(spec, x)
    dw = np.zeros(
        (groups, fg, (spec.in_channels // groups) * math.prod(spec.kernel)), dtype=spec.dtype
    )
    for ns, rs in _blocks(spec):
        cols, out = _cols(spec, win, ns, rs)
        gb = g[ns, :, rs]
        n = gb.shape[0]
        gb = gb.reshape(n, groups, fg, *out).transpose(1, 2, 0, *range(3, 3 + nd))
        gm = gb.reshape(groups, fg, -1)  # (g, Fg, n*out)
        dw += np.matmul(gm, cols)
    return dw.reshape(spec.weight_shape)
