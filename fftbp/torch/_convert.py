"""``convert``: swap a model's ``nn.Conv{1,2,3}d`` for fftbp's where the planner predicts a gain.

The decision is per layer, for the shapes the layer sees when the model runs ``example_input``:
the predicted training-step time of torch's native convolution (its cost constants,
:func:`fftbp.planning.cost.torch_cost_of`) against that of the fftbp plan, which itself may
leave single passes to torch. Only the passes autograd will run are counted (a layer whose
input needs no gradient computes no input gradient). With ``measure=True`` both modules are
timed on those shapes (forward + backward, best of 3 alternating rounds) and the measured ratio
decides.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fftbp._params import PASSES, ConvSpec, is_real
from fftbp.engine.measure import best_of_rounds
from fftbp.planning.cost import torch_cost_of
from fftbp.planning.decision import describe_spec
from fftbp.planning.planner import constants, plan_for_spec
from fftbp.torch._modules import _FFTBP_CLASS as _SWAP
from fftbp.torch._modules import adopt

__all__ = ["ConvertReport", "LayerReport", "convert"]


@dataclass(frozen=True)
class LayerReport:
    """One convolution of the model and what :func:`convert` decided for it."""

    name: str
    layer: str
    converted: bool
    reason: str
    passes: dict[str, str] = field(default_factory=dict)
    predicted_speedup: float | None = None
    measured_speedup: float | None = None


@dataclass(frozen=True)
class ConvertReport:
    """Per-layer decisions of :func:`convert`; ``print()`` it for a table."""

    layers: tuple[LayerReport, ...]
    min_speedup: float
    measured: bool

    @property
    def converted(self) -> list[str]:
        return [r.name for r in self.layers if r.converted]

    def __str__(self) -> str:
        head = (
            f"{'layer':<28} {'converted':<9} {'predicted':>9} {'measured':>9}  "
            f"{'forward / input grad / weight grad':<40} shape"
        )
        rows = [f"fftbp.torch.convert (min_speedup={self.min_speedup})", head]
        for r in self.layers:
            pred = f"{r.predicted_speedup:.2f}x" if r.predicted_speedup else "-"
            meas = f"{r.measured_speedup:.2f}x" if r.measured_speedup else "-"
            passes = " / ".join(r.passes.get(p, "-") for p in PASSES) if r.passes else r.reason
            rows.append(
                f"{r.name or '(model)':<28} {'yes' if r.converted else 'no':<9} {pred:>9} "
                f"{meas:>9}  {passes:<40} {r.layer}"
            )
        rows.append(f"{len(self.converted)} of {len(self.layers)} convolutions converted")
        return "\n".join(rows)


def convert(
    model: nn.Module,
    example_input: Any,
    *,
    min_speedup: float = 1.2,
    inplace: bool = False,
    measure: bool = False,
) -> tuple[nn.Module, ConvertReport]:
    """Swap ``model``'s convolutions for :mod:`fftbp.torch`'s where that is predicted faster.

    Parameters
    ----------
    model : torch.nn.Module
        Its ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` modules (exactly those classes; user
        subclasses may override ``forward`` and are left alone) are candidates.
    example_input : Tensor or tuple of Tensors
        Run once through the model (``model(*example_input)``) to see each layer's input shape.
        The model is left exactly as it was apart from the swapped classes: BatchNorm's running
        statistics are restored and torch's random state is not advanced.
    min_speedup : float > 0
        Convert a layer only if its training step (forward + the gradients it needs) is
        predicted (or with ``measure``, measured) at least this much faster.
    inplace : bool
        Change ``model`` itself (its convolution modules change class; parameters, hooks and
        attributes stay the same objects) instead of a deep copy.
    measure : bool
        Time native and converted layers on their shapes and decide on the measured ratio.

    Returns
    -------
    (model, ConvertReport)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not is_real(min_speedup) or not min_speedup > 0:
        raise ValueError(f"min_speedup: expected a number > 0, got {min_speedup!r}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise TypeError(
            "example_input: expected a Tensor or a tuple of Tensors (the model's arguments), "
            f"got {type(example_input).__name__}"
        )
    target = model if inplace else copy.deepcopy(model)
    seen = layer_inputs(target, args)
    reports = []
    for name, mod in target.named_modules():
        if type(mod) not in _SWAP:
            continue
        report = _decide(name, mod, seen.get(name), min_speedup, measure)
        if report.converted:
            adopt(mod)
        reports.append(report)
    return target, ConvertReport(tuple(reports), float(min_speedup), measure)


def layer_inputs(
    model: nn.Module, args: tuple[torch.Tensor, ...]
) -> dict[str, tuple[torch.Tensor, bool, str]]:
    """Each candidate layer's first input (a meta tensor: shape and dtype), whether it needs a
    gradient, and its device type, from one forward pass with grad mode on (no backward).

    The model is left as it was: its buffers (BatchNorm's running statistics) are restored
    after the pass, and the pass runs on a fork of torch's CPU random state (Dropout does not
    advance the caller's generator)."""
    seen: dict[str, tuple[torch.Tensor, bool, str]] = {}
    handles = []
    for name, mod in model.named_modules():
        if type(mod) in _SWAP:

            def hook(_m: nn.Module, inp: tuple[Any, ...], name: str = name) -> None:
                x = inp[0]
                if name not in seen:
                    meta = torch.empty(x.shape, dtype=x.dtype, device="meta")
                    seen[name] = (meta, bool(x.requires_grad), x.device.type)

            handles.append(mod.register_forward_pre_hook(hook))
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
    return seen


def _spec(mod: nn.Module, x: torch.Tensor) -> ConvSpec:
    shape = tuple(x.shape)
    nd = mod.weight.dim() - 2
    if len(shape) == nd + 1:
        shape = (1, *shape)
    padding: Any = mod.padding
    if mod.padding_mode != "zeros":
        pads = mod._reversed_padding_repeated_twice
        grow = [pads[2 * (nd - 1 - i)] + pads[2 * (nd - 1 - i) + 1] for i in range(nd)]
        shape = (*shape[:2], *(h + p for h, p in zip(shape[2:], grow)))
        padding = 0
    dtype = str(x.dtype).removeprefix("torch.")
    return ConvSpec.from_shapes(
        shape, tuple(mod.weight.shape), mod.stride, padding, mod.dilation, mod.groups, dtype
    )


def _decide(name: str, mod: nn.Module, seen: Any, min_speedup: float, measure: bool) -> LayerReport:
    if seen is None:
        return LayerReport(name, "-", False, "not run by example_input")
    x, x_grad, device = seen
    if device != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return LayerReport(name, "-", False, f"{device} {x.dtype}: stays native")
    spec = _spec(mod, x)
    passes = ["forward"]
    if x_grad:
        passes.append("input_grad")
    if mod.weight.requires_grad:
        passes.append("weight_grad")
    p = plan_for_spec(spec, reuse=True, native=True)
    k = constants()
    native = sum(torch_cost_of(spec, q, k) for q in passes)
    ours = sum(p.choice(q).seconds for q in passes)
    predicted = native / ours
    labels = {q: p.choice(q).route.label() for q in PASSES}
    measured = _measure(mod, tuple(x.shape), x.dtype, x_grad) if measure else None
    ratio = measured if measured is not None else predicted
    converted = ratio >= min_speedup and any(p.choice(q).route.base != "torch" for q in passes)
    how = "measured" if measure else "predicted"
    reason = f"{how} {ratio:.2f}x" + ("" if converted else f" < {min_speedup}")
    return LayerReport(name, describe_spec(spec), converted, reason, labels, predicted, measured)


def _measure(mod: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, x_grad: bool) -> float:
    """Measured speedup of the converted layer over the native one (one training step)."""
    native = copy.deepcopy(mod)
    ours = adopt(copy.deepcopy(mod))
    x = torch.randn(shape, dtype=dtype).requires_grad_(x_grad)
    g = None

    def step(m: nn.Module) -> None:
        nonlocal g
        y = m(x)
        if g is None:
            g = torch.randn_like(y)
        y.backward(g)
        m.zero_grad(set_to_none=True)
        x.grad = None

    t_native, t_ours = best_of_rounds([lambda: step(native), lambda: step(ours)], 3)
    return float(t_native / t_ours) if t_ours > 0 else float(np.inf)
