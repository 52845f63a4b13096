"""``fftbp.torch.Conv{1,2,3}d``: ``nn.Conv{1,2,3}d`` subclasses whose passes go through fftbp.

The module keeps ``nn.ConvNd``'s constructor, parameters and ``state_dict`` (a checkpoint loads
into either class) and overrides only ``_conv_forward``, which

1. plans the layer for the input's shape (:func:`_plan`, PyTorch's native convolution is a
   candidate for every pass). The plan is a plain string, computed outside any traced region
   (``torch.compiler.assume_constant_result``: ``torch.compile`` and ``torch.export`` see a
   constant), and memoised by the planner;
2. calls torch's own module when every pass is planned to torch, otherwise the operator
   ``fftbp::conv_forward`` (:mod:`fftbp.torch._ops`), whose registered autograd formula calls
   ``fftbp::conv_input_grad`` and ``fftbp::conv_weight_grad``.

The module holds no state between calls besides its parameters.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn

from fftbp._params import PASSES, ConvSpec, check_method
from fftbp.api import Method
from fftbp.planning.decision import Plan
from fftbp.planning.planner import resolve
from fftbp.torch import _ops

__all__ = ["Conv1d", "Conv2d", "Conv3d"]

_FLOAT = (torch.float32, torch.float64)
_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


@torch.compiler.assume_constant_result
def _plan(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    dtype: str,
    method: str,
) -> str:
    """The operators' plan string for this call, or ``""`` when every pass is torch's.

    ``method`` is a method name or ``"plan:"`` and an encoded :class:`fftbp.Plan`.
    """
    spec = ConvSpec.from_shapes(x_shape, w_shape, stride, padding, dilation, groups, dtype)
    how: Any = _ops.decode(method[5:])[1] if method.startswith("plan:") else method
    p = resolve(how, spec, reuse=True, native=True)
    if all(p.choice(q).route.base == "torch" for q in PASSES):
        return ""
    return _ops.encode(p)


def _ints(shape: Any) -> tuple[int, ...]:
    """A shape as ints: a plan is per shape. ``torch.jit.trace`` gives sizes as tensors;
    under ``torch.compile`` with dynamic shapes ``operator.index`` specialises the graph on
    each size (``int()`` would keep it symbolic, and no plan can be made of a symbol)."""
    return tuple(int(n) if isinstance(n, torch.Tensor) else operator.index(n) for n in shape)


def _dual(*tensors: torch.Tensor | None) -> bool:
    """Whether forward-mode AD is running on one of ``tensors``."""
    from torch.autograd import forward_ad

    if torch.compiler.is_compiling() or forward_ad._current_level < 0:
        return False
    return any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def _transforms() -> set[Any]:
    """The ``torch.func`` transforms running (``TransformType`` values; none when compiling)."""
    if torch.compiler.is_compiling():
        return set()
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return {i.key() for i in retrieve_all_functorch_interpreters()}


def _grad_transforms_active(kinds: set[Any]) -> bool:
    """Whether a transform that differentiates (grad, vjp, jacrev, jvp, ...) is among ``kinds``:
    fftbp's operators have an autograd formula, not a functorch one."""
    from torch._C._functorch import TransformType

    return bool(kinds & {TransformType.Grad, TransformType.Jvp})


def _channels_last(t: torch.Tensor, nd: int) -> bool:
    return nd > 1 and not t.is_contiguous() and t.is_contiguous(memory_format=_LAST[nd])


class _FFTBPConv(nn.Module):
    """What the three module classes add to ``nn.ConvNd`` (first in their bases)."""

    _nd: int

    def __init__(self, *args: Any, method: Method = "auto", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.method = method

    @property
    def method(self) -> Method:
        """How each pass is computed: ``"auto"``, ``"fft"``, ``"fft_tiled"``, ``"direct"`` or
        a :class:`fftbp.Plan`."""
        return self._method

    @method.setter
    def method(self, value: Method) -> None:
        check_method(value, Plan)
        self._method = value
        self._method_key = "plan:" + _ops.encode(value) if isinstance(value, Plan) else value

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if not _supported(input, weight) or input.numel() == 0:
            # documented: torch computes it (an empty batch too: empty output and gradients)
            return super()._conv_forward(input, weight, bias)
        kinds = _transforms()
        if _grad_transforms_active(kinds) or _dual(input, weight, bias):
            raise RuntimeError(
                f"fftbp.torch.{type(self).__name__}: forward-mode AD and torch.func transforms "
                "that differentiate (grad, vjp, jacrev, jvp) are not supported by fftbp's "
                "operators, which have a backward formula only. Per-sample gradients: "
                "call torch.autograd.grad once per sample (a batch of one), or compute this "
                "layer with torch.nn.functional.conv{nd}d. vmap without grad works.".replace(
                    "{nd}", str(self._nd)
                )
            )
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
        plan = _plan(
            _ints(input.shape),
            _ints(weight.shape),
            self.stride,
            padding,
            self.dilation,
            self.groups,
            str(input.dtype).removeprefix("torch."),
            self._method_key,
        )
        if not plan:  # every pass by torch: torch's own module, without any detour
            return super()._conv_forward(original, weight, bias)
        # keep the input spectrum for a weight gradient only when one can be asked for (a
        # trace keeps it in either grad mode, so that the traced graph does not depend on it)
        grad_mode = torch.is_grad_enabled() or torch.jit.is_tracing()
        keep = bool(grad_mode and weight.requires_grad)
        y = torch.ops.fftbp.conv_forward(input, weight, bias, plan, keep)[0]
        if not kinds and (_channels_last(input, self._nd) or _channels_last(weight, self._nd)):
            # channels_last input or weight, channels_last out, as native (under vmap layouts
            # cannot be queried, and native's output layout there is its batching rule's)
            y = y.contiguous(memory_format=_LAST[self._nd])
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", method={self.method!r}"


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
