"""Argument normalisation and validation: the one place that turns user arguments into a ConvSpec.

Every error message of the public API is written here. Each names the argument, shows the value
with ``!r`` and states the rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["ConvSpec", "IntOrTuple", "PaddingArg", "normalize_float_array"]

IntOrTuple = int | Sequence[int]
PaddingArg = int | str | Sequence[int] | Sequence[Sequence[int]]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_real(v: Any) -> bool:
    """A Python or numpy int or float, not a bool (for numeric arguments such as ``tol``)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )


def _int_tuple(name: str, value: Any, nd: int, *, minimum: int) -> tuple[int, ...]:
    """Turn an int or a sequence of ``nd`` ints into a tuple, checking ``>= minimum``."""
    rule = f"expected an int or a tuple of {nd} ints, each >= {minimum}"
    if _is_int(value):
        out = (int(value),) * nd
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != nd or not all(_is_int(v) for v in value):
            raise ValueError(f"{name}: {rule}, got {value!r}")
        out = tuple(int(v) for v in value)
    else:
        raise ValueError(f"{name}: {rule}, got {value!r}")
    if any(v < minimum for v in out):
        raise ValueError(f"{name}: {rule}, got {value!r}")
    return out


def _padding_pairs(
    value: Any, nd: int, kernel_extent: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[tuple[int, int], ...]:
    """Turn every accepted padding form into one ``(low, high)`` pair per spatial axis.

    ``'same'`` follows PyTorch: total padding ``d*(k-1)``, the extra element of an odd total on the
    high side.
    """
    rule = (
        f"expected an int, a tuple of {nd} ints, a tuple of {nd} (low, high) pairs, "
        "'valid' or 'same', all >= 0"
    )
    if isinstance(value, str):
        if value == "valid":
            return ((0, 0),) * nd
        if value == "same":
            if any(s != 1 for s in stride):
                raise ValueError(
                    f"padding: 'same' needs stride 1 on every axis, got stride={stride!r}"
                )
            return tuple((t // 2, t - t // 2) for t in (e - 1 for e in kernel_extent))
        raise ValueError(f"padding: {rule}, got {value!r}")
    if _is_int(value):
        if value < 0:
            raise ValueError(f"padding: {rule}, got {value!r}")
        return ((int(value), int(value)),) * nd
    if isinstance(value, Sequence) and len(value) == nd:
        pairs = []
        for item in value:
            if _is_int(item):
                pairs.append((int(item), int(item)))
            elif (
                isinstance(item, Sequence)
                and not isinstance(item, str)
                and len(item) == 2
                and all(_is_int(v) for v in item)
            ):
                pairs.append((int(item[0]), int(item[1])))
            else:
                raise ValueError(f"padding: {rule}, got {value!r}")
        if any(v < 0 for p in pairs for v in p):
            raise ValueError(f"padding: {rule}, got {value!r}")
        return tuple(pairs)
    raise ValueError(f"padding: {rule}, got {value!r}")


def normalize_float_array(name: str, value: Any) -> np.ndarray:
    """Return ``value`` as a float32/float64 ndarray without copying or casting it.

    Integer, complex, boolean and object arrays are rejected, never cast.
    """
    arr = np.asarray(value)
    if arr.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a float32 or float64 array, got dtype {arr.dtype.name!r} "
            "(fftbp never casts silently; convert explicitly with .astype())"
        )
    if arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {arr.shape!r}")
    return arr


def _shape_tuple(name: str, value: Any, ndim: int) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{name}: expected a tuple of {ndim} positive ints, got {value!r}")
    if len(value) != ndim or not all(_is_int(v) and v > 0 for v in value):
        raise ValueError(f"{name}: expected a tuple of {ndim} positive ints, got {value!r}")
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class ConvSpec:
    """A fully normalised convolution layer: shapes, stride, padding, dilation, groups, dtype.

    Semantics are those of ``torch.nn.functional.conv{1,2,3}d`` (cross-correlation), with
    asymmetric padding allowed. See ``docs/algebra.md`` for the index algebra.
    """

    batch: int
    in_channels: int
    out_channels: int
    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    dtype: np.dtype

    # -- derived quantities ------------------------------------------------------------------
    @property
    def nd(self) -> int:
        return len(self.kernel)

    @cached_property
    def kernel_extent(self) -> tuple[int, ...]:
        """Size of the dilated kernel, ``d*(k-1)+1`` per axis."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    @cached_property
    def out_size(self) -> tuple[int, ...]:
        return tuple(
            (h + lo + hi - e) // s + 1
            for h, (lo, hi), e, s in zip(
                self.in_size, self.padding, self.kernel_extent, self.stride
            )
        )

    @cached_property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, *self.in_size)

    @cached_property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    @cached_property
    def output_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, *self.out_size)

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group (``groups == C``): the channel sum is elementwise."""
        return self.in_channels == self.groups

    @cached_property
    def flops(self) -> int:
        """Multiply-adds x 2 of one direct forward pass (the same for each gradient)."""
        return (
            2
            * self.batch
            * self.out_channels
            * (self.in_channels // self.groups)
            * math.prod(self.out_size)
            * math.prod(self.kernel)
        )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_shapes(
        cls,
        input_shape: Sequence[int],
        weight_shape: Sequence[int],
        stride: IntOrTuple = 1,
        padding: PaddingArg = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        dtype: Any = np.float32,
        *,
        input_name: str = "input",
        weight_name: str = "weight",
    ) -> ConvSpec:
        """Validate a layer given by shapes and options; raise a clear error on anything invalid."""
        weight_shape = tuple(weight_shape)
        input_shape = tuple(input_shape)
        if len(weight_shape) not in (3, 4, 5):
            raise ValueError(
                f"{weight_name}: expected 3, 4 or 5 dimensions (F, C // groups, *kernel) for a "
                f"1D, 2D or 3D convolution, got shape {weight_shape!r}"
            )
        nd = len(weight_shape) - 2
        if len(input_shape) != nd + 2:
            raise ValueError(
                f"{input_name}: expected {nd + 2} dimensions (N, C, *spatial) to match the "
                f"{nd}D weight of shape {weight_shape!r}, got shape {input_shape!r}"
            )
        if any(not _is_int(v) or v <= 0 for v in input_shape):
            raise ValueError(f"{input_name}: expected positive sizes, got shape {input_shape!r}")
        if any(not _is_int(v) or v <= 0 for v in weight_shape):
            raise ValueError(f"{weight_name}: expected positive sizes, got shape {weight_shape!r}")
        dt = np.dtype(dtype)
        if dt not in _FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {dt.name!r}")
        if not _is_int(groups) or groups < 1:
            raise ValueError(f"groups: expected a positive int, got {groups!r}")
        groups = int(groups)
        n, c = int(input_shape[0]), int(input_shape[1])
        f, cg = int(weight_shape[0]), int(weight_shape[1])
        if c % groups:
            raise ValueError(
                f"groups: must divide the input channels, but {groups} does not divide C={c}"
            )
        if f % groups:
            raise ValueError(
                f"groups: must divide the output channels, but {groups} does not divide F={f}"
            )
        if cg * groups != c:
            raise ValueError(
                f"{weight_name}: expected {c // groups} input channels per group "
                f"(C={c} / groups={groups}) in dimension 1, got shape {weight_shape!r}"
            )
        stride_t = _int_tuple("stride", stride, nd, minimum=1)
        dilation_t = _int_tuple("dilation", dilation, nd, minimum=1)
        kernel = tuple(int(k) for k in weight_shape[2:])
        extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation_t))
        pads = _padding_pairs(padding, nd, extent, stride_t)
        in_size = tuple(int(h) for h in input_shape[2:])
        for axis, (h, (lo, hi), e) in enumerate(zip(in_size, pads, extent)):
            if h + lo + hi < e:
                raise ValueError(
                    f"{weight_name}: the dilated kernel ({e} on spatial axis {axis}) is larger "
                    f"than the padded input ({h} + {lo} + {hi} = {h + lo + hi}); "
                    f"kernel {kernel!r}, dilation {dilation_t!r}, input shape {input_shape!r}"
                )
        return cls(n, c, f, in_size, kernel, stride_t, pads, dilation_t, groups, dt)

    def check_output(self, name: str, shape: tuple[int, ...]) -> None:
        """Check that an array meant as grad_output has this layer's output shape."""
        if tuple(shape) != self.output_shape:
            raise ValueError(
                f"{name}: expected the layer's output shape {self.output_shape!r} "
                f"(N, F, *out), got {tuple(shape)!r}"
            )


def check_same_dtype(**arrays: np.ndarray | None) -> np.dtype:
    """All given arrays must share one float dtype; mixed precision is an error."""
    present = {k: a.dtype for k, a in arrays.items() if a is not None}
    dtypes = set(present.values())
    if len(dtypes) > 1:
        listing = ", ".join(f"{k}={v.name}" for k, v in present.items())
        raise TypeError(
            f"dtypes: all arrays must share one dtype (float32 or float64), got {listing}; "
            "fftbp never casts silently"
        )
    return dtypes.pop()
