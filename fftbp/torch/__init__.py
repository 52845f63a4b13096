"""PyTorch integration: drop-in ``nn.Conv{1,2,3}d`` whose passes fftbp computes where it wins.

>>> from fftbp.torch import Conv2d, convert
>>> layer = Conv2d(128, 128, 31, padding=15, groups=128)     # same constructor as nn.Conv2d
>>> model, report = convert(model, example_input)           # or swap a whole model's layers
>>> print(report)

Every pass of a layer is planned (:func:`fftbp.plan`) with PyTorch's own convolution as one more
candidate, so a converted layer computes each pass by whichever of fftbp's algorithms and torch's
native kernel is fastest. The passes are PyTorch operators (``torch.ops.fftbp.conv_forward``,
``conv_input_grad``, ``conv_weight_grad``), differentiable through each other, so
``torch.compile``, ``torch.export`` and double backward work. Backward reuses the spectra
forward made and computes only the gradients autograd asks for. What is routed to torch's
native convolution unchanged: tensors not on the CPU and dtypes other than float32/float64
(half, bfloat16, complex).
Importing this module registers PyTorch's convolution with fftbp's engine as the route
``torch``.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "fftbp.torch needs PyTorch: pip install 'torch>=2.1' (CPU wheels: "
        "--index-url https://download.pytorch.org/whl/cpu)"
    ) from e

from fftbp.engine import Base, register_base
from fftbp.torch import _native
from fftbp.torch._convert import ConvertReport, LayerReport, convert
from fftbp.torch._modules import Conv1d, Conv2d, Conv3d, adopt

# PyTorch's convolution becomes a route the planner may choose (``Route("torch")``)
register_base("torch", Base(_native.forward, _native.input_grad, _native.weight_grad))

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvertReport", "LayerReport", "adopt", "convert"]
