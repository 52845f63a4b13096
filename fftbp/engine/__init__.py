"""The execution engine: one executor for every pass of every route, and measure mode."""

from fftbp.engine.executor import Base, has_base, register_base, run_pass
from fftbp.engine.training import Residuals, WeightSpectra, backward_train, forward_train
from fftbp.kernels.layout import SpectrumPool

__all__ = [
    "Base",
    "Residuals",
    "SpectrumPool",
    "WeightSpectra",
    "backward_train",
    "forward_train",
    "has_base",
    "register_base",
    "run_pass",
]
