"""The planner: per layer and per pass, choose between direct, whole-map FFT and tiled FFT."""

from fftbp.planning.plan import METHOD_NAMES, Plan, candidate_routes, plan, resolve
from fftbp.planning.routes import Route
from fftbp.planning.store import load_wisdom, save_wisdom

__all__ = [
    "METHOD_NAMES",
    "Plan",
    "Route",
    "candidate_routes",
    "load_wisdom",
    "plan",
    "resolve",
    "save_wisdom",
]
