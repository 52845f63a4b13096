"""Which of fftbp's PyTorch operators ran (a TorchDispatchMode sees every dispatcher call)."""

from __future__ import annotations

from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode


class OpLog(TorchDispatchMode):
    """``with OpLog() as log: ...``; ``log.calls`` lists the fftbp operators called, in order
    (``"conv_forward"``, ``"conv_input_grad"``, ``"conv_weight_grad"``)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.namespace == "fftbp":
            self.calls.append(func._opname)
        return func(*args, **(kwargs or {}))
