"""Public entry points: validate (:mod:`fftbp._params`) -> plan (:mod:`fftbp.planning`) ->
execute (:mod:`fftbp.engine`).

Semantics are those of ``torch.nn.functional.conv{1,2,3}d`` and ``torch.nn.grad.conv*d_input`` /
``conv*d_weight``: cross-correlation, input ``(N, C, *spatial)``, weight ``(F, C // groups,
*kernel)``, the number of spatial dims taken from ``weight.ndim``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np

from fftbp._params import (
    PASSES,
    ConvSpec,
    Geometry,
    IntOrTuple,
    PaddingArg,
    Pass,
    check_bias,
    check_method,
    check_plan_args,
    check_same_dtype,
    check_tol,
    normalize_float_array,
    shape_arg,
)
from fftbp.engine import SpectrumPool
from fftbp.engine.executor import has_base, run_pass
from fftbp.engine.measure import measured_plan
from fftbp.engine.training import (
    Residuals,
    WeightSpectra,
    backward_train,
    forward_train,
    same_weight,
)
from fftbp.planning.decision import Plan, describe_spec
from fftbp.planning.errors import DataRange
from fftbp.planning.planner import Ask, plan_for_spec, resolve
from fftbp.planning.tolerance import check_accuracy, data_ranges

__all__ = ["Conv", "Grads", "conv", "conv_input_grad", "conv_weight_grad", "plan"]

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


@dataclass(frozen=True)
class Grads:
    """Gradients returned by :meth:`Conv.backward` (None where not requested)."""

    input: np.ndarray | None
    weight: np.ndarray | None
    bias: np.ndarray | None


class Conv:
    """A convolution layer that keeps its spectra between passes.

    Reuse (``docs/algebra.md``): the weight's spectrum is computed once per weight value and
    serves the forward pass and the input gradient; the input's spectrum from ``forward`` serves
    the weight gradient; grad_output's spectrum is computed once in ``backward`` and serves both
    gradients. A training step by FFT thus transforms each of x, w and grad_output once.

    The weight spectrum is remade after assigning ``layer.weight``, :meth:`update_weight`, or
    any in-place change of the weight array (detected by comparing with a snapshot taken when
    the spectrum was made, so ``w -= lr * dw`` just works).

    Threads: a layer may be called from several threads at once; each call has its own
    buffers. :meth:`forward` keeps its residuals for the next :meth:`backward` of the layer
    (the last forward wins); for several pending passes, or threads that each train, use
    :meth:`forward_step`, which returns them, and ``backward(g, residuals=...)``.
    """

    #: take a weight snapshot at every forward pass (it also serves :meth:`backward`'s check for
    #: in-place changes); subclasses with their own check take one only for the weight spectrum
    _snapshot_always = True
    #: plan with PyTorch's convolution as a candidate (fftbp.torch's layers)
    _native = False

    def __init__(
        self,
        weight: Any,
        bias: Any = None,
        stride: IntOrTuple = 1,
        padding: PaddingArg = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        *,
        method: Method = "auto",
        tol: float | None = None,
    ) -> None:
        check_method(method, Plan)
        check_tol(tol)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.method = method
        self.tol = tol
        self._pool = SpectrumPool()
        self._geometry: Geometry | None = None
        self._set_weight(weight, bias)

    # -- parameters ------------------------------------------------------------------------------
    def _set_weight(self, weight: Any, bias: Any) -> None:
        w = normalize_float_array("weight", weight)
        geo = self._geometry
        if geo is None or geo.weight_shape != w.shape:
            geo = Geometry.from_args(w.shape, self.stride, self.padding, self.dilation, self.groups)
        b = check_bias(bias, w.shape[0])
        check_same_dtype(weight=w, bias=b)
        self._weight, self.bias, self._geometry = w, b, geo
        self._weights = WeightSpectra()
        self._residuals: Residuals | None = None

    @property
    def weight(self) -> np.ndarray:
        return self._weight

    @weight.setter
    def weight(self, value: Any) -> None:
        self._set_weight(value, self.bias)

    @property
    def geometry(self) -> Geometry:
        """The layer's options normalised against its weight (stride, padding pairs, ...)."""
        assert self._geometry is not None
        return self._geometry

    def update_weight(self, weight: Any = None, bias: Any = None) -> None:
        """Declare the weight changed (optionally replacing weight and/or bias)."""
        self._set_weight(
            self._weight if weight is None else weight, self.bias if bias is None else bias
        )

    # -- passes -----------------------------------------------------------------------------------
    def forward(self, x: Any) -> np.ndarray:
        """Output of the layer for ``x``; keeps what :meth:`backward` needs."""
        y, self._residuals = self.forward_step(x)
        return y

    __call__ = forward

    def forward_step(
        self, x: Any, *, weight_grad: bool = True, copy_x: bool = True
    ) -> tuple[np.ndarray, Residuals]:
        """Output of the layer for ``x`` and the residuals its backward pass needs.

        ``weight_grad=False`` keeps nothing for a weight gradient; ``copy_x=False`` keeps a
        reference to ``x`` instead of a copy when x is kept (the caller guarantees it stays
        unchanged until the backward pass).
        """
        x = normalize_float_array("input", x)
        spec = self.geometry.spec(x.shape, x.dtype)
        check_same_dtype(input=x, weight=self._weight, bias=self.bias)
        dyn = _ranges(spec, Pass.FORWARD, x, tol=self.tol)
        p = resolve(
            self.method,
            spec,
            reuse=True,
            native=self._native,
            tol=self.tol,
            dyn=dyn,
            passes=(Pass.FORWARD,),
        )
        return forward_train(
            p,
            spec,
            x,
            self._weight,
            self.bias,
            self._weights,
            weight_grad=weight_grad,
            keep_x=self.tol is not None,
            copy_x=copy_x,
            snapshot=self._snapshot_always,
            pool=self._pool,
        )

    def backward(
        self,
        grad_output: Any,
        *,
        residuals: Residuals | None = None,
        input_grad: bool = True,
        weight_grad: bool = True,
    ) -> Grads:
        """Gradients of a forward pass for ``grad_output``: the one that made ``residuals``
        (default: the last :meth:`forward`).

        ``input_grad=False`` / ``weight_grad=False`` skip work nobody needs (e.g. a first layer).
        Raises ``RuntimeError`` if the weight was changed in place since that forward pass.
        """
        res = residuals if residuals is not None else self._residuals
        if res is None:
            raise RuntimeError("backward: call forward() first; there is no saved forward pass")
        g = _check_grad(grad_output, res.spec)
        check_same_dtype(weight=self._weight, grad_output=g)
        geo = self.geometry
        s = res.spec
        mine = (geo.weight_shape, geo.stride, geo.padding, geo.dilation, geo.groups)
        if (s.weight_shape, s.stride, s.padding, s.dilation, s.groups) != mine:
            raise ValueError(
                f"residuals: made by a forward pass of another layer ({describe_spec(s)}); "
                "pass the residuals of this layer's forward_step"
            )
        if res.snapshot is not None and not same_weight(self._weight, res.snapshot):
            raise RuntimeError(
                "backward: the weight array was modified in place after forward(); "
                "the gradients of that forward pass are no longer defined; "
                "call forward() again"
            )
        gb = g.sum(axis=(0, *range(2, g.ndim))) if self.bias is not None else None
        dx, dw = self._gradients(res, g, input_grad, weight_grad)
        return Grads(dx, dw, gb)

    def _gradients(
        self, res: Residuals, g: np.ndarray, input_grad: bool, weight_grad: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        routes = None
        if self.tol is not None:  # settle the gradients' routes on grad_output's range
            dyn: dict[Pass, DataRange] = {}
            passes: list[Pass] = []
            if input_grad:
                dyn.update(data_ranges(res.spec, Pass.INPUT_GRAD, g))
                passes.append(Pass.INPUT_GRAD)
            if weight_grad and res.x is not None:
                dyn.update(data_ranges(res.spec, Pass.WEIGHT_GRAD, res.x, g))
                passes.append(Pass.WEIGHT_GRAD)
            p = resolve(
                self.method, res.spec, reuse=True, tol=self.tol, dyn=dyn, passes=tuple(passes)
            )
            routes = {q: (p if q in passes else res.plan).choice(q).route for q in Pass}
        return backward_train(
            res,
            g,
            self._weights,
            input_grad=input_grad,
            weight_grad=weight_grad,
            routes=routes,
            pool=self._pool,
        )

    def __repr__(self) -> str:
        return (
            f"Conv(weight{self._weight.shape}, bias={'yes' if self.bias is not None else 'no'}, "
            f"stride={self.stride!r}, padding={self.padding!r}, dilation={self.dilation!r}, "
            f"groups={self.groups!r}, method={self.method!r}"
            + (f", tol={self.tol!r})" if self.tol is not None else ")")
        )
