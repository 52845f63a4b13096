"""Choosing an algorithm per layer (a first, documented rule; the full planner comes later)."""

from fftbp.planning.simple import METHODS, choose_method, estimate_costs

__all__ = ["METHODS", "choose_method", "estimate_costs"]
