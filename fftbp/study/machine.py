"""Describe the machine a benchmark ran on (cores, BLAS, FFTW threading, versions)."""

from __future__ import annotations

import os
import platform
from typing import Any


def describe() -> dict[str, Any]:
    import numpy as np
    import pyfftw
    import scipy
    from threadpoolctl import threadpool_info

    import fftbp
    from fftbp.planning.store import cpu_model

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pyfftw": pyfftw.__version__,
        "fftbp": fftbp.__version__,
        "fftbp_threads": fftbp.get_num_threads(),
        "fftw_scheme": "single-threaded FFTW plans inside fftbp's worker threads",
        "fftw_effort": fftbp.get_fftw_effort(),
        "blas": [
            {k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for d in threadpool_info()
            if d.get("user_api") == "blas"
        ],
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info
