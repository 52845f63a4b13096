"""Argument normalisation and validation: the one place that turns user arguments into a ConvSpec.

Every error message of the public API is written here. Each names the argument, shows the value
with ``!r`` and states the rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Any

import numpy as np

__all__ = [
    "PASSES",
    "ConvSpec",
    "Geometry",
    "IntOrTuple",
    "PaddingArg",
    "Pass",
    "normalize_float_array",
]


class Pass(str, Enum):
    """The three passes of a layer. Members compare, hash and print as their value, so
    ``Pass.FORWARD == "forward"`` and either spelling indexes the same dict entry."""

    FORWARD = "forward"
    INPUT_GRAD = "input_grad"
    WEIGHT_GRAD = "weight_grad"

    __hash__ = str.__hash__
    __str__ = str.__str__
    __format__ = str.__format__


PASSES: tuple[Pass, ...] = tuple(Pass)

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


@dataclass(frozen=True)
class Geometry:
    """A layer's options normalised against its weight shape, once (as torch's ``_ntuple``):
    what :class:`fftbp.Conv` keeps, and what :meth:`spec` completes with an input shape."""

    weight_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int

    @classmethod
    def from_args(
        cls,
        weight_shape: Sequence[int],
        stride: IntOrTuple = 1,
        padding: PaddingArg = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        *,
        weight_name: str = "weight",
    ) -> Geometry:
        """Validate the options against ``weight_shape``; raise a clear error on anything bad."""
        weight_shape = tuple(weight_shape)
        if len(weight_shape) not in (3, 4, 5):
            raise ValueError(
                f"{weight_name}: expected 3, 4 or 5 dimensions (F, C // groups, *kernel) for a "
                f"1D, 2D or 3D convolution, got shape {weight_shape!r}"
            )
        if any(not _is_int(v) or v <= 0 for v in weight_shape):
            raise ValueError(f"{weight_name}: expected positive sizes, got shape {weight_shape!r}")
        nd = len(weight_shape) - 2
        if not _is_int(groups) or groups < 1:
            raise ValueError(f"groups: expected a positive int, got {groups!r}")
        f = int(weight_shape[0])
        if f % groups:
            raise ValueError(
                f"groups: must divide the output channels, but {groups} does not divide F={f}"
            )
        stride_t = _int_tuple("stride", stride, nd, minimum=1)
        dilation_t = _int_tuple("dilation", dilation, nd, minimum=1)
        kernel = tuple(int(k) for k in weight_shape[2:])
        extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation_t))
        pads = _padding_pairs(padding, nd, extent, stride_t)
        shape = tuple(int(v) for v in weight_shape)
        return cls(shape, stride_t, pads, dilation_t, int(groups))

    def spec(
        self,
        input_shape: Sequence[int],
        dtype: Any = np.float32,
        *,
        input_name: str = "input",
        weight_name: str = "weight",
    ) -> ConvSpec:
        """The layer for inputs of ``input_shape`` and ``dtype``."""
        input_shape = tuple(input_shape)
        nd = len(self.weight_shape) - 2
        if len(input_shape) != nd + 2:
            raise ValueError(
                f"{input_name}: expected {nd + 2} dimensions (N, C, *spatial) to match the "
                f"{nd}D weight of shape {self.weight_shape!r}, got shape {input_shape!r}"
            )
        if any(not _is_int(v) or v <= 0 for v in input_shape):
            raise ValueError(f"{input_name}: expected positive sizes, got shape {input_shape!r}")
        dt = np.dtype(dtype)
        if dt not in _FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {dt.name!r}")
        n, c = int(input_shape[0]), int(input_shape[1])
        f, cg = self.weight_shape[:2]
        groups = self.groups
        if c % groups:
            raise ValueError(
                f"groups: must divide the input channels, but {groups} does not divide C={c}"
            )
        if cg * groups != c:
            raise ValueError(
                f"{weight_name}: expected {c // groups} input channels per group "
                f"(C={c} / groups={groups}) in dimension 1, got shape {self.weight_shape!r}"
            )
        kernel = self.weight_shape[2:]
        in_size = tuple(int(h) for h in input_shape[2:])
        extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, self.dilation))
        for axis, (h, (lo, hi), e) in enumerate(zip(in_size, self.padding, extent)):
            if h + lo + hi < e:
                raise ValueError(
                    f"{weight_name}: the dilated kernel ({e} on spatial axis {axis}) is larger "
                    f"than the padded input ({h} + {lo} + {hi} = {h + lo + hi}); "
                    f"kernel {kernel!r}, dilation {self.dilation!r}, input shape {input_shape!r}"
                )
        return ConvSpec(
            n, c, f, in_size, kernel, self.stride, self.padding, self.dilation, groups, dt
        )


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
        geo = Geometry.from_args(
            weight_shape, stride, padding, dilation, groups, weight_name=weight_name
        )
        return geo.spec(input_shape, dtype, input_name=input_name, weight_name=weight_name)

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


# -- planning and execution options --------------------------------------------------------------
#: ``method=`` names: ``"auto"`` plans, the others force an algorithm for every pass
METHOD_NAMES = ("auto", "fft", "fft_tiled", "direct")
#: ``mode=`` of :func:`fftbp.plan`
MODES = ("estimate", "measure")


def check_method(method: Any, plan_type: type) -> None:
    """``method=`` must be a plan (``plan_type``) or one of :data:`METHOD_NAMES`."""
    if isinstance(method, plan_type):
        return
    if not isinstance(method, str) or method not in METHOD_NAMES:
        raise ValueError(
            f"method: expected one of {', '.join(map(repr, METHOD_NAMES))} or a Plan from "
            f"fftbp.plan(), got {method!r}"
        )


def check_tol(tol: Any) -> None:
    """``tol=`` must be None or a number in (0, 1)."""
    if tol is None:
        return
    if not is_real(tol) or not 0 < tol < 1:
        raise ValueError(f"tol: expected None or a number between 0 and 1, got {tol!r}")


def check_plan_args(mode: Any, memory_limit: Any, native: Any, dynamic_range: Any) -> None:
    """The options of :func:`fftbp.plan` besides the layer."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(map(repr, MODES))}, got {mode!r}")
    check_memory_limit(memory_limit)
    if not isinstance(native, bool):
        raise ValueError(f"native: expected True or False, got {native!r}")
    if not is_real(dynamic_range) or not 1 <= dynamic_range < math.inf:
        raise ValueError(f"dynamic_range: expected a finite number >= 1, got {dynamic_range!r}")


