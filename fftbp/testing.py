"""Slow, obviously correct float64 references for the three passes, and test helpers.

Nothing here is fast or clever: sliding windows + einsum for the forward pass and the weight
gradient, and a scatter loop over kernel offsets for the input gradient (the adjoint written out
index by index). Use these as the oracle for any fftbp method.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fftbp._params import ConvSpec, IntOrTuple, PaddingArg

__all__ = [
    "TOLERANCE",
    "reference_conv",
    "reference_input_grad",
    "reference_passes",
    "reference_weight_grad",
    "relative_error",
]

#: Relative L2 error allowed against the float64 reference, by dtype.
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-11}


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``||actual - expected|| / ||expected||`` in float64 (0 when both are zero)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    den = np.linalg.norm(e)
    num = np.linalg.norm(a - e)
    return float(num / den) if den > 0 else float(num)


def _padded_windows(spec: ConvSpec, x: np.ndarray) -> np.ndarray:
    pad = [(0, 0), (0, 0), *spec.padding]
    xp = np.pad(np.asarray(x, dtype=np.float64), pad)
    v = sliding_window_view(xp, spec.kernel_extent, axis=tuple(range(2, 2 + spec.nd)))
    sl = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(spec.out_size, spec.stride))
    sl += tuple(slice(None, None, d) for d in spec.dilation)
    return v[(slice(None), slice(None)) + sl]  # (N, C, *out, *k)


def _letters(nd: int) -> tuple[str, str]:
    return "pqr"[:nd], "uvw"[:nd]


def reference_conv(
    x: Any,
    w: Any,
    bias: Any = None,
    stride: IntOrTuple = 1,
    padding: PaddingArg = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> np.ndarray:
    """Forward pass in float64: ``y[n,f,o] = sum_{c,k} x_pad[n,c,o*s+k*d] w[f,c,k] + b[f]``."""
    x, w = np.asarray(x), np.asarray(w)
    spec = ConvSpec.from_shapes(x.shape, w.shape, stride, padding, dilation, groups, np.float64)
    g, nd = groups, spec.nd
    win = _padded_windows(spec, x)
    win = win.reshape(spec.batch, g, spec.in_channels // g, *win.shape[2:])
    wg = np.asarray(w, dtype=np.float64).reshape(g, spec.out_channels // g, *w.shape[1:])
    o, k = _letters(nd)
    y = np.einsum(f"ngc{o}{k},gfc{k}->ngf{o}", win, wg)
    y = y.reshape(spec.output_shape)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64).reshape((-1,) + (1,) * nd)
    return y


def reference_input_grad(
    input_shape: tuple[int, ...],
    w: Any,
    grad_output: Any,
    stride: IntOrTuple = 1,
    padding: PaddingArg = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> np.ndarray:
    """Input gradient in float64, by scattering ``g[o] * w[k]`` to ``x_pad[o*s + k*d]``."""
    w = np.asarray(w, dtype=np.float64)
    g = np.asarray(grad_output, dtype=np.float64)
    spec = ConvSpec.from_shapes(input_shape, w.shape, stride, padding, dilation, groups, np.float64)
    nd, G = spec.nd, groups
    padded = [h + lo + hi for h, (lo, hi) in zip(spec.in_size, spec.padding)]
    dxp = np.zeros((spec.batch, G, spec.in_channels // G, *padded))
    gg = g.reshape(spec.batch, G, spec.out_channels // G, *spec.out_size)
    wg = w.reshape(G, spec.out_channels // G, spec.in_channels // G, *spec.kernel)
    o, _ = _letters(nd)
    for k in itertools.product(*(range(kk) for kk in spec.kernel)):
        region = tuple(
            slice(ki * d, ki * d + (oo - 1) * s + 1, s)
            for ki, d, oo, s in zip(k, spec.dilation, spec.out_size, spec.stride)
        )
        contrib = np.einsum(f"ngf{o},gfc->ngc{o}", gg, wg[(Ellipsis, *k)])
        dxp[(slice(None),) * 3 + region] += contrib
    crop = tuple(slice(lo, lo + h) for h, (lo, _) in zip(spec.in_size, spec.padding))
    return dxp[(slice(None),) * 3 + crop].reshape(spec.input_shape)


def reference_weight_grad(
    x: Any,
    weight_shape: tuple[int, ...],
    grad_output: Any,
    stride: IntOrTuple = 1,
    padding: PaddingArg = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> np.ndarray:
    """Weight gradient in float64: ``dw[f,c,k] = sum_{n,o} g[n,f,o] x_pad[n,c,o*s+k*d]``."""
    x = np.asarray(x)
    g = np.asarray(grad_output, dtype=np.float64)
    spec = ConvSpec.from_shapes(
        x.shape, weight_shape, stride, padding, dilation, groups, np.float64
    )
    G, nd = groups, spec.nd
    win = _padded_windows(spec, x)
    win = win.reshape(spec.batch, G, spec.in_channels // G, *win.shape[2:])
    gg = g.reshape(spec.batch, G, spec.out_channels // G, *spec.out_size)
    o, k = _letters(nd)
    dw = np.einsum(f"ngc{o}{k},ngf{o}->gfc{k}", win, gg)
    return dw.reshape(spec.weight_shape)


def reference_passes(x: Any, w: Any, grad_output: Any, **kw: Any) -> dict[str, np.ndarray]:
    """All three passes in float64, keyed ``"forward"``, ``"input_grad"``, ``"weight_grad"``
    (``kw``: stride, padding, dilation, groups)."""
    x = np.asarray(x)
    w = np.asarray(w)
    return {
        "forward": reference_conv(x, w, **kw),
        "input_grad": reference_input_grad(x.shape, w, grad_output, **kw),
        "weight_grad": reference_weight_grad(x, w.shape, grad_output, **kw),
    }
