"""fftbp: convolution layers (forward, input gradient, weight gradient) in the frequency domain."""

from fftbp._config import (
    WorkspaceWarning,
    get_fftw_effort,
    get_num_threads,
    get_workspace_limit,
    set_fftw_effort,
    set_num_threads,
    set_workspace_limit,
)
from fftbp.api import conv, conv_input_grad, conv_weight_grad, plan
from fftbp.layer import Conv, Grads
from fftbp.planning import Plan, load_wisdom, save_wisdom

__version__ = "0.1.0"

__all__ = [
    "Conv",
    "Grads",
    "Plan",
    "WorkspaceWarning",
    "conv",
    "conv_input_grad",
    "conv_weight_grad",
    "get_fftw_effort",
    "get_num_threads",
    "get_workspace_limit",
    "load_wisdom",
    "plan",
    "save_wisdom",
    "set_fftw_effort",
    "set_num_threads",
    "set_workspace_limit",
]
