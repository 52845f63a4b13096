"""Public entry points: validate -> choose a method -> execute.

Semantics are those of ``torch.nn.functional.conv{1,2,3}d`` and ``torch.nn.grad.conv*d_input`` /
``conv*d_weight``: cross-correlation, input ``(N, C, *spatial)``, weight ``(F, C // groups,
*kernel)``, the number of spatial dims taken from ``weight.ndim``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fftbp._config import blas_single_threaded, get_workspace_limit, workspace_limit_override
from fftbp._params import (
    ConvSpec,
    IntOrTuple,
    PaddingArg,
    check_same_dtype,
    normalize_float_array,
)
from fftbp.kernels import fft as _fft
from fftbp.kernels import fft_depthwise as _fdw
from fftbp.planning.errors import DataRange
from fftbp.planning.plan import Plan, check_method, check_tol, data_ranges, resolve
from fftbp.planning.routes import Route, run_forward, run_input_grad, run_weight_grad

__all__ = ["Conv", "Grads", "conv", "conv_input_grad", "conv_weight_grad"]

Method = str | Plan
_FFT = Route("fft")


def _bias(bias: Any, out_channels: int) -> np.ndarray | None:
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
        ``'fft_tiled'`` (overlap-save tiles), ``'direct'`` (im2col + GEMM), or a :class:`Plan`.
    tol : accuracy target or None. Every output's error relative to the scale of its terms
        (``|w| * |x|``; :mod:`fftbp.planning.errors`) must be predicted below it for these
        operands (the model measures their dynamic range); ``'auto'`` then picks the fastest
        algorithm that meets it (tiles, direct, or float64 transforms), and any other method
        predicted above it raises ``ValueError``. The same for the gradient functions.

    Returns
    -------
    ndarray of shape ``(N, F, *out)`` and the input's dtype.
    """
    x = normalize_float_array("input", input)
    w = normalize_float_array("weight", weight)
    spec = ConvSpec.from_shapes(x.shape, w.shape, stride, padding, dilation, groups, x.dtype)
    b = _bias(bias, spec.out_channels)
    check_same_dtype(input=x, weight=w, bias=b)
    dyn = _ranges(spec, "forward", x, tol=tol)
    p = resolve(method, spec, tol=tol, dyn=dyn, passes=("forward",))
    return p.run("forward", spec, x, w, b)


def _ranges(
    spec: ConvSpec, pass_: str, a: np.ndarray, b: np.ndarray | None = None, *, tol: Any
) -> dict[str, DataRange] | None:
    """The data's dynamic range for ``pass_`` (what ``tol=`` needs), or None without tol."""
    check_tol(tol)
    if tol is None:
        return None
    return data_ranges(spec, pass_, a, b)


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
    shape = _shape_arg("input_shape", input_shape, w.ndim)
    spec = ConvSpec.from_shapes(
        shape, w.shape, stride, padding, dilation, groups, w.dtype, input_name="input_shape"
    )
    g = _check_grad(grad_output, spec)
    check_same_dtype(weight=w, grad_output=g)
    dyn = _ranges(spec, "input_grad", g, tol=tol)
    p = resolve(method, spec, tol=tol, dyn=dyn, passes=("input_grad",))
    return p.run("input_grad", spec, w, g)


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
    shape = _shape_arg("weight_shape", weight_shape, x.ndim)
    spec = ConvSpec.from_shapes(
        x.shape, shape, stride, padding, dilation, groups, x.dtype, weight_name="weight_shape"
    )
    g = _check_grad(grad_output, spec)
    check_same_dtype(input=x, grad_output=g)
    dyn = _ranges(spec, "weight_grad", x, g, tol=tol)
    p = resolve(method, spec, tol=tol, dyn=dyn, passes=("weight_grad",))
    return p.run("weight_grad", spec, x, g)


