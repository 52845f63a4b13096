"""``fftbp.Conv``: a layer that keeps its spectra between passes (a training step through
:mod:`fftbp.engine.training`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fftbp._params import (
    Geometry,
    IntOrTuple,
    PaddingArg,
    Pass,
    check_bias,
    check_method,
    check_same_dtype,
    check_tol,
    normalize_float_array,
)
from fftbp.api import Method, _check_grad, _ranges
from fftbp.engine import SpectrumPool
from fftbp.engine.training import (
    Residuals,
    WeightSpectra,
    backward_train,
    equal_values,
    forward_train,
    same_weight,
)
from fftbp.planning.decision import Plan, describe_spec
from fftbp.planning.errors import DataRange
from fftbp.planning.planner import resolve
from fftbp.planning.tolerance import data_ranges

__all__ = ["Conv", "Grads"]


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
        return self._forward(x, self._weight, self.bias, self._weights, weight_grad, copy_x)

    def _forward(
        self,
        x: Any,
        w: np.ndarray,
        bias: np.ndarray | None,
        weights: WeightSpectra,
        weight_grad: bool,
        copy_x: bool,
    ) -> tuple[np.ndarray, Residuals]:
        """:meth:`forward_step` with the weight, bias and weight-spectra cache given (read
        once by the caller: another thread may replace the layer's meanwhile)."""
        x = normalize_float_array("input", x)
        spec = self.geometry.spec(x.shape, x.dtype)
        check_same_dtype(input=x, weight=w, bias=bias)
        dyn = _ranges(spec, Pass.FORWARD, x, tol=self.tol)
        p = resolve(
            self.method,
            spec,
            reuse=True,
            tol=self.tol,
            dyn=dyn,
            passes=(Pass.FORWARD,),
        )
        return forward_train(
            p,
            spec,
            x,
            w,
            bias,
            weights,
            weight_grad=weight_grad,
            keep_x=self.tol is not None,
            copy_x=copy_x,
            snapshot=True,  # also serves backward's check for in-place changes
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
        w, snap = self._weight, res.snapshot
        if snap is not None and not (same_weight(w, snap) or equal_values(w, snap)):
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
