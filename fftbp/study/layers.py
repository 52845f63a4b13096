"""``fftbp layers``: named real-world layers, forward + backward, fftbp against PyTorch.

Each layer is one training step (forward, input gradient, weight gradient) of a
:class:`fftbp.Conv` with ``method="auto"`` (the planner's choice per pass, spectra reused
across passes) and of ``torch.nn.functional.conv*d`` with autograd, in the same process. The
methods alternate; each sample follows a 0.25 s pause and untimed warm-up calls for at least
0.1 s (:func:`sample`); a method whose first call exceeds ``max_call`` seconds keeps that call
as its only sample. Reported:
median times and the median of per-round ratios.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import fftbp
from fftbp._config import median_time
from fftbp._params import PASSES

__all__ = ["LAYERS", "fftbp_step", "run", "sample", "torch_step", "warm_up", "write"]

#: name -> (input shape, weight shape, stride, padding, groups, where it comes from)
LAYERS: dict[str, tuple[tuple[int, ...], tuple[int, ...], int, Any, int, str]] = {
    "resnet_stem_7x7": ((8, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1, "ResNet stem, stride 2"),
    "convnext_dw_7x7": ((8, 96, 56, 56), (96, 1, 7, 7), 1, 3, 96, "ConvNeXt-T stage 1"),
    "replknet_dw_31x31": ((16, 128, 56, 56), (128, 1, 31, 31), 1, 15, 128, "RepLKNet-31B"),
    "slak_dw_51x51": ((8, 128, 56, 56), (128, 1, 51, 51), 1, 25, 128, "SLaK-T stage 1"),
    "audio_1d_k1024": ((4, 16, 16384), (16, 16, 1024), 1, "same", 1, "1D audio, 1 s at 16k"),
    "medical_3d_k9": ((1, 8, 64, 64, 64), (8, 8, 9, 9, 9), 1, 4, 1, "3D volume 64^3"),
}


def fftbp_step(
    x: np.ndarray,
    w: np.ndarray,
    stride: Any = 1,
    pad: Any = 0,
    groups: int = 1,
    method: Any = "auto",
) -> Callable[[], None]:
    """One training step (forward + both gradients) of an :class:`fftbp.Conv`. Each step
    changes ``w`` in place, as a training step does, so the weight spectrum is recomputed."""
    layer = fftbp.Conv(w, stride=stride, padding=pad, groups=groups, method=method)
    g = np.ones(layer.forward(x).shape, dtype=x.dtype)

    def step() -> None:
        w[(0,) * w.ndim] += 1e-3
        layer.forward(x)
        layer.backward(g)

    return step


def torch_step(
    x: np.ndarray,
    w: np.ndarray,
    stride: Any = 1,
    pad: Any = 0,
    groups: int = 1,
    memory_format: str = "nchw",
) -> Callable[[], None]:
    """The same step with ``torch.nn.functional.conv*d`` and autograd, on copies of x and w
    (``memory_format="channels_last"`` for 2D layers in torch's channels-last layout)."""
    import torch

    conv = getattr(torch.nn.functional, f"conv{w.ndim - 2}d")
    tx = torch.from_numpy(x.copy())
    tw = torch.from_numpy(w.copy())
    if memory_format == "channels_last":
        tx = tx.contiguous(memory_format=torch.channels_last)
        tw = tw.contiguous(memory_format=torch.channels_last)
    tx.requires_grad_(True)
    tw.requires_grad_(True)

    def step() -> None:
        tx.grad = tw.grad = None
        with warnings.catch_warnings():  # torch notes that 'same' + an even kernel pads a copy
            warnings.filterwarnings("ignore", "Using padding='same'", UserWarning)
            y = conv(tx, tw, stride=stride, padding=pad, groups=groups)
        y.backward(torch.ones_like(y))

    return step


#: Untimed calls after the pause, at least this long in all: on the reference VM the second
#: core runs a multi-threaded step up to 1.8x slower for the first ~50 ms of work after 0.1 s or
#: more of idling (measured on long1d 4k: 12-15 ms for four steps, then 7.1-7.5 ms), and a
#: training loop runs its steps back to back.
WARM_UP_S = 0.1


def warm_up(fn: Callable[[], None]) -> None:
    """Untimed calls of ``fn`` for at least :data:`WARM_UP_S` (at least one)."""
    t0 = time.perf_counter()
    fn()
    while time.perf_counter() - t0 < WARM_UP_S:
        fn()


def sample(fn: Callable[[], None], reps: int = 1) -> float:
    """Pause 0.25 s (other methods' threads settle), :func:`warm_up`, then the median of
    ``reps`` timed calls."""
    time.sleep(0.25)
    warm_up(fn)
    return median_time(fn, reps, warm_up=False)


def run(
    names: list[str], rounds: int = 3, max_call: float = 20.0, torch: bool = True
) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(0)
    for name in names:
        xs, ws, stride, pad, groups, source = LAYERS[name]
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        methods = {"fftbp": fftbp_step(x, w.copy(), stride, pad, groups)}
        if torch:
            methods["torch"] = torch_step(x, w, stride, pad, groups)
        probe = {m: sample(fn) for m, fn in methods.items()}
        times = {m: [t] if t > max_call else [] for m, t in probe.items()}
        alternating = [m for m in methods if not times[m]]
        for r in range(rounds):
            order = alternating[r % len(alternating) :] + alternating[: r % len(alternating)]
            for m in order:
                times[m].append(sample(methods[m]))
        med = {m: statistics.median(v) for m, v in times.items()}
        ratio = None
        if "torch" in med:
            if len(times["torch"]) == len(times["fftbp"]):
                ratio = statistics.median(a / b for a, b in zip(times["torch"], times["fftbp"]))
            else:
                ratio = med["torch"] / med["fftbp"]
        spec_plan = fftbp.plan(xs, ws, stride=stride, padding=pad, groups=groups)
        rows.append(
            dict(
                layer=name,
                source=source,
                input=list(xs),
                weight=list(ws),
                stride=stride,
                padding=pad,
                groups=groups,
                fftbp_ms=med["fftbp"] * 1e3,
                torch_ms=med["torch"] * 1e3 if "torch" in med else None,
                torch_over_fftbp=ratio,
                routes={p: spec_plan.choice(p).route.label() for p in PASSES},
                samples={m: len(v) for m, v in times.items()},
            )
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'layer':<20} {'fftbp ms':>10} {'torch ms':>11} {'torch/fftbp':>12}  routes (fwd/dx/dw)"
    ]
    for r in rows:
        t = f"{r['torch_ms']:11.1f}" if r["torch_ms"] is not None else f"{'-':>11}"
        q = f"{r['torch_over_fftbp']:11.1f}x" if r["torch_over_fftbp"] else f"{'-':>12}"
        routes = "/".join(r["routes"].values())
        lines.append(f"{r['layer']:<20} {r['fftbp_ms']:10.1f} {t} {q}  {routes}")
    return "\n".join(lines)


def write(rows: list[dict[str, Any]], out: Path, machine: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    p_json = out / "layers.json"
    p_json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    p_csv = out / "layers.csv"
    keys = ["layer", "source", "fftbp_ms", "torch_ms", "torch_over_fftbp"]
    with p_csv.open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(rows)
    return [p_csv, p_json]
