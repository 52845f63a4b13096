"""fftbp's three passes as PyTorch operators, differentiable through each other.

``fftbp::conv_forward(x, weight, bias, plan, keep_spectrum) -> (y, spectrum)``
    y = F(x, w) + b, and the input's spectrum when ``keep_spectrum`` (an empty tensor
    otherwise), returned so that autograd owns it (``save_for_backward``).
``fftbp::conv_input_grad(grad_output, weight, plan) -> grad_input``
    Dx(g, w) = J_x^T g, J_x the Jacobian of F(., w).
``fftbp::conv_weight_grad(grad_output, x, spectrum, plan) -> grad_weight``
    Dw(x, g) = J_w^T g, J_w the Jacobian of F(x, .); from ``spectrum`` when it is not empty.
``fftbp::conv_backward(grad_output, x, weight, spectrum, plan) -> (grad_input, grad_weight)``
    Both in one call, which transforms grad_output once for the two (what backward calls when
    autograd asks for both).

F, Dx and Dw are bilinear, so every derivative is one of them (as for torch's own
``convolution_backward``); for upstream gradients g (of y), u (of Dx) and v (of Dw)::

    backward of F(x, w) + b:  dx = Dx(g, w),  dw = Dw(x, g),  db = sum of g
    backward of Dx(g, w):     dg = F(u, w),   dw = Dw(u, g)
    backward of Dw(x, g):     dx = Dx(g, v),  dg = F(x, v)

``plan`` is a plain string (:func:`encode`): the layer and the route of each pass, decided
before the call (by :mod:`fftbp.torch._modules`, outside any traced region). The operators are
therefore opaque nodes for ``torch.compile`` and ``torch.export``, and their fake
implementations give every output's shape, dtype and strides from ``plan`` alone.

State between calls: the weight's spectra are memoised per weight value (content-checked,
:class:`~fftbp.engine.WeightSpectra`), and freed spectrum buffers are pooled for reuse (a fresh
40 MB array costs as much in page faults as its transforms). Neither is shared by two running
calls: a memoised spectrum is read-only, a pooled buffer belongs to one tensor until it dies.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyfftw
import torch
from torch import Tensor

from fftbp._config import get_num_threads, get_workspace_limit
from fftbp._params import PASSES, ConvSpec
from fftbp.engine import SpectrumPool, WeightSpectra, backward_train, forward_train
from fftbp.engine.training import Residuals, keeps_spectrum, spectrum_buffer
from fftbp.planning.decision import Choice, Plan
from fftbp.planning.routes import Route

__all__ = [
    "conv_backward",
    "conv_forward",
    "conv_input_grad",
    "conv_weight_grad",
    "decode",
    "encode",
]


# -- the plan as a plain value ----------------------------------------------------------------


def encode(plan: Plan) -> str:
    """The operators' ``plan`` argument: the layer, each pass's route, the memory limit and
    whether forward keeps the input spectrum (decided here, under the thread count and limit
    now in force, so that the fake implementation knows the outputs)."""
    return _encode(plan, get_num_threads(), _limit(plan))


#: a digest of this file: part of every plan string, hence of every graph that holds one, so
#: that torch.compile's on-disk caches (keyed on the graph, not on a custom operator's Python
#: code) never serve a backward graph traced from formulas that have since changed
_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


@lru_cache(maxsize=512)
def _encode(plan: Plan, threads: int, limit: int) -> str:
    s = plan.spec
    return json.dumps(
        {
            "shapes": [list(s.input_shape), list(s.weight_shape)],
            "stride": list(s.stride),
            "padding": [list(p) for p in s.padding],
            "dilation": list(s.dilation),
            "groups": s.groups,
            "dtype": s.dtype.name,
            "routes": [plan.choice(p).route.to_json() for p in PASSES],
            "limit": plan.memory_limit,
            "keep": keeps_spectrum(plan, threads, limit),
            "source": _SOURCE,
        },
        separators=(",", ":"),
    )


@lru_cache(maxsize=512)
def decode(text: str) -> tuple[ConvSpec, Plan, bool]:
    """``(spec, plan, keeps_spectrum)`` of an :func:`encode` string."""
    try:
        d = json.loads(text)
        spec = ConvSpec.from_shapes(
            d["shapes"][0],
            d["shapes"][1],
            tuple(d["stride"]),
            tuple(tuple(p) for p in d["padding"]),
            tuple(d["dilation"]),
            d["groups"],
            d["dtype"],
        )
        routes = [Route.from_json(r) for r in d["routes"]]
        keep = bool(d["keep"])
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(
            f"plan: not a plan of fftbp.torch's operators ({e}): {text[:200]!r}"
        ) from None
    choices = [Choice(r, float("nan"), 0) for r in routes]
    return spec, Plan(spec, "given", *choices, memory_limit=d["limit"]), keep


def _check(name: str, t: Tensor, shape: tuple[int, ...], spec: ConvSpec) -> None:
    if tuple(t.shape) != tuple(shape) or t.dtype != _DTYPE[spec.dtype.name]:
        raise ValueError(
            f"{name}: expected shape {tuple(shape)} and {spec.dtype.name} (the plan's layer), "
            f"got {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
        )


_DTYPE = {"float32": torch.float32, "float64": torch.float64}

#: the kernels read and write contiguous (NCHW) arrays: inductor is told so, and converts in its
#: own kernels what its channels_last layout optimisation made channels_last (docs/torch.md)
_TAGS = (torch.Tag.needs_contiguous_strides,)


# -- state between calls: memoised weight spectra, pooled spectrum buffers -------------------

#: weights whose spectra are memoised (a model's large-kernel layers)
MAX_WEIGHTS = 64
_weights: OrderedDict[tuple[Any, ...], WeightSpectra] = OrderedDict()
_weights_lock = threading.Lock()
_pool = SpectrumPool()


def _reset_after_fork() -> None:
    """A forked child (DataLoader workers) starts with fresh state: a lock held by another
    thread of the parent at fork time would never be released in the child."""
    global _weights, _weights_lock, _pool
    _weights, _weights_lock, _pool = OrderedDict(), threading.Lock(), SpectrumPool()


os.register_at_fork(after_in_child=_reset_after_fork)


def _weight_spectra(w: Tensor) -> WeightSpectra:
    """The memo of ``w``'s spectra. Keyed by where ``w`` lives; every use compares the weight
    with the snapshot its spectra were made from, so a changed weight (an optimizer step,
    ``.data`` writes, a reused address) is never served an old spectrum."""
    key = (w.data_ptr(), tuple(w.shape), tuple(w.stride()), w.dtype)
    with _weights_lock:
        memo = _weights.get(key)
        if memo is None:
            memo = _weights[key] = WeightSpectra()
            while len(_weights) > MAX_WEIGHTS:
                _weights.popitem(last=False)
        else:
            _weights.move_to_end(key)
        return memo


def _numpy(t: Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (copied only if it is not contiguous)."""
    return t.detach().contiguous().numpy()


