"""PyTorch's own CPU convolution as one more route, on numpy operands (zero-copy both ways).

The planner of :mod:`fftbp.torch` takes it as a candidate for every pass, so a converted layer
never computes a pass slower than the module it replaced. Each pass is one ATen call
(``aten::convolution`` / ``aten::convolution_backward`` with an output mask, so nobody computes
a gradient that was not asked for). Asymmetric padding (``'same'`` with an even kernel) is
applied by padding the input explicitly, as ``torch.nn.functional.conv2d`` does itself.
"""

from __future__ import annotations

import numpy as np
import torch

from fftbp._params import ConvSpec

__all__ = ["forward", "input_grad", "weight_grad"]


def _symmetric(spec: ConvSpec) -> bool:
    return all(lo == hi for lo, hi in spec.padding)


def _pad_arg(spec: ConvSpec) -> tuple[int, ...]:
    """``torch.nn.functional.pad`` argument: (low, high) per axis, last axis first."""
    return tuple(v for lo, hi in reversed(spec.padding) for v in (lo, hi))


def _args(spec: ConvSpec) -> tuple[list[int], list[int], list[int], bool, list[int], int]:
    pad = [lo for lo, _ in spec.padding] if _symmetric(spec) else [0] * spec.nd
    return list(spec.stride), pad, list(spec.dilation), False, [0] * spec.nd, spec.groups


def _padded_input(spec: ConvSpec, x: np.ndarray) -> torch.Tensor:
    """x as a tensor (no copy when contiguous), explicitly padded when the padding is
    asymmetric (ATen takes one value per axis)."""
    xt = torch.from_numpy(np.ascontiguousarray(x))
    return xt if _symmetric(spec) else torch.nn.functional.pad(xt, _pad_arg(spec))


def _padded_shape(spec: ConvSpec) -> tuple[int, ...]:
    if _symmetric(spec):
        return spec.input_shape
    inner = tuple(h + lo + hi for h, (lo, hi) in zip(spec.in_size, spec.padding))
    return (spec.batch, spec.in_channels, *inner)


def forward(spec: ConvSpec, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    xt = _padded_input(spec, x)
    bt = None if b is None else torch.from_numpy(b)
    with torch.no_grad():
        y = torch.ops.aten.convolution(xt, torch.from_numpy(w), bt, *_args(spec))
    return y.numpy()


def input_grad(spec: ConvSpec, w: np.ndarray, g: np.ndarray) -> np.ndarray:
    shape = _padded_shape(spec)
    x_meta = torch.empty(shape, dtype=torch.from_numpy(w).dtype)  # only its shape is read
    with torch.no_grad():
        dx = torch.ops.aten.convolution_backward(
            torch.from_numpy(np.ascontiguousarray(g)),
            x_meta,
            torch.from_numpy(w),
            None,
            *_args(spec),
            [True, False, False],
        )[0]
    if not _symmetric(spec):
        dx = dx[
            (
                slice(None),
                slice(None),
                *(slice(lo, lo + h) for h, (lo, _) in zip(spec.in_size, spec.padding)),
            )
        ]
    return np.ascontiguousarray(dx.numpy())


def weight_grad(spec: ConvSpec, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    xt = _padded_input(spec, x)
    w_meta = torch.empty(spec.weight_shape, dtype=xt.dtype)
    with torch.no_grad():
        dw = torch.ops.aten.convolution_backward(
            torch.from_numpy(np.ascontiguousarray(g)),
            xt,
            w_meta,
            None,
            *_args(spec),
            [False, True, False],
        )[1]
    return dw.numpy()
