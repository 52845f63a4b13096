"""Public entry points: validate (:mod:`fftbp._params`) -> plan (:mod:`fftbp.planning`) ->
execute (:mod:`fftbp.engine`). The layer object, :class:`fftbp.Conv`, is :mod:`fftbp.layer`.

Semantics are those of ``torch.nn.functional.conv{1,2,3}d`` and ``torch.nn.grad.conv*d_input`` /
``conv*d_weight``: cross-correlation, input ``(N, C, *spatial)``, weight ``(F, C // groups,
*kernel)``, the number of spatial dims taken from ``weight.ndim``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from fftbp._params import (
    PASSES,
    ConvSpec,
    IntOrTuple,
    PaddingArg,
    Pass,
    check_bias,
    check_plan_args,
    check_same_dtype,
    check_tol,
    normalize_float_array,
    shape_arg,
)
from fftbp.engine.executor import has_base, run_pass
from fftbp.engine.measure import measured_plan
from fftbp.planning.decision import Plan
from fftbp.planning.errors import DataRange
from fftbp.planning.planner import Ask, plan_for_spec, resolve
from fftbp.planning.tolerance import check_accuracy, data_ranges

__all__ = ["conv", "conv_input_grad", "conv_weight_grad", "plan"]

Method = str | Plan


def _ranges(
    spec: ConvSpec, pass_: Pass, a: np.ndarray, b: np.ndarray | None = None, *, tol: Any
) -> dict[Pass, DataRange] | None:
    """The data's dynamic range for ``pass_`` (what ``tol=`` needs), or None without tol."""
    check_tol(tol)
    return None if tol is None else data_ranges(spec, pass_, a, b)


def _run(method: Method, spec: ConvSpec, pass_: Pass, a, b, bias=None, *, tol, dyn) -> np.ndarray:
    p = resolve(method, spec, tol=tol, dyn=dyn, passes=(pass_,))
    return run_pass(p.choice(pass_).route, spec, pass_, a, b, bias, limit=p.memory_limit)


def conv(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: IntOrTuple = 1,
    padding: PaddingArg = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    *,
    method: Method = "auto",
    tol: float | None = None,
) -> np.ndarray:
    """N-D convolution layer forward pass (cross-correlation), as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    input : ndarray, shape ``(N, C, *spatial)``, float32 or float64
    weight : ndarray, shape ``(F, C // groups, *kernel)``, same dtype; 1 to 3 spatial dims
    bias : ndarray of shape ``(F,)`` or None
    stride, dilation : int or tuple of one int per spatial dim, >= 1
    padding : int, tuple of ints, tuple of ``(low, high)`` pairs, ``'valid'`` or ``'same'``
        (``'same'`` needs stride 1; an odd total puts the extra element on the high side).
    groups : int dividing C and F (``groups == C`` is depthwise)
    method : ``'auto'`` (the planner's choice, :func:`fftbp.plan`), ``'fft'`` (whole maps),
        ``'fft_tiled'`` (overlap-save tiles), ``'direct'`` (shifted GEMMs / im2col + GEMM),
        or a :class:`Plan`.
    tol : accuracy target or None. Every output's error relative to the scale of its terms
        (``|w| * |x|``; :mod:`fftbp.planning.errors`) must be predicted below it for these
        operands (the model measures their dynamic range; NaN or Inf in them is a
        ``ValueError``); ``'auto'`` then picks the fastest algorithm that meets it (tiles,
        direct, or float64 transforms), and any other method predicted above it raises
        ``ValueError``. The same for the gradient functions.

    Returns
    -------
    ndarray of shape ``(N, F, *out)`` and the input's dtype.

    Notes
    -----
    The workspace stays within the workspace limit (:func:`fftbp.set_workspace_limit`, or the
    plan's ``memory_limit``): the batch is computed in chunks. When one sample alone needs
    more, a :class:`fftbp.WorkspaceWarning` says so and the pass runs with the least workspace
    its route allows; ``MemoryError`` when that exceeds the machine's memory.
    """
    x = normalize_float_array("input", input)
    w = normalize_float_array("weight", weight)
    spec = ConvSpec.from_shapes(x.shape, w.shape, stride, padding, dilation, groups, x.dtype)
    b = check_bias(bias, spec.out_channels)
    check_same_dtype(input=x, weight=w, bias=b)
    dyn = _ranges(spec, Pass.FORWARD, x, tol=tol)
    return _run(method, spec, Pass.FORWARD, x, w, b, tol=tol, dyn=dyn)


def _check_grad(grad_output: Any, spec: ConvSpec) -> np.ndarray:
    g = normalize_float_array("grad_output", grad_output)
    spec.check_output("grad_output", g.shape)
    return g


