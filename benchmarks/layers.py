"""Forward + input gradient + weight gradient: fftbp FFT, fftbp direct and PyTorch, side by side.

Protocol (../shared/CALIBRATION.md): methods alternate within one process, their order rotates
each round, and every timed sample follows a 0.25 s pause and untimed warm-up calls for at least
0.1 s (methods under a second take the median of three calls as the round's sample). Reported:
median times and the median of per-round ratios. Very slow methods get fewer rounds (a per-layer
time budget) and are skipped above --max-call seconds, predicted from the previous kernel size
of the same suite (times grow with the kernel); a method whose first call exceeds --max-call keeps
that call as its only sample. torch is timed in its default (NCHW) and
channels_last formats and the faster counts; channels_last is dropped for the rest of a suite
once it is 3x slower than NCHW.

    python -m benchmarks.layers               # full suite, writes benchmarks/results/layers.*
    python -m benchmarks.layers --quick       # smaller suite for a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import fftbp
from benchmarks.machine import describe
from fftbp._config import profiling
from fftbp.study.layers import fftbp_step, sample, torch_step

SUITES: dict[str, dict[str, Any]] = {
    "dense": dict(n=8, c=32, f=32, size=64, groups=1, ks=[3, 7, 11, 15, 21, 31]),
    "large": dict(n=1, c=16, f=16, size=256, groups=1, ks=[3, 15, 31, 51]),
    "depthwise": dict(n=16, c=128, f=128, size=56, groups=128, ks=[3, 7, 13, 31, 51]),
}
QUICK = {
    "dense": dict(n=8, c=32, f=32, size=64, groups=1, ks=[3, 31]),
    "depthwise": dict(n=16, c=128, f=128, size=56, groups=128, ks=[31]),
}


def run_layer(
    suite: str,
    p: dict[str, Any],
    k: int,
    args: argparse.Namespace,
    predicted: dict[str, float],
    use_cl: bool,
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((p["n"], p["c"], p["size"], p["size"])).astype(np.float32)
    w = rng.standard_normal((p["f"], p["c"] // p["groups"], k, k)).astype(np.float32)
    pad = k // 2
    methods: dict[str, Callable] = {"fft": fftbp_step(x, w.copy(), 1, pad, p["groups"], "fft")}
    skipped = []
    if predicted.get("direct", 0) <= args.max_call:
        methods["direct"] = fftbp_step(x, w.copy(), 1, pad, p["groups"], "direct")
    else:
        skipped.append("direct")
    if not args.no_torch:
        formats = [f"torch_{f}" for f in (("nchw", "channels_last") if use_cl else ("nchw",))]
        # the ratio needs torch: keep the format predicted fastest even above --max-call
        keep = min(formats, key=lambda m: predicted.get(m, 0))
        for name in formats:
            if name == keep or predicted.get(name, 0) <= args.max_call:
                fmt = name.removeprefix("torch_")
                methods[name] = torch_step(x, w, 1, pad, p["groups"], fmt)
            else:
                skipped.append(name)
    # one probe call each (also warms plans and caches), then rounds within a time budget; a
    # method whose probe alone exceeds --max-call keeps that one call as its only sample
    probe = {m: sample(fn) for m, fn in methods.items()}
    times: dict[str, list[float]] = {m: [] for m in methods}
    single = [m for m, t in probe.items() if t > args.max_call and m != "fft"]
    for m in single:
        times[m] = [probe[m]]
    names = [m for m in methods if m not in single]
    per_round = sum(probe[m] for m in names) * 2 + 0.25 * len(names) * 2
    rounds = int(max(1, min(args.rounds, args.budget // max(per_round, 1e-9))))
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for m in order:  # fast methods: the median of three calls per round
            times[m].append(sample(methods[m], 3 if probe[m] < 1.0 else 1))
    # time shares of the FFT method: the median share over five profiled calls
    fft_fn = methods["fft"]
    fft_fn()
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        with profiling() as prof:
            fft_fn()
        cpu = (time.perf_counter() - t0) * fftbp.get_num_threads()
        share = {key: prof[key] / cpu for key in ("transforms", "products", "copies")}
        share["other"] = max(0.0, 1.0 - share["transforms"] - share["products"])
        samples.append(share)
    shares = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    med = {m: statistics.median(v) for m, v in times.items()}
    torch_names = [m for m in med if m.startswith("torch")]
    best_torch = min(torch_names, key=lambda m: med[m]) if torch_names else None
    ratios = {}
    for key, other in (("torch/fft", best_torch), ("direct/fft", "direct")):
        if other in med:  # per-round ratios; a single-call method against fft's median
            if other in names:
                ratios[key] = statistics.median(a / b for a, b in zip(times[other], times["fft"]))
            else:
                ratios[key] = med[other] / med["fft"]
    return dict(
        suite=suite,
        k=k,
        n=p["n"],
        c=p["c"],
        f=p["f"],
        size=p["size"],
        groups=p["groups"],
        rounds=rounds,
        single_call=single,
        median_ms={m: v * 1e3 for m, v in med.items()},
        best_torch=best_torch,
        ratios=ratios,
        fft_shares=shares,
        skipped=skipped,
        probe_ms={m: v * 1e3 for m, v in probe.items()},
    )


def fmt_row(r: dict[str, Any]) -> str:
    m = r["median_ms"]

    def cell(key: str) -> str:
        return f"{m[key]:9.1f}" if key in m else f"{'skip':>9}"

    tr = r["ratios"].get("torch/fft")
    dr = r["ratios"].get("direct/fft")
    s = r["fft_shares"]
    return (
        f"| {r['suite']:9} | {r['k']:3d} | {cell('fft')} | {cell('direct')} | "
        f"{cell('torch_nchw')} | {cell('torch_channels_last')} | "
        f"{(f'{tr:7.1f}x' if tr else '    -   ')} | {(f'{dr:7.1f}x' if dr else '    -   ')} | "
        f"{s['transforms']:5.0%} | {s['products']:5.0%} | {s['other']:5.0%} "
        f"({s.get('copies', 0):4.0%}) | {r['rounds']}{'*' if r.get('single_call') else ''} |"
    )


HEADER = (
    "| suite     |   k | fft ms    | direct ms | torch ms  | torch CL  | torch/fft | "
    "direct/fft | transforms | products | other (copies) | rounds |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def write(args: argparse.Namespace, machine: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    name = "layers_quick" if args.quick else "layers"
    (args.out / f"{name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    lines = [
        f"# {name}: forward + both gradients, float32, ms (median)",
        "",
        "machine: `" + json.dumps(machine) + "`",
        "",
        HEADER,
    ]
    order = list(SUITES)
    lines += [fmt_row(r) for r in sorted(rows, key=lambda r: (order.index(r["suite"]), r["k"]))]
    lines += [
        "",
        "Shares are of fftbp FFT's CPU time (wall x threads), the median over five profiled calls:",
        "FFTW executes, channel products, and everything else (including idle workers), of which",
        "`copies` is the padding fill and read-out copies. `*`: some method (see the JSON's",
        "single_call) took longer than --max-call on its probe and was timed by that one call.",
    ]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="two dense layers and one depthwise; torch in its default (NCHW) format only",
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per layer for rounds")
    ap.add_argument(
        "--max-call",
        type=float,
        default=12.0,
        help="skip a method whose predicted call time exceeds this (s)",
    )
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument(
        "--suites",
        default=None,
        help="comma-separated suites to (re)run; their rows replace those in the results file",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    if not args.no_torch:
        import torch

        torch.set_num_threads(fftbp.get_num_threads())
    machine = describe()
    print("machine:", json.dumps(machine))
    print(HEADER)
    rows: list[dict[str, Any]] = []
    suites = QUICK if args.quick else SUITES
    if args.suites:
        wanted = args.suites.split(",")
        unknown = [s for s in wanted if s not in suites]
        if unknown:
            ap.error(f"--suites: unknown suite(s) {unknown}; choose from {list(suites)}")
        previous = args.out / f"{'layers_quick' if args.quick else 'layers'}.json"
        if previous.exists():
            rows = [r for r in json.loads(previous.read_text())["rows"] if r["suite"] not in wanted]
        suites = {s: suites[s] for s in wanted}
    for suite, p in suites.items():
        last: dict[str, float] = {}
        use_cl = not args.quick  # quick: torch in its default format only (CL backward is slow)
        prev_k = None
        for k in p["ks"]:
            # predicted call time: the previous kernel's time scaled by the kernel area
            predicted = {m: v * (k / prev_k) ** 2 for m, v in last.items()} if prev_k else {}
            r = run_layer(suite, p, k, args, predicted, use_cl)
            rows.append(r)
            print(fmt_row(r), flush=True)
            write(args, machine, rows)  # after every row: a long run stopped early keeps its data
            prev_k = k
            last = {m: v / 1e3 for m, v in r["median_ms"].items()}
            for m in r["skipped"]:
                last[m] = float("inf")
            m = r["median_ms"]
            if m.get("torch_channels_last", 0) > 3 * m.get("torch_nchw", float("inf")):
                use_cl = False
    print(f"wrote {args.out}/layers{'_quick' if args.quick else ''}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
