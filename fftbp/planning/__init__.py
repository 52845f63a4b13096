"""The planner: per layer and per pass, choose between direct, whole-map FFT and tiled FFT.

Planning describes; it never runs a convolution (measure mode is :mod:`fftbp.engine.measure`).
"""

from fftbp.planning.candidates import candidate_routes
from fftbp.planning.decision import Choice, Plan
from fftbp.planning.planner import plan_for_spec, resolve
from fftbp.planning.routes import Route
from fftbp.planning.store import load_wisdom, save_wisdom

__all__ = [
    "Choice",
    "Plan",
    "Route",
    "candidate_routes",
    "load_wisdom",
    "plan_for_spec",
    "resolve",
    "save_wisdom",
]