def conv_input_grad(
    input_shape: Any,
    weight: Any,
    grad_output: Any,
    stride: IntOrTuple = 1,
    padding: PaddingArg = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    *,
    method: Method = "auto",
    tol: float | None = None,
) -> np.ndarray:
    """Gradient of :func:`conv` with respect to its input (``torch.nn.grad.conv2d_input``).

    ``input_shape`` is needed because with stride > 1 several input sizes give the same output.
    Returns an array of shape ``input_shape`` and the weight's dtype.
    """
    w = normalize_float_array("weight", weight)
    shape = shape_arg("input_shape", input_shape, w.ndim)
    spec = ConvSpec.from_shapes(
        shape, w.shape, stride, padding, dilation, groups, w.dtype, input_name="input_shape"
    )
    g = _check_grad(grad_output, spec)
    check_same_dtype(weight=w, grad_output=g)
    dyn = _ranges(spec, Pass.INPUT_GRAD, g, tol=tol)
    return _run(method, spec, Pass.INPUT_GRAD, w, g, tol=tol, dyn=dyn)


def conv_weight_grad(
    input: Any,
    weight_shape: Any,
    grad_output: Any,
    stride: IntOrTuple = 1,
    padding: PaddingArg = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    *,
    method: Method = "auto",
    tol: float | None = None,
) -> np.ndarray:
    """Gradient of :func:`conv` with respect to its weight (``torch.nn.grad.conv2d_weight``)."""
    x = normalize_float_array("input", input)
    shape = shape_arg("weight_shape", weight_shape, x.ndim)
    spec = ConvSpec.from_shapes(
        x.shape, shape, stride, padding, dilation, groups, x.dtype, weight_name="weight_shape"
    )
    g = _check_grad(grad_output, spec)
    check_same_dtype(input=x, grad_output=g)
    dyn = _ranges(spec, Pass.WEIGHT_GRAD, x, g, tol=tol)
    return _run(method, spec, Pass.WEIGHT_GRAD, x, g, tol=tol, dyn=dyn)


def plan(
    input_shape: Any,
    weight_shape: Any,
    stride: IntOrTuple = 1,
    padding: PaddingArg = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    dtype: Any = "float32",
    *,
    mode: str = "estimate",
    memory_limit: int | None = None,
    native: bool = False,
    tol: float | None = None,
    dynamic_range: float = 1.0,
) -> Plan:
    """Plan every pass of a layer. ``print()`` the result to see the choices and their costs.

    Parameters
    ----------
    input_shape, weight_shape : tuples ``(N, C, *spatial)`` and ``(F, C // groups, *kernel)``
    stride, padding, dilation, groups : as in :func:`fftbp.conv`
    dtype : ``"float32"`` or ``"float64"``
    mode : ``"estimate"`` (cost model, no timing) or ``"measure"`` (time the candidates; the
        decision is stored with FFTW wisdom, see :func:`fftbp.save_wisdom`)
    memory_limit : bytes of workspace every pass may use (default: the global workspace limit,
        :func:`fftbp.set_workspace_limit`). Only routes whose least workspace fits are chosen,
        and running the plan keeps it (the batch is chunked); ``MemoryError`` if no route fits.
        The table shows each pass's peak workspace at the chunk size it will run with.
    native : also consider PyTorch's own convolution for each pass (needs torch; this is how
        :mod:`fftbp.torch` plans).
    tol : accuracy target, or None: every output's error relative to the scale of its terms
        (:mod:`fftbp.planning.errors`). Routes the error model predicts above it are excluded
        (float32 layers may then be computed with float64 transforms); ``ValueError`` if none
        meets it.
    dynamic_range : the data's dynamic range the error model assumes (ratio of the largest to
        the smallest local magnitude in a map; finite, >= 1). The functions measure it on
        their operands instead.

    Returns
    -------
    Plan
        Data: pass it as ``method=p`` to the functions or to :class:`fftbp.Conv`.
    """
    spec = ConvSpec.from_shapes(
        input_shape,
        weight_shape,
        stride,
        padding,
        dilation,
        groups,
        dtype,
        input_name="input_shape",
        weight_name="weight_shape",
    )
    check_plan_args(mode, memory_limit, native, dynamic_range)
    check_tol(tol)
    if native and importlib.util.find_spec("torch") is None:
        raise ImportError("native=True: PyTorch is not installed (pip install 'torch>=2.1')")
    if native and mode == "measure" and not has_base("torch"):
        raise ImportError("native=True with mode='measure': import fftbp.torch first")
    dyn = None if tol is None else {p: DataRange(float(dynamic_range)) for p in PASSES}
    if mode == "measure":
        ask = Ask.make(memory_limit, native=native, tol=tol, dyn=dyn)
        p = measured_plan(spec, ask)
    else:
        p = plan_for_spec(spec, memory_limit=memory_limit, native=native, tol=tol, dyn=dyn)
    check_accuracy(p, PASSES, tol, dyn)
    return p
