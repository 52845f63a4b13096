"""The machine description recorded with every result (kept in the package: ``fftbp.study``)."""

from fftbp.study.machine import describe

__all__ = ["describe"]