def _spectrum_tensor(spec: ConvSpec) -> tuple[Tensor, np.ndarray]:
    """A pooled buffer for the input spectrum, as a real tensor (the complex values as pairs),
    and the numpy array it views; the memory returns to the pool when the tensor is garbage."""
    shape, dtype = spectrum_buffer(spec)
    buf = _pool.take(shape, dtype, lambda: pyfftw.empty_aligned(shape, dtype=dtype, n=64))
    weakref.finalize(buf, _pool.give, buf.view())  # torch holds ``buf`` itself
    return torch.view_as_real(torch.from_numpy(buf)), buf


def _spectrum_meta(spec: ConvSpec) -> tuple[int, ...]:
    return (*spectrum_buffer(spec)[0], 2)


def _spectrum_array(spec: ConvSpec, t: Tensor) -> np.ndarray:
    """The kept spectrum (frequency-major view for dense layers) of a ``conv_forward`` output."""
    buf = _numpy(t).view(spectrum_buffer(spec)[1])[..., 0]
    return buf if spec.is_depthwise else buf[..., : spec.batch * spec.in_channels]


def _input_or_spectrum(
    spec: ConvSpec, x: Tensor, spectrum: Tensor
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """What a weight gradient reads, checked: ``(None, Xf)`` from a kept spectrum, else
    ``(x, None)``."""
    _check("x", x, spec.input_shape, spec)
    if spectrum.numel():
        _check("spectrum", spectrum, _spectrum_meta(spec), spec)
        return None, _spectrum_array(spec, spectrum)
    return _numpy(x), None


# -- the operators -------------------------------------------------------------------------------


@torch.library.custom_op("fftbp::conv_forward", mutates_args=(), device_types="cpu", tags=_TAGS)
def conv_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, plan: str, keep_spectrum: bool
) -> tuple[Tensor, Tensor]:
    """F(x, w) + b, and the input's spectrum if ``keep_spectrum`` and the plan keeps one."""
    spec, p, keeps = decode(plan)
    _check("input", x, spec.input_shape, spec)
    _check("weight", weight, spec.weight_shape, spec)
    if bias is not None:
        _check("bias", bias, (spec.out_channels,), spec)
    wn = _numpy(weight)
    bn = None if bias is None else _numpy(bias)
    if keep_spectrum and keeps:
        xf, buf = _spectrum_tensor(spec)
    else:
        xf, buf = x.new_empty(0), None
    y, _ = forward_train(
        p, spec, _numpy(x), wn, bn, _weight_spectra(weight), weight_grad=False,
        copy_x=False, pool=_pool, xf_out=buf,
    )  # fmt: skip
    return torch.from_numpy(y), xf


