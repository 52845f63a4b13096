"""``fftbp.torch.Conv{1,2,3}d``: ``nn.Conv{1,2,3}d`` subclasses whose passes go through fftbp.

The module keeps ``nn.ConvNd``'s constructor, parameters and ``state_dict`` (a checkpoint loads
into either class) and overrides only ``_conv_forward``. That calls :class:`_ConvFunction`, a
``torch.autograd.Function`` around one :class:`fftbp.Conv` engine per module:

* forward plans the layer (PyTorch's native convolution is a candidate for every pass), computes
  the output and keeps what backward needs: the input's spectrum when the weight gradient reuses
  it, otherwise the input tensor itself (through ``save_for_backward``, so an in-place change
  between forward and backward raises torch's usual error);
* backward computes only the gradients in ``ctx.needs_input_grad``, reusing the weight's
  spectrum (made once per weight value: the key is the parameter's storage and torch's version
  counter, which every optimizer step bumps) and the kept input spectrum.

Tensors cross to numpy without copies (``Tensor.numpy()`` / ``torch.from_numpy``) when they are
contiguous CPU tensors.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from fftbp._params import PASSES, ConvSpec, check_method
from fftbp.api import Method
from fftbp.engine import Residuals, SpectrumPool, WeightSpectra
from fftbp.layer import Conv
from fftbp.planning.decision import Plan
from fftbp.planning.planner import plan_for_spec

__all__ = ["Conv1d", "Conv2d", "Conv3d"]

_FLOAT = (torch.float32, torch.float64)
_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (copied only if it is not contiguous)."""
    return t.detach().contiguous().numpy()


class _Engine(Conv):
    """An :class:`fftbp.Conv` whose weight is a view of a torch parameter's memory.

    The weight spectrum is remade when the weight's content changes: :class:`fftbp.Conv`
    compares it with a snapshot at every forward pass that uses it, which also catches writes
    through ``.data`` that torch's version counter does not see. In-place changes between
    forward and backward are torch's to detect (``save_for_backward``). What one forward
    keeps for its backward is the :class:`~fftbp.engine.Residuals` it returns, held by the
    autograd node: calls from several threads never share it.
    """

    _snapshot_always = False
    _native = True

    def __init__(self, stride: Any, padding: Any, dilation: Any, groups: int, method: Method):
        check_method(method, Plan)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.method, self.tol = method, None
        self._key: tuple[Any, ...] | None = None
        self._geometry = None
        self._pool = SpectrumPool()
        self._lock = threading.Lock()

    def bind(
        self, w: torch.Tensor, b: torch.Tensor | None
    ) -> tuple[np.ndarray, np.ndarray | None, WeightSpectra]:
        """Use ``w`` and ``b``; returns their numpy views and the weight-spectra cache, read
        together under the lock (a call from another thread may bind other tensors next)."""
        key = (w.data_ptr(), tuple(w.shape), tuple(w.stride()), w.dtype, w._version)
        bias = None if b is None else _numpy(b)
        with self._lock:
            if key != self._key:
                self._set_weight(_numpy(w), bias)
                self._key = key
            else:
                self.bias = bias
            return self._weight, bias, self._weights


class _ConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        engine: _Engine,
        grad: bool,
    ) -> torch.Tensor:
        wn, bn, weights = engine.bind(w, b)
        xn = _numpy(x)
        need_dw = grad and w.requires_grad
        y, res = engine._forward(xn, wn, bn, weights, need_dw, False)
        ctx.engine, ctx.residuals = engine, res
        # x is saved only when a pass needs it; torch checks both for in-place changes
        ctx.save_for_backward(x if res.x is not None else None, w)
        return torch.from_numpy(y)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:
        _ = ctx.saved_tensors  # raises if x or w was modified in place since forward;
        # the residuals already hold the numpy view of x (or its contiguous copy)
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        res: Residuals = ctx.residuals
        if need_dw and res.x is None and res.xf is None:
            raise RuntimeError(
                "fftbp.torch: the weight gradient was not requested when forward ran "
                "(weight.requires_grad was False or grad mode was off)"
            )
        g = _numpy(gy)
        engine: _Engine = ctx.engine
        dx, dw = engine._gradients(res, g, need_dx, need_dw)
        db = gy.sum(dim=(0, *range(2, gy.dim()))) if need_db else None
        return (
            None if dx is None else torch.from_numpy(dx),
            None if dw is None else torch.from_numpy(dw),
            db,
            None,
            None,
        )


