"""Routes: one way to compute a pass (base kernel + optional reductions), and running them.

A :class:`Route` names an algorithm the planner can choose: the base kernel (``"fft"``: whole
maps, ``"direct"``: im2col + GEMM, ``"torch"``: PyTorch's native convolution, a candidate only
when :mod:`fftbp.torch` plans), optionally after a stride or dilation decomposition
(``prep``) and overlap-save tiling (``tile``, FFT only). Routes are small, hashable and
serialisable, so measured decisions can be stored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from fftbp._params import ConvSpec
from fftbp.kernels import direct as _direct
from fftbp.kernels import fft as _fft
from fftbp.kernels import fft_depthwise as _fdw
from fftbp.planning.reductions import DilationPhases, Polyphase, Reduction, Tiles

__all__ = ["ALGORITHMS", "Route", "run_forward", "run_input_grad", "run_weight_grad"]

#: Names accepted by ``method=`` to force an algorithm (``"auto"`` plans).
ALGORITHMS = ("fft", "fft_tiled", "direct")
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


# -- base kernels on one (inner) layer -------------------------------------------------------
def _native() -> Any:
    """PyTorch's convolution on numpy operands (imported only when a plan chose it)."""
    from fftbp.torch import _native

    return _native


def base_forward(base: str, spec: ConvSpec, x: np.ndarray, w: np.ndarray, b: Any) -> np.ndarray:
    if base == "fft":
        lay = _fft.layout(spec)
        if spec.is_depthwise:
            return _fdw.forward(lay, x, _fdw.weight_spectrum(lay, w), b, keep_xf=False)[0]
        return _fft.forward(lay, x, w, b)
    if base == "torch":
        return _native().forward(spec, x, w, b)
    return _direct.forward(spec, x, w, b)


def base_input_grad(base: str, spec: ConvSpec, w: np.ndarray, g: np.ndarray) -> np.ndarray:
    if base == "fft":
        lay = _fft.layout(spec)
        if spec.is_depthwise:
            return _fdw.backward(lay, g, _fdw.weight_spectrum(lay, w), need_dw=False)[0]
        return _fft.input_grad(lay, w, g)
    if base == "torch":
        return _native().input_grad(spec, w, g)
    return _direct.input_grad(spec, w, g)


def base_weight_grad(base: str, spec: ConvSpec, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    if base == "fft":
        lay = _fft.layout(spec)
        if spec.is_depthwise:
            return _fdw.backward(lay, g, None, x=x, need_dx=False)[1]
        return _fft.weight_grad(lay, x, g)
    if base == "torch":
        return _native().weight_grad(spec, x, g)
    return _direct.weight_grad(spec, x, g)


# -- a whole route ----------------------------------------------------------------------------
def _apply_in(chain: list[Reduction], attr: str, a: np.ndarray) -> np.ndarray:
    for r in chain:
        a = getattr(r, attr)(a)
    return a


def _apply_out(chain: list[Reduction], attr: str, a: np.ndarray) -> np.ndarray:
    for r in reversed(chain):
        a = getattr(r, attr)(a)
    return a


def _promoted(route: Route, spec: ConvSpec) -> tuple[Route, ConvSpec] | None:
    """For a float64-precision route on a float32 layer: the plain route and float64 layer."""
    if not route.precision or spec.dtype == np.float64:
        return None
    return replace(route, precision=""), replace(spec, dtype=np.dtype(np.float64))


def _f64(*arrays: np.ndarray | None) -> list[np.ndarray | None]:
    return [None if a is None else a.astype(np.float64) for a in arrays]


def run_forward(
    route: Route, spec: ConvSpec, x: np.ndarray, w: np.ndarray, b: np.ndarray | None
) -> np.ndarray:
    if (p := _promoted(route, spec)) is not None:
        return run_forward(p[0], p[1], *_f64(x, w, b)).astype(spec.dtype)
    chain = route.reductions(spec)
    inner = chain[-1].inner if chain else spec
    xi, wi = _apply_in(chain, "x_in", x), _apply_in(chain, "w_in", w)
    return _apply_out(chain, "y_out", base_forward(route.base, inner, xi, wi, b))


def run_input_grad(route: Route, spec: ConvSpec, w: np.ndarray, g: np.ndarray) -> np.ndarray:
    if (p := _promoted(route, spec)) is not None:
        return run_input_grad(p[0], p[1], *_f64(w, g)).astype(spec.dtype)
    chain = route.reductions(spec)
    inner = chain[-1].inner if chain else spec
    wi, gi = _apply_in(chain, "w_in", w), _apply_in(chain, "g_in", g)
    return _apply_out(chain, "dx_out", base_input_grad(route.base, inner, wi, gi))


def run_weight_grad(route: Route, spec: ConvSpec, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    if (p := _promoted(route, spec)) is not None:
        return run_weight_grad(p[0], p[1], *_f64(x, g)).astype(spec.dtype)
    chain = route.reductions(spec)
    inner = chain[-1].inner if chain else spec
    xi, gi = _apply_in(chain, "x_in", x), _apply_in(chain, "g_in", g)
    return _apply_out(chain, "dw_out", base_weight_grad(route.base, inner, xi, gi))