@conv_forward.register_fake
def _(
    x: Tensor, weight: Tensor, bias: Tensor | None, plan: str, keep_spectrum: bool
) -> tuple[Tensor, Tensor]:
    spec, _, keeps = decode(plan)
    y = x.new_empty(spec.output_shape)
    return y, x.new_empty(_spectrum_meta(spec) if keep_spectrum and keeps else (0,))


@torch.library.custom_op("fftbp::conv_input_grad", mutates_args=(), device_types="cpu", tags=_TAGS)
def conv_input_grad(grad_output: Tensor, weight: Tensor, plan: str) -> Tensor:
    """Dx(g, w): the gradient of F's input for grad_output g."""
    spec, p, _ = decode(plan)
    _check("grad_output", grad_output, spec.output_shape, spec)
    _check("weight", weight, spec.weight_shape, spec)
    w = _numpy(weight)
    res = Residuals(spec, p, _limit(p), w, None, None, None)
    g = _numpy(grad_output)
    dx, _ = backward_train(res, g, _weight_spectra(weight), weight_grad=False, pool=_pool)
    return torch.from_numpy(dx)


@conv_input_grad.register_fake
def _(grad_output: Tensor, weight: Tensor, plan: str) -> Tensor:
    return grad_output.new_empty(decode(plan)[0].input_shape)


@torch.library.custom_op("fftbp::conv_weight_grad", mutates_args=(), device_types="cpu", tags=_TAGS)
def conv_weight_grad(grad_output: Tensor, x: Tensor, spectrum: Tensor, plan: str) -> Tensor:
    """Dw(x, g): the gradient of F's weight for grad_output g (from ``spectrum``, the kept
    spectrum of ``x``, when it is not empty)."""
    spec, p, _ = decode(plan)
    _check("grad_output", grad_output, spec.output_shape, spec)
    x_kept, xf = _input_or_spectrum(spec, x, spectrum)
    res = Residuals(spec, p, _limit(p), None, None, x_kept, xf)
    _, dw = backward_train(res, _numpy(grad_output), WeightSpectra(), input_grad=False, pool=_pool)
    return torch.from_numpy(dw)


@conv_weight_grad.register_fake
def _(grad_output: Tensor, x: Tensor, spectrum: Tensor, plan: str) -> Tensor:
    return grad_output.new_empty(decode(plan)[0].weight_shape)


@torch.library.custom_op("fftbp::conv_backward", mutates_args=(), device_types="cpu", tags=_TAGS)
def conv_backward(
    grad_output: Tensor, x: Tensor, weight: Tensor, spectrum: Tensor, plan: str
) -> tuple[Tensor, Tensor]:
    """(Dx(g, w), Dw(x, g)) in one call: grad_output's spectrum is made once for both."""
    spec, p, _ = decode(plan)
    _check("grad_output", grad_output, spec.output_shape, spec)
    _check("weight", weight, spec.weight_shape, spec)
    x_kept, xf = _input_or_spectrum(spec, x, spectrum)
    res = Residuals(spec, p, _limit(p), _numpy(weight), None, x_kept, xf)
    dx, dw = backward_train(res, _numpy(grad_output), _weight_spectra(weight), pool=_pool)
    return torch.from_numpy(dx), torch.from_numpy(dw)


@conv_backward.register_fake
def _(
    grad_output: Tensor, x: Tensor, weight: Tensor, spectrum: Tensor, plan: str
) -> tuple[Tensor, Tensor]:
    spec = decode(plan)[0]
    return grad_output.new_empty(spec.input_shape), grad_output.new_empty(spec.weight_shape)


def _limit(p: Plan) -> int:
    """The workspace limit a call under ``p`` runs with (:func:`fftbp._config.call_settings`)."""
    return p.memory_limit if p.memory_limit is not None else get_workspace_limit()


# -- autograd: every derivative is one of the three operators ------------------------------------


def _bias_grad(g: Tensor) -> Tensor:
    return g.sum(dim=(0, *range(2, g.dim())))


def _setup_forward(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, weight, _, plan, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, weight, output[1])
    ctx.plan = plan


