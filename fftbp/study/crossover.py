"""``fftbp crossover``: from which kernel size on does FFT win on this machine, per pass?

For each kernel size of the sweep, every method computes each pass on the same operands: fftbp
``direct``, ``fft``, ``fft_tiled`` (where the map is larger than a tile) and ``auto`` (the
planner's choice), PyTorch (``conv*d`` / ``torch.nn.grad.conv*d_input`` / ``conv*d_weight``) if
installed, and ``scipy.signal.fftconvolve`` / ``oaconvolve`` for the forward pass of dense
layers (channels summed after a broadcast convolution). Times are the best of three rounds in
which the methods alternate, after one warm-up call each. The crossover of a pass is the
smallest kernel from which fftbp's best FFT route beats the other method at every larger
kernel of the sweep.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import fftbp
from fftbp._params import PASSES, ConvSpec
from fftbp.engine.measure import best_of_rounds

__all__ = ["Sweep", "crossovers", "run", "write"]


@dataclass
class Sweep:
    """What to sweep: one layer shape, a list of kernel sizes ('same' padding, stride 1)."""

    kernels: tuple[int, ...] = (3, 5, 7, 11, 15, 21, 31)
    size: int = 64
    batch: int = 4
    channels: int = 16
    groups: int = 1
    dim: int = 2
    dtype: str = "float32"
    torch: bool = True
    scipy: bool = True
    rows: list[dict[str, Any]] = field(default_factory=list)


def _fftbp_methods(spec: ConvSpec) -> dict[str, str]:
    methods = {"direct": "direct", "fft": "fft", "auto": "auto"}
    if any(r.algorithm == "fft_tiled" for r in fftbp.planning.candidate_routes(spec)):
        methods["fft_tiled"] = "fft_tiled"
    return methods


def _calls(sw: Sweep, k: int, ops: dict[str, np.ndarray]) -> dict[str, dict[str, Callable]]:
    """method -> pass -> zero-argument call."""
    x, w, g = ops["x"], ops["w"], ops["g"]
    kw = dict(padding="same", groups=sw.groups)
    spec = ConvSpec.from_shapes(x.shape, w.shape, padding="same", groups=sw.groups, dtype=x.dtype)
    out: dict[str, dict[str, Callable]] = {}
    for name, m in _fftbp_methods(spec).items():
        out[name] = {
            "forward": lambda m=m: fftbp.conv(x, w, **kw, method=m),
            "input_grad": lambda m=m: fftbp.conv_input_grad(x.shape, w, g, **kw, method=m),
            "weight_grad": lambda m=m: fftbp.conv_weight_grad(x, w.shape, g, **kw, method=m),
        }
    if sw.torch:
        try:
            import torch
        except ImportError:
            sw.torch = False
        else:
            conv = getattr(torch.nn.functional, f"conv{sw.dim}d")
            gi = getattr(torch.nn.grad, f"conv{sw.dim}d_input")
            gw = getattr(torch.nn.grad, f"conv{sw.dim}d_weight")
            tx, tw, tg = (torch.from_numpy(a) for a in (x, w, g))
            pad = (k - 1) // 2
            out["torch"] = {
                "forward": lambda: conv(tx, tw, padding="same", groups=sw.groups),
                "input_grad": lambda: gi(x.shape, tw, tg, padding=pad, groups=sw.groups),
                "weight_grad": lambda: gw(tx, w.shape, tg, padding=pad, groups=sw.groups),
            }
    if sw.scipy and sw.groups == 1 and k % 2 == 1:
        from scipy import signal

        axes = tuple(range(3, 3 + sw.dim))
        wf = w[(slice(None), slice(None), *(slice(None, None, -1),) * sw.dim)]
        for name, fn in (
            ("scipy_fftconvolve", signal.fftconvolve),
            ("scipy_oaconvolve", signal.oaconvolve),
        ):
            out[name] = {
                "forward": lambda fn=fn: fn(x[:, None], wf[None], mode="same", axes=axes).sum(2)
            }
    return out


def run(sw: Sweep, progress: bool = True) -> Sweep:
    """Time every method and pass for every kernel size; fills ``sw.rows``."""
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(sw.kernels), desc="crossover", unit="kernel", leave=False)
        except ImportError:
            bar = None
    rng = np.random.default_rng(0)
    dt = np.dtype(sw.dtype)
    for k in sw.kernels:
        shape = (sw.batch, sw.channels, *(sw.size,) * sw.dim)
        wshape = (sw.channels, sw.channels // sw.groups, *(k,) * sw.dim)
        spec = ConvSpec.from_shapes(shape, wshape, padding="same", groups=sw.groups, dtype=dt)
        ops = {
            "x": rng.standard_normal(shape).astype(dt),
            "w": rng.standard_normal(wshape).astype(dt),
            "g": rng.standard_normal(spec.output_shape).astype(dt),
        }
        calls = _calls(sw, k, ops)
        plan = fftbp.plan(shape, wshape, padding="same", groups=sw.groups, dtype=sw.dtype)
        for pass_ in PASSES:
            per = {m: c[pass_] for m, c in calls.items() if pass_ in c}
            for m, t in zip(per, best_of_rounds(list(per.values()))):
                sw.rows.append(
                    dict(
                        kernel=k,
                        method=m,
                        pass_=pass_,
                        ms=t * 1e3,
                        auto_route=plan.choice(pass_).route.label() if m == "auto" else "",
                    )
                )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return sw


def _table(sw: Sweep) -> dict[str, dict[int, dict[str, float]]]:
    t: dict[str, dict[int, dict[str, float]]] = {p: {} for p in PASSES}
    for r in sw.rows:
        t[r["pass_"]].setdefault(r["kernel"], {})[r["method"]] = r["ms"]
    return t


def crossovers(sw: Sweep) -> dict[str, dict[str, int | None]]:
    """pass -> other method -> smallest kernel from which fftbp's best FFT route wins at every
    larger kernel of the sweep (None: it never does)."""
    out: dict[str, dict[str, int | None]] = {}
    for pass_, by_k in _table(sw).items():
        ks = sorted(by_k)
        others = sorted({m for k in ks for m in by_k[k]} - {"fft", "fft_tiled", "auto"})
        out[pass_] = {}
        for other in others:
            wins = [
                min(by_k[k].get("fft", math.inf), by_k[k].get("fft_tiled", math.inf))
                < by_k[k].get(other, math.inf)
                for k in ks
            ]
            cross = None
            for i in range(len(ks) - 1, -1, -1):
                if not wins[i]:
                    break
                cross = ks[i]
            out[pass_][other] = cross
    return out


def format_table(sw: Sweep) -> str:
    t = _table(sw)
    methods = sorted({r["method"] for r in sw.rows}, key=lambda m: (m != "direct", m))
    lines = []
    for pass_ in PASSES:
        cols = [m for m in methods if any(m in v for v in t[pass_].values())]
        lines.append(f"{pass_} (ms)")
        lines.append("  k " + "".join(f"{m:>19}" for m in cols))
        for k in sorted(t[pass_]):
            cells = "".join(
                f"{t[pass_][k][m]:19.2f}" if m in t[pass_][k] else f"{'-':>19}" for m in cols
            )
            lines.append(f"{k:3d} {cells}")
        cross = crossovers(sw)[pass_]
        lines.append(
            "  crossover (FFT faster from k on): "
            + ", ".join(f"vs {m}: {'never' if v is None else v}" for m, v in cross.items())
        )
        lines.append("")
    return "\n".join(lines)


def write(sw: Sweep, out: Path, machine: dict[str, Any], plot: bool = True) -> list[Path]:
    """CSV + JSON (with machine info) and, if matplotlib is installed, a PNG plot."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    csv_path = out / "crossover.csv"
    with csv_path.open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=["kernel", "method", "pass", "ms", "auto_route"])
        wr.writeheader()
        for r in sw.rows:
            wr.writerow({**{k: v for k, v in r.items() if k != "pass_"}, "pass": r["pass_"]})
    written.append(csv_path)
    params = {k: v for k, v in sw.__dict__.items() if k != "rows"}
    doc = {"machine": machine, "sweep": params, "crossover": crossovers(sw), "rows": sw.rows}
    json_path = out / "crossover.json"
    json_path.write_text(json.dumps(doc, indent=1))
    written.append(json_path)
    if plot:
        written.append(_plot(sw, out / "crossover.png"))
    return written


def _plot(sw: Sweep, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = _table(sw)
    cross = crossovers(sw)
    every = sorted({r["method"] for r in sw.rows})
    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(every)}  # one color per method
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), sharey=True)
    for ax, pass_ in zip(axes, PASSES):
        for m in every:
            ks = [k for k in sorted(t[pass_]) if m in t[pass_][k]]
            if ks:
                ax.plot(ks, [t[pass_][k][m] for k in ks], marker="o", label=m, color=colors[m])
        marks = []
        for other, ls in (("direct", "--"), ("torch", ":")):
            c = cross[pass_].get(other)
            if c is not None:
                ax.axvline(c, color=colors.get(other, "gray"), linestyle=ls, alpha=0.8)
                marks.append(f"FFT beats {other} from k={c}")
        ax.set_yscale("log")
        ax.set_xlabel("kernel size k (k x k, 'same' padding)")
        ax.set_title(pass_.replace("_", " ") + ("\n" + "; ".join(marks) if marks else ""))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time per call (ms, log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.subplots_adjust(bottom=0.22)
    fig.suptitle(
        f"fftbp crossover: {sw.dim}D N={sw.batch} C=F={sw.channels} {sw.size}^{sw.dim} "
        f"groups={sw.groups} {sw.dtype}"
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
