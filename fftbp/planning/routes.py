"""Routes: one way to compute a pass (base kernel + optional reductions), as data.

A :class:`Route` names an algorithm the planner can choose: the base kernel (``"fft"``: whole
maps, ``"direct"``: shifted GEMMs / im2col + GEMM, ``"torch"``: PyTorch's native convolution,
which :mod:`fftbp.torch` registers with the engine), optionally after a stride or dilation
decomposition (``prep``) and overlap-save tiling (``tile``, FFT only). Routes are small,
hashable and serialisable, so measured decisions can be stored; :mod:`fftbp.engine` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fftbp._params import ConvSpec
from fftbp.planning.reductions import DilationPhases, Polyphase, Reduction, Tiles

__all__ = ["BASES", "PREPS", "Route", "applicable_preps"]

PREPS = ("", "polyphase", "dilation")
BASES = ("fft", "direct", "torch")


@dataclass(frozen=True)
class Route:
    """``base`` kernel, after the ``prep`` decomposition and ``tile`` tiling (FFT only)."""

    base: str
    prep: str = ""
    tile: tuple[int, ...] | None = None
    #: ``"float64"``: a float32 layer computed in float64 (cast in and out), for ``tol=``
    precision: str = ""

    @property
    def algorithm(self) -> str:
        if self.base in ("direct", "torch"):
            return self.base
        return "fft_tiled" if self.tile else "fft"

    def label(self) -> str:
        name = self.algorithm
        if self.prep:
            name += f"+{self.prep}"
        if self.precision:
            name += "+f64"
        return name

    def reductions(self, spec: ConvSpec) -> list[Reduction]:
        """The chain of reductions, outermost first (the last one's ``inner`` is computed)."""
        return list(_chain(self, spec))

    def inner(self, spec: ConvSpec) -> ConvSpec:
        chain = self.reductions(spec)
        return chain[-1].inner if chain else spec

    def fits(self, spec: ConvSpec) -> bool:
        """Whether this route applies to ``spec`` (a stored decision is checked with this):
        its decomposition applies, and its tile has one size per axis, each at most the
        output (of the decomposed layer)."""
        if self.prep not in applicable_preps(spec):
            return False
        if self.tile is None:
            return True
        if self.base != "fft":
            return False
        inner = _chain(Route(self.base, self.prep), spec)
        outer = inner[-1].inner if inner else spec
        return len(self.tile) == spec.nd and all(
            1 <= t <= o for t, o in zip(self.tile, outer.out_size)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "prep": self.prep,
            "tile": list(self.tile) if self.tile else None,
            "precision": self.precision,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Route:
        base, prep, tile = d["base"], d.get("prep", ""), d.get("tile")
        precision = d.get("precision", "")
        if base not in BASES or prep not in PREPS or precision not in ("", "float64"):
            raise ValueError(f"route: unknown base {base!r}, prep {prep!r} or {precision!r}")
        if tile is not None and (
            not isinstance(tile, list) or not all(isinstance(t, int) and t > 0 for t in tile)
        ):
            raise ValueError(f"route: bad tile {tile!r}")
        return cls(base, prep, tuple(tile) if tile else None, precision)


@lru_cache(maxsize=2048)
def _chain(route: Route, spec: ConvSpec) -> tuple[Reduction, ...]:
    chain: list[Reduction] = []
    if route.prep == "polyphase":
        chain.append(Polyphase(spec))
    elif route.prep == "dilation":
        chain.append(DilationPhases(spec))
    if route.tile is not None:
        chain.append(Tiles(chain[-1].inner if chain else spec, route.tile))
    return tuple(chain)


def applicable_preps(spec: ConvSpec) -> list[str]:
    """Decompositions that apply to ``spec``: polyphase needs stride > 1 and dilation 1;
    dilation phases need dilation > 1 and stride 1."""
    out = [""]
    if any(s > 1 for s in spec.stride) and all(d == 1 for d in spec.dilation):
        out.append("polyphase")
    if any(d > 1 for d in spec.dilation) and all(s == 1 for s in spec.stride):
        out.append("dilation")
    return out