def _backward_forward(ctx: Any, g: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
    x, weight, spectrum = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    if need_x and need_w:
        dx, dw = conv_backward(g, x, weight, spectrum, ctx.plan)
    else:
        dx = conv_input_grad(g, weight, ctx.plan) if need_x else None
        dw = conv_weight_grad(g, x, spectrum, ctx.plan) if need_w else None
    return dx, dw, _bias_grad(g) if need_b else None, None, None


def _setup_input_grad(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    g, weight, plan = inputs
    ctx.save_for_backward(g, weight)
    ctx.plan = plan


def _backward_input_grad(ctx: Any, u: Tensor) -> tuple[Tensor | None, ...]:
    g, weight = ctx.saved_tensors
    need_g, need_w = ctx.needs_input_grad[:2]
    dg = conv_forward(u, weight, None, ctx.plan, False)[0] if need_g else None
    dw = conv_weight_grad(g, u, u.new_empty(0), ctx.plan) if need_w else None
    return dg, dw, None


def _setup_weight_grad(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    g, x, _, plan = inputs
    ctx.save_for_backward(g, x)
    ctx.plan = plan


def _backward_weight_grad(ctx: Any, v: Tensor) -> tuple[Tensor | None, ...]:
    g, x = ctx.saved_tensors
    need_g, need_x = ctx.needs_input_grad[:2]
    dg = conv_forward(x, v, None, ctx.plan, False)[0] if need_g else None
    dx = conv_input_grad(g, v, ctx.plan) if need_x else None
    return dg, dx, None, None


def _setup_backward(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    g, x, weight, _, plan = inputs
    ctx.save_for_backward(g, x, weight)
    ctx.plan = plan
    ctx.set_materialize_grads(False)  # a gradient nobody used stays None: no work for it


def _backward_backward(ctx: Any, u: Tensor | None, v: Tensor | None) -> tuple[Any, ...]:
    """Upstream u of Dx(g, w) and v of Dw(x, g): the sum of the two formulas above."""
    g, x, weight = ctx.saved_tensors
    need_g, need_x, need_w = ctx.needs_input_grad[:3]
    dg = dx = dw = None
    if need_g:
        parts = []
        if u is not None:
            parts.append(conv_forward(u, weight, None, ctx.plan, False)[0])
        if v is not None:
            parts.append(conv_forward(x, v, None, ctx.plan, False)[0])
        dg = sum(parts[1:], parts[0]) if parts else None
    if need_x and v is not None:
        dx = conv_input_grad(g, v, ctx.plan)
    if need_w and u is not None:
        dw = conv_weight_grad(g, u, u.new_empty(0), ctx.plan)
    return dg, dx, dw, None, None


conv_forward.register_autograd(_backward_forward, setup_context=_setup_forward)
conv_backward.register_autograd(_backward_backward, setup_context=_setup_backward)
conv_input_grad.register_autograd(_backward_input_grad, setup_context=_setup_input_grad)
conv_weight_grad.register_autograd(_backward_weight_grad, setup_context=_setup_weight_grad)


# -- autocast: compute in the plan's precision, return what native returns ----------------------


def _autocast_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, plan: str, keep_spectrum: bool
) -> tuple[Tensor, Tensor]:
    """Under ``torch.autocast("cpu", dtype)`` native convolution returns ``dtype``; fftbp
    computes in the plan's float32/float64 (more accurate, as fast) and rounds the output."""
    dtype = torch.get_autocast_dtype("cpu")
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
    with torch._C._ExcludeDispatchKeyGuard(keys):
        y, xf = conv_forward(x, weight, bias, plan, keep_spectrum)
    # autocast lowers float32 only: a float64 layer stays float64, as native
    return (y.to(dtype) if x.dtype == torch.float32 else y), xf


torch.library.impl("fftbp::conv_forward", "AutocastCPU")(_autocast_forward)


# -- vmap: each slice is one call (the batch of a convolution is already a batch) ---------------


def _vmap_rule(op: Any, n_out: int) -> Any:
    def rule(info: Any, in_dims: tuple[Any, ...], *args: Any) -> tuple[Any, Any]:
        outs = []
        for i in range(info.batch_size):
            sliced = [
                a.select(d, i) if isinstance(a, Tensor) and d is not None else a
                for a, d in zip(args, in_dims)
            ]
            outs.append(op(*sliced))
        if n_out == 1:
            return torch.stack(outs), 0
        return tuple(torch.stack(list(o)) for o in zip(*outs)), (0,) * n_out

    return rule


conv_forward.register_vmap(_vmap_rule(conv_forward, 2))
conv_input_grad.register_vmap(_vmap_rule(conv_input_grad, 1))
conv_weight_grad.register_vmap(_vmap_rule(conv_weight_grad, 1))
conv_backward.register_vmap(_vmap_rule(conv_backward, 2))