class _FFTBPConv(nn.Module):
    """What the three module classes add to ``nn.ConvNd`` (first in their bases)."""

    _nd: int

    def __init__(self, *args: Any, method: Method = "auto", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_method(method, Plan)
        self.method = method
        self._engines: dict[str, _Engine] = {}
        self._all_native: dict[tuple[Any, ...], bool] = {}

    def _engine(self, padding: Any) -> _Engine:
        key = repr(padding)
        eng = self._engines.get(key)
        if eng is None or eng.method is not self.method:
            eng = _Engine(self.stride, padding, self.dilation, self.groups, self.method)
            self._engines[key] = eng
        return eng

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if not _supported(input, weight) or input.numel() == 0:
            # documented: torch computes it (an empty batch too: empty output and gradients)
            return super()._conv_forward(input, weight, bias)
        original = input
        padding: Any = self.padding
        if self.padding_mode != "zeros":
            input = nn.functional.pad(
                input, self._reversed_padding_repeated_twice, mode=self.padding_mode
            )
            padding = 0
        unbatched = input.dim() == self._nd + 1
        if unbatched:
            input = input.unsqueeze(0)
        engine = self._engine(padding)
        if self._plans_all_native(engine, input, weight):
            # every pass by torch: torch's own module, without any detour
            return super()._conv_forward(original, weight, bias)
        grad = torch.is_grad_enabled() and (
            input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        )
        y = _ConvFunction.apply(input, weight, bias, engine, grad)
        if (
            self._nd > 1
            and not input.is_contiguous()
            and input.is_contiguous(memory_format=_LAST[self._nd])
        ):  # channels_last in, channels_last out, as native
            y = y.contiguous(memory_format=_LAST[self._nd])
        return y.squeeze(0) if unbatched else y

    def _plans_all_native(self, engine: _Engine, x: torch.Tensor, w: torch.Tensor) -> bool:
        """Whether ``method="auto"`` plans every pass of this call by torch."""
        if self.method != "auto":
            return False
        key = (tuple(x.shape), tuple(w.shape), x.dtype, repr(engine.padding))
        hit = self._all_native.get(key)
        if hit is None:
            spec = ConvSpec.from_shapes(
                key[0],
                key[1],
                self.stride,
                engine.padding,
                self.dilation,
                self.groups,
                str(x.dtype).removeprefix("torch."),
            )
            p = plan_for_spec(spec, reuse=True, native=True)
            hit = self._all_native[key] = all(p.choice(q).route.base == "torch" for q in PASSES)
        return hit

    def extra_repr(self) -> str:
        return super().extra_repr() + f", method={self.method!r}"

    def __getstate__(self) -> dict[str, Any]:
        """Pickle and deepcopy without the engines (numpy views of the weight, a lock)."""
        state = dict(self.__dict__)
        state["_engines"] = {}
        state["_all_native"] = {}
        return state


def adopt(module: nn.Module, method: Method = "auto") -> nn.Module:
    """Turn a plain ``nn.Conv{1,2,3}d`` into fftbp's class of the same dimension, in place:
    parameters, buffers, hooks and attributes stay the same objects. Returns ``module``."""
    cls = _FFTBP_CLASS.get(type(module))
    if cls is None:
        raise TypeError(
            f"module: expected a torch.nn.Conv1d, Conv2d or Conv3d, got {type(module).__name__}"
        )
    check_method(method, Plan)
    module.__class__ = cls
    module.method = method
    module._engines, module._all_native = {}, {}
    return module


def _supported(x: torch.Tensor, w: torch.Tensor) -> bool:
    """fftbp computes strided CPU float32/float64 tensors; everything else goes to torch."""
    return (
        x.device.type == "cpu"
        and w.device.type == "cpu"
        and x.dtype in _FLOAT
        and w.dtype in _FLOAT
        and x.layout == torch.strided
    )


_DOC = """``torch.nn.{name}`` computed by fftbp where that is faster.

Same constructor, parameters and ``state_dict`` as ``torch.nn.{name}`` (a checkpoint loads into
either), plus one keyword: ``method`` = ``'auto'`` (default: plan every pass with torch's native
convolution as one more candidate), ``'fft'``, ``'fft_tiled'``, ``'direct'`` or a
:class:`fftbp.Plan`. Inputs on other devices or with dtypes other than float32/float64 are
computed by ``torch.nn.{name}`` unchanged.
"""


class Conv1d(_FFTBPConv, nn.Conv1d):
    __doc__ = _DOC.format(name="Conv1d")
    _nd = 1


class Conv2d(_FFTBPConv, nn.Conv2d):
    __doc__ = _DOC.format(name="Conv2d")
    _nd = 2


class Conv3d(_FFTBPConv, nn.Conv3d):
    __doc__ = _DOC.format(name="Conv3d")
    _nd = 3


_FFTBP_CLASS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: Conv1d,
    nn.Conv2d: Conv2d,
    nn.Conv3d: Conv3d,
}
