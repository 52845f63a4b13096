"""Re-fit the estimate-mode cost model on the planner benchmark's timings.

``benchmarks/results/planner.json`` holds the time of every candidate route of 82 layers, per
pass, all measured in one run. This script

1. measures the calibrated constants with ``fftbp calibrate`` (median of ``--runs`` runs, not
   saved): rates of the kernels as they are now;
2. fits the constants no calibration measures (``tile_s``, ``map_s``: fixed costs per tile and
   per transformed map) by least squares on log(estimate / measured time) over every timed
   route, the calibrated ones held;
3. reports how often the estimate's choice is within 1.2x of the fastest timed route (and the
   worst ratio), with the shipped constants, the calibrated ones and the fitted ones, and for
   the fit also by two-fold cross-validation over layers (fitted on half the layers, judged on
   the other half), so that a fit that only memorises the sweep shows.

The ratios here are those of the sweep's own times (best of three rounds); the planner benchmark
re-times every miss side by side with the oracle, which is what its summary reports.

    python -m benchmarks.fit               # prints the fitted constants and the checks
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from benchmarks.planner import key, layers
from fftbp._params import PASSES, ConvSpec
from fftbp.planning.candidates import candidate_routes
from fftbp.planning.cost import Constants, estimate

#: the constants fitted here (log-scale search), the others come from calibration
FITTED = ("tile_s", "map_s")


def samples(path: Path) -> list[tuple[int, str, dict[str, tuple[Any, float]]]]:
    """(layer index, pass, {route key: (route, spec, measured seconds)}) per layer and pass."""
    rows = json.loads(path.read_text())["rows"]
    out = []
    for i, (kw, row) in enumerate(zip(layers(False), rows)):
        opts = {k: kw[k] for k in ("stride", "padding", "dilation", "groups")}
        spec = ConvSpec.from_shapes(kw["input_shape"], kw["weight_shape"], **opts)
        by_key = {key(r): r for r in candidate_routes(spec)}
        for p in PASSES:
            timed = {k: (by_key[k], spec, t / 1e3) for k, t in row["times_ms"][p].items()}
            out.append((i, p, timed))
    return out


def choices(data: list, k: Constants, keep: set[int] | None = None) -> list[float]:
    """Measured time of the estimate's choice over the fastest, per layer and pass."""
    ratios = []
    for i, p, timed in data:
        if keep is not None and i not in keep:
            continue
        est = {name: estimate(r, spec, p, k).seconds for name, (r, spec, _) in timed.items()}
        pick = min(est, key=est.get)
        best = min(t for _, _, t in timed.values())
        ratios.append(timed[pick][2] / best)
    return ratios


def loss(data: list, k: Constants, keep: set[int] | None = None) -> float:
    err = []
    for i, p, timed in data:
        if keep is not None and i not in keep:
            continue
        for r, spec, t in timed.values():
            err.append(math.log(estimate(r, spec, p, k).seconds / t) ** 2)
    return statistics.fmean(err)


def fit(data: list, base: Constants, keep: set[int] | None = None) -> Constants:
    x0 = np.log([getattr(base, name) for name in FITTED])

    def f(x: np.ndarray) -> float:
        return loss(data, replace(base, **dict(zip(FITTED, np.exp(x)))), keep)

    res = minimize(f, x0, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-6})
    return replace(base, **dict(zip(FITTED, np.exp(res.x))))


def report(name: str, ratios: list[float]) -> str:
    within = sum(r <= 1.2 for r in ratios) / len(ratios)
    return f"{name}: within 1.2x {within:.1%}, worst {max(ratios):.2f}x ({len(ratios)} choices)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timings", type=Path, default=Path("benchmarks/results/planner.json"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    from fftbp.engine.calibrate import calibrate

    data = samples(args.timings)
    shipped = Constants()
    runs = [calibrate(save=False).to_json() for _ in range(args.runs)]
    measured = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    calibrated = Constants(**measured)
    fitted = fit(data, calibrated)
    print(report("shipped constants", choices(data, shipped)))
    print(report("calibrated now", choices(data, calibrated)))
    print(report("calibrated + fitted", choices(data, fitted)))
    idx = sorted({i for i, _, _ in data})
    halves = [set(idx[0::2]), set(idx[1::2])]
    held = []
    for a, b in (halves, halves[::-1]):
        held += choices(data, fit(data, calibrated, a), b)
    print(report("two-fold cross-validated fit", held))
    print(
        "log-error (rms):",
        {
            "shipped": round(math.sqrt(loss(data, shipped)), 3),
            "calibrated": round(math.sqrt(loss(data, calibrated)), 3),
            "fitted": round(math.sqrt(loss(data, fitted)), 3),
        },
    )
    print(json.dumps({k: float(f"{v:.3g}") for k, v in fitted.to_json().items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