def _shape_arg(name: str, value: Any, ndim: int) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in value)
        ok = len(shape) == ndim and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected a tuple of {ndim} ints, got {value!r}")
    return shape


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

    The weight spectrum is invalidated by assigning ``layer.weight``, by :meth:`update_weight`,
    and by any in-place change of the weight array (detected by comparing with a snapshot taken
    when the spectrum was made, so ``w -= lr * dw`` just works).
    """

    #: take a weight snapshot at every forward pass (it also serves :meth:`backward`'s check for
    #: in-place changes); subclasses with their own check take one only for the weight spectrum
    _snapshot_always = True

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
        check_method(method)
        check_tol(tol)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.method = method
        self.tol = tol
        self._set_weight(weight, bias)

    # -- parameters ------------------------------------------------------------------------------
    def _set_weight(self, weight: Any, bias: Any) -> None:
        w = normalize_float_array("weight", weight)
        if w.ndim not in (3, 4, 5):
            raise ValueError(
                f"weight: expected 3, 4 or 5 dimensions (F, C // groups, *kernel), "
                f"got shape {w.shape!r}"
            )
        b = _bias(bias, w.shape[0])
        check_same_dtype(weight=w, bias=b)
        self._weight, self.bias = w, b
        self._wf: np.ndarray | None = None
        self._wf_key: tuple[Any, ...] | None = None
        self._w_snapshot: np.ndarray | None = None
        self._saved: dict[str, Any] | None = None
        self._ws: dict[str, np.ndarray] = {}

    @property
    def weight(self) -> np.ndarray:
        return self._weight

    @weight.setter
    def weight(self, value: Any) -> None:
        self._set_weight(value, self.bias)

    def update_weight(self, weight: Any = None, bias: Any = None) -> None:
        """Declare the weight changed (optionally replacing weight and/or bias)."""
        self._set_weight(
            self._weight if weight is None else weight, self.bias if bias is None else bias
        )

    def _weight_changed(self) -> bool:
        return self._w_snapshot is None or not np.array_equal(self._weight, self._w_snapshot)

    def _refresh_snapshot(self) -> None:
        """Take a new weight snapshot (dropping Wf) if the weight changed since the last one."""
        if self._weight_changed():
            self._w_snapshot = np.array(self._weight, copy=True)
            self._wf = None

    def _weight_spectrum(self, lay: _fft.FFTLayout) -> np.ndarray:
        """Wf for ``lay``, computed once per weight value (the snapshot is current)."""
        depthwise = lay.spec.is_depthwise
        key = (lay.shape, lay.spec.kernel, lay.spec.dilation, lay.spec.groups, depthwise)
        if self._wf is None or self._wf_key != key:
            make = _fdw.weight_spectrum if depthwise else _fft.weight_spectrum
            self._wf = make(lay, self._weight)
            self._wf_key = key
        return self._wf

    # -- passes -----------------------------------------------------------------------------------
    def forward(self, x: Any) -> np.ndarray:
        """Output of the layer for ``x``; saves what :meth:`backward` needs."""
        x = normalize_float_array("input", x)
        y, self._saved = self._forward_step(x, keep=self._ws, copy_x=True)
        return y

    __call__ = forward

    def _spec_for(self, x: np.ndarray) -> ConvSpec:
        return ConvSpec.from_shapes(
            x.shape,
            self._weight.shape,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            x.dtype,
        )

    def _forward_step(
        self,
        x: np.ndarray,
        *,
        keep: dict[str, np.ndarray],
        copy_x: bool,
        weight_grad: bool = True,
        native: bool = False,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The forward pass and what the backward pass of this call needs (``saved``).

        Spectra kept for the weight gradient are written into buffers of ``keep`` (reused between
        calls; pass a fresh dict when several forward passes are pending). ``copy_x=False``
        keeps a reference to ``x`` (the caller guarantees it stays unchanged, as torch's saved
        tensors do); ``weight_grad=False`` keeps nothing for a weight gradient.
        """
        spec = self._spec_for(x)
        check_same_dtype(input=x, weight=self._weight, bias=self.bias)
        tol = self.tol
        dyn = _ranges(spec, "forward", x, tol=tol)
        plan = resolve(
            self.method, spec, reuse=True, native=native, tol=tol, dyn=dyn, passes=("forward",)
        )
        routes = {p: plan.choice(p).route for p in ("forward", "input_grad", "weight_grad")}
        saved: dict[str, Any] = {"spec": spec, "plan": plan, "routes": routes, "dyn": dyn}
        # x itself is kept unless the weight gradient reuses Xf (with tol: always, since the
        # gradients' routes are settled only once grad_output's range is known)
        keep_x = weight_grad and (
            routes["weight_grad"] != _FFT or routes["forward"] != _FFT or tol is not None
        )
        if self._snapshot_always or _FFT in (routes["forward"], routes["input_grad"]):
            self._refresh_snapshot()
        with blas_single_threaded(), workspace_limit_override(plan.memory_limit):
            if routes["forward"] == _FFT:
                y = self._fft_forward(spec, x, saved, keep if weight_grad else None)
                keep_x = keep_x or (weight_grad and "xf" not in saved)
            else:
                y = run_forward(routes["forward"], spec, x, self._weight, self.bias)
        if keep_x:
            saved["x"] = np.array(x, copy=True) if copy_x else x
        return y, saved

    def _fft_forward(
        self,
        spec: ConvSpec,
        x: np.ndarray,
        saved: dict[str, Any],
        keep: dict[str, np.ndarray] | None,
    ) -> np.ndarray:
        """Whole-map FFT forward keeping Xf in ``keep`` (when it fits the workspace) for the
        weight gradient; ``keep=None``: nothing is kept."""
        lay = _fft.layout(spec)
        wf = self._weight_spectrum(lay)
        saved["layout"] = lay
        if spec.is_depthwise:
            fits = lay.spectrum_bytes(spec.batch * spec.in_channels) <= get_workspace_limit()
            xf_out = keep.get("xf") if keep is not None else None
            y, xf = _fdw.forward(
                lay, x, wf, self.bias, keep_xf=keep is not None and fits, xf_out=xf_out
            )
            if xf is not None and keep is not None:
                keep["xf"] = xf
                saved["xf"] = xf
            return y
        per_batch = lay.spectrum_bytes(spec.batch * (spec.in_channels + spec.out_channels))
        if keep is not None and per_batch <= get_workspace_limit():
            xf = _fft.input_spectrum(lay, x, keep)
            saved["xf"] = xf
            return _fft.forward_from_spectra(lay, xf, wf, self.bias, self._ws)
        return _fft.forward(lay, x, self._weight, self.bias, wf=wf)

    def backward(
        self, grad_output: Any, *, input_grad: bool = True, weight_grad: bool = True
    ) -> Grads:
        """Gradients of the last :meth:`forward` for ``grad_output``.

        ``input_grad=False`` / ``weight_grad=False`` skip work nobody needs (e.g. a first layer).
        Raises ``RuntimeError`` if the weight was changed in place since that forward pass.
        """
        if self._saved is None:
            raise RuntimeError("backward: call forward() first; there is no saved forward pass")
        saved = self._saved
        spec: ConvSpec = saved["spec"]
        g = _check_grad(grad_output, spec)
        check_same_dtype(weight=self._weight, grad_output=g)
        if self._weight_changed():
            raise RuntimeError(
                "backward: the weight array was modified in place after forward(); "
                "the gradients of that forward pass are no longer defined; "
                "call forward() again"
            )
        nd = spec.nd
        gb = g.sum(axis=(0, *range(2, 2 + nd))) if self.bias is not None else None
        if self.tol is not None:
            self._replan_gradients(saved, g, input_grad, weight_grad)
        dx, dw = self._backward_step(saved, g, input_grad, weight_grad)
        return Grads(dx, dw, gb)

    def _replan_gradients(
        self, saved: dict[str, Any], g: np.ndarray, input_grad: bool, weight_grad: bool
    ) -> None:
        """With ``tol``: settle the gradients' routes on grad_output's dynamic range."""
        spec: ConvSpec = saved["spec"]
        dyn = dict(saved["dyn"] or {})
        passes = []
        if input_grad:
            dyn.update(data_ranges(spec, "input_grad", g))
            passes.append("input_grad")
        if weight_grad:
            dyn.update(data_ranges(spec, "weight_grad", saved["x"], g))
            passes.append("weight_grad")
        plan = resolve(self.method, spec, reuse=True, tol=self.tol, dyn=dyn, passes=tuple(passes))
        for p in passes:
            saved["routes"][p] = plan.choice(p).route

    def _backward_step(
        self, saved: dict[str, Any], g: np.ndarray, input_grad: bool, weight_grad: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Input and weight gradients of the forward pass that made ``saved``."""
        spec: ConvSpec = saved["spec"]
        routes: dict[str, Route] = saved["routes"]
        dx = dw = None
        fft_dx = input_grad and routes["input_grad"] == _FFT
        fft_dw = weight_grad and routes["weight_grad"] == _FFT and "xf" in saved
        with blas_single_threaded(), workspace_limit_override(saved["plan"].memory_limit):
            if fft_dx or fft_dw:
                dx_f, dw_f = self._fft_backward(spec, g, saved, fft_dx, fft_dw)
                dx = dx_f if fft_dx else None
                dw = dw_f if fft_dw else None
            if input_grad and dx is None:
                dx = run_input_grad(routes["input_grad"], spec, self._weight, g)
            if weight_grad and dw is None:
                dw = run_weight_grad(routes["weight_grad"], spec, saved["x"], g)
        return dx, dw

    def _fft_backward(
        self, spec: ConvSpec, g: np.ndarray, saved: dict[str, Any], need_dx: bool, need_dw: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Both gradients by whole-map FFT from one grad_output spectrum, reusing Wf and Xf."""
        lay = saved.get("layout") or _fft.layout(spec)
        wf = self._weight_spectrum(lay) if need_dx else None
        xf = saved.get("xf") if need_dw else None
        if spec.is_depthwise:
            return _fdw.backward(
                lay, g, wf, xf=xf, x=saved.get("x"), need_dx=need_dx, need_dw=need_dw
            )
        dx = dw = None
        per_batch = lay.spectrum_bytes(spec.batch * (spec.in_channels + spec.out_channels))
        if per_batch <= get_workspace_limit():
            gf = _fft.grad_spectrum(lay, g, self._ws)
            if need_dx:
                dx = _fft.input_grad_from_spectra(lay, gf, wf, self._ws)
            if need_dw and xf is not None:
                dwf = _fft.weight_grad_spectrum(lay, xf, gf, ws=self._ws)
                dw = _fft.weight_grad_from_spectra(lay, dwf)
            return dx, dw
        if need_dx:
            dx = _fft.input_grad(lay, self._weight, g, wf=wf)
        if need_dw:
            dw = _fft.weight_grad(lay, saved["x"], g)
        return dx, dw

    def __repr__(self) -> str:
        return (
            f"Conv(weight{self._weight.shape}, bias={'yes' if self.bias is not None else 'no'}, "
            f"stride={self.stride!r}, padding={self.padding!r}, dilation={self.dilation!r}, "
            f"groups={self.groups!r}, method={self.method!r}"
            + (f", tol={self.tol!r})" if self.tol is not None else ")")
        )