def check_memory_limit(memory_limit: Any) -> None:
    """``memory_limit=``: None or a positive int of bytes."""
    if memory_limit is not None and (not _is_int(memory_limit) or memory_limit <= 0):
        raise ValueError(
            f"memory_limit: expected a positive int (bytes) or None, got {memory_limit!r}"
        )


def check_finite(name: str, a: np.ndarray) -> None:
    """``tol=`` plans on the data's dynamic range, which NaN and Inf do not have."""
    if not np.isfinite(a).all():
        raise ValueError(
            f"{name}: contains NaN or Inf; tol= needs finite data (its error model measures the "
            "data's dynamic range); drop tol= to compute with non-finite data"
        )


def check_bias(bias: Any, out_channels: int) -> np.ndarray | None:
    """The validated bias array (one value per output channel), or None."""
    if bias is None:
        return None
    b = normalize_float_array("bias", bias)
    if b.shape != (out_channels,):
        raise ValueError(
            f"bias: expected shape ({out_channels},) (one value per output channel), "
            f"got {b.shape!r}"
        )
    return b


def shape_arg(name: str, value: Any, ndim: int) -> tuple[int, ...]:
    """A shape argument (``input_shape``, ``weight_shape``): a sequence of ``ndim`` ints."""
    try:
        shape = tuple(int(v) for v in value)
        ok = len(shape) == ndim and all(_is_int(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected a tuple of {ndim} ints, got {value!r}")
    return shape
