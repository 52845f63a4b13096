import os
import tempfile

import numpy as np
import pytest

# measured plans and wisdom go to a throwaway cache directory, never the user's
os.environ["FFTBP_CACHE_DIR"] = tempfile.mkdtemp(prefix="fftbp-tests-")
# torch.compile's on-disk caches keep the autograd formulas that were traced: a run must see
# the operators' current ones, never graphs cached by an earlier version of the code
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fftbp-tests-inductor-")

import fftbp

# FFTW_MEASURE plans cost 0.1-1 s each; the numerics do not depend on the planner effort, so the
# suite plans with FFTW_ESTIMATE (FFTW_MEASURE: tests/test_execution.py, test_measure_effort_...).
fftbp.set_fftw_effort("FFTW_ESTIMATE")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
