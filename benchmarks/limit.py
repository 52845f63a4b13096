"""How far each layer's training step is from the machine's limit, and how it scales.

For each layer (forward + input gradient + weight gradient, float32, ``method="auto"``):

* **fftbp**: the step's median time with all threads and with one thread;
* **serial fraction** s from the two (Amdahl: t_p / t_1 = s + (1 - s) / p) and the projected
  speedup over one thread on 16 and 64 cores, 1 / (s + (1 - s) / n);
* **limit**: what no whole-map FFT method avoids, each piece timed alone in the same run:
  batched natural-layout FFTW r2c transforms of every map the three passes transform
  (x, w, grad_output) and c2r transforms of every map they produce (y, dx, dw), at the
  layout's transform size, the batch split over all threads, plus the channel products.
  Dense products are counted at this machine's complex GEMM rate (a 512x512 complex64
  matmul, timed here); depthwise products are elementwise, timed as ``np.multiply`` over the
  same arrays;
* **fftbp / limit**, and the step forced to whole-map FFT (``method="fft"``) beside the
  planner's choice;
* the limit's own speedup from one thread to all (its transforms timed both ways): on a
  machine whose cores slow each other down, the timed serial fraction above counts that too;
* **serial fraction (instrumented)**: the share of a one-thread step spent outside fftbp's
  worker-pool sections (fftbp's profiler), and its Amdahl projection to 16 cores.

The limit is that of whole-map transforms; where the planner picks another route (tiles for
large maps, direct for small kernels) the ``routes`` column says so, and the ratio compares
with whole-map transforms all the same. Long 1D layers (depthwise, causal, kernel as long as
the sequence) are also timed against the ``torch.fft`` autograd code such users write
(``irfft(rfft(u, 2L) * rfft(k, 2L))[:L]``), when torch is installed: in a block of rounds of
its own after fftbp's, because torch's OpenMP threads, spinning after a torch call, slowed an
fftbp call right after it by up to 2x (the ratio is then one of medians).

Protocol as ``benchmarks/layers.py``: medians of ``--rounds`` samples, each after a 0.25 s pause
and 0.1 s of untimed calls (steady state, as in a training loop); variants alternate. Issue 13
uses it.

    python -m benchmarks.limit            # writes benchmarks/results/limit.{md,json}
    python -m benchmarks.limit --quick    # three layers
    python -m benchmarks.limit --scaling 1,4,8,16   # on a many-core machine: measured scaling
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyfftw

import fftbp
from benchmarks.machine import describe
from fftbp._config import profiling
from fftbp._params import ConvSpec
from fftbp.kernels.fft import layout, product_flops, product_workers
from fftbp.study.layers import fftbp_step, sample

#: name -> (input shape, weight shape, padding, groups)
LAYERS: dict[str, tuple[tuple[int, ...], tuple[int, ...], Any, int]] = {
    "dense k15": ((8, 32, 64, 64), (32, 32, 15, 15), 7, 1),
    "dense k31": ((8, 32, 64, 64), (32, 32, 31, 31), 15, 1),
    "large k31": ((1, 16, 256, 256), (16, 16, 31, 31), 15, 1),
    "depthwise k13": ((16, 128, 56, 56), (128, 1, 13, 13), 6, 128),
    "depthwise k31": ((16, 128, 56, 56), (128, 1, 31, 31), 15, 128),
    "depthwise k51": ((16, 128, 56, 56), (128, 1, 51, 51), 25, 128),
    "3D dense k7": ((2, 8, 24, 24, 24), (8, 8, 7, 7, 7), 3, 1),
    "long1d 1k": ((8, 128, 1024), (128, 1, 1024), ((1023, 0),), 128),
    "long1d 4k": ((4, 64, 4096), (64, 1, 4096), ((4095, 0),), 64),
    "long1d 16k": ((2, 64, 16384), (64, 1, 16384), ((16383, 0),), 64),
    "long1d 32k": ((2, 32, 32768), (32, 1, 32768), ((32767, 0),), 32),
    "long1d 64k": ((1, 32, 65536), (32, 1, 65536), ((65535, 0),), 32),
}
QUICK = ["dense k31", "depthwise k31", "long1d 4k"]


def median_of(fn: Callable[[], Any], rounds: int) -> float:
    return statistics.median(sample(fn) for _ in range(rounds))


def gemm_rate(threads: int) -> float:
    """Complex64 GEMM rate (flop/s) of this machine's numpy BLAS: a 512x512 matmul."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = (rng.standard_normal((512, 512)) + 1j * rng.standard_normal((512, 512))).astype(
        np.complex64
    )
    with threadpool_limits(threads, user_api="blas"):
        t = median_of(lambda: a @ a, 5)
    return 8 * 512**3 / t


#: bytes of one thread's chunk of real maps: FFTW runs on cache-resident chunks, as fftbp's
#: kernels do (whole 40 MB batches streamed through memory measured slower than fftbp's step)
CHUNK_BYTES = 1 << 20


def transforms_time(shape: tuple[int, ...], maps_in: int, maps_out: int, threads: int) -> float:
    """Seconds of natural-layout r2c transforms of ``maps_in`` maps and c2r transforms of
    ``maps_out`` maps of ``shape``, run the fastest way measured on this kind of machine
    (../shared/CALIBRATION.md): the maps split over ``threads`` Python threads, each executing a
    single-threaded FFTW plan (fftbp's effort) over cache-sized chunks of its share (pyFFTW
    releases the GIL while it executes). This is what the transforms cost when nothing else
    is done: no copies, no memory traffic beyond the chunks."""
    axes = tuple(range(1, len(shape) + 1))
    half = (*shape[:-1], shape[-1] // 2 + 1)
    chunk = max(1, CHUNK_BYTES // (4 * math.prod(shape)))
    total = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for maps, forward in ((maps_in, True), (maps_out, False)):
            real, cplx = (chunk, *shape), (chunk, *half)
            a, b = (real, cplx) if forward else (cplx, real)
            types = (np.float32, np.complex64) if forward else (np.complex64, np.float32)
            direction = "FFTW_FORWARD" if forward else "FFTW_BACKWARD"
            flags = (fftbp.get_fftw_effort(),)
            jobs = []
            for i in range(threads):
                part = maps // threads + (i < maps % threads)
                mine = pyfftw.FFTW(
                    pyfftw.zeros_aligned(a, dtype=types[0]),
                    pyfftw.zeros_aligned(b, dtype=types[1]),
                    axes=axes,
                    direction=direction,
                    flags=flags,
                )
                jobs.append((mine, -(-part // chunk)))

            def run(jobs: list[tuple[pyfftw.FFTW, int]] = jobs) -> None:
                def work(job: tuple[pyfftw.FFTW, int]) -> None:
                    plan, times = job
                    for _ in range(times):
                        plan.execute()

                list(pool.map(work, jobs))

            total += median_of(run, 3)
    return total


def products_time(spec: ConvSpec, nfreq: int, rate: float) -> float:
    """Seconds of the three passes' channel products: dense at the GEMM rate, depthwise timed
    as elementwise multiplies over the same arrays."""
    n, c, f, g = spec.batch, spec.in_channels, spec.out_channels, spec.groups
    if not spec.is_depthwise:
        return 3 * product_flops(n, c // g, f // g) * g * nfreq / rate
    xs = np.ones((n, c, nfreq), np.complex64)
    ws = np.ones((c, nfreq), np.complex64)
    out = np.empty_like(xs)
    return 3 * median_of(lambda: np.multiply(xs, ws, out=out), 3)


def limit(spec: ConvSpec, threads: int, rate: float) -> dict[str, float]:
    """The limit with ``threads``, and its transforms with one thread: how far this machine's
    cores scale on work with no serial part at all (``transforms_speedup``)."""
    lay = layout(spec)
    n, c, f, g = spec.batch, spec.in_channels, spec.out_channels, spec.groups
    weight_maps = f * c // g
    maps = (lay.shape, n * c + weight_maps + n * f, n * f + n * c + weight_maps)
    t_fft = transforms_time(*maps, threads)
    t_one = transforms_time(*maps, 1) if threads > 1 else t_fft
    t_prod = products_time(spec, lay.nfreq, rate)
    return {
        "transforms_s": t_fft,
        "products_s": t_prod,
        "limit_s": t_fft + t_prod,
        "transforms_speedup": t_one / t_fft,
    }


def instrumented_serial(step: Callable[[], None], rounds: int) -> float:
    """Serial fraction of one-thread steps as fftbp's profiler sees it: the share of the wall
    time spent outside worker-pool sections (median over ``rounds``). Unlike the fraction
    derived from 1- and p-thread times, it does not count what the hardware loses when cores
    run together (two vCPUs here scale pure FFTW work by only 1.2-1.9x); it does not count
    Python work holding the GIL inside the sections either."""
    threads = fftbp.get_num_threads()
    fftbp.set_num_threads(1)
    shares = []
    try:
        for _ in range(rounds):
            step()
            with profiling() as prof:
                t0 = time.perf_counter()
                step()
                wall = time.perf_counter() - t0
            shares.append(max(0.0, wall - prof["parallel"]) / wall)
    finally:
        fftbp.set_num_threads(threads)
    return statistics.median(shares)


def products_rate(step: Callable[[], None], spec: ConvSpec, nfreq: int, rounds: int) -> float:
    """flop/s of the channel products inside a whole-map FFT step of a dense layer, as
    fftbp's profiler times them: the three passes' flops over the products' thread-seconds
    divided by the thread count (the products run in sections where every worker multiplies,
    or on one worker for tiny matrices: the rate is then one core's). Issue 13 compares it
    with the GEMM rate."""
    n, cg, fg, g = (
        spec.batch,
        spec.in_channels // spec.groups,
        spec.out_channels // spec.groups,
        spec.groups,
    )
    flops = 3 * product_flops(n, cg, fg) * g * nfreq
    workers = product_workers(n, cg, fg)
    seconds = []
    for _ in range(rounds):
        step()
        with profiling() as prof:
            step()
        seconds.append(prof["products"] / workers)
    return flops / statistics.median(seconds)


def torch_fft_step(x: np.ndarray, w: np.ndarray) -> Callable[[], None] | None:
    """The torch.fft autograd code of a causal long convolution (forward and both gradients)."""
    try:
        import torch
    except ImportError:
        return None
    u = torch.from_numpy(x).requires_grad_()
    k = torch.from_numpy(w[:, 0]).requires_grad_()
    length = x.shape[-1]

    def step() -> None:
        y = torch.fft.irfft(
            torch.fft.rfft(u, n=2 * length) * torch.fft.rfft(k, n=2 * length), n=2 * length
        )[..., :length]
        y.backward(torch.ones_like(y))
        u.grad = k.grad = None

    return step


def measure(name: str, rounds: int, rate: float, counts: list[int] | None = None) -> dict[str, Any]:
    xs, ws, pad, groups = LAYERS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    threads = fftbp.get_num_threads()
    spec = ConvSpec.from_shapes(xs, ws, 1, pad, 1, groups, "float32")
    plan = fftbp.plan(xs, ws, padding=pad, groups=groups, dtype="float32")
    step = fftbp_step(x, w, 1, pad, groups, "auto")
    row: dict[str, Any] = {"layer": name, "threads": threads}
    row["routes"] = "/".join(
        plan.choice(p).route.label() for p in ("forward", "input_grad", "weight_grad")
    )
    row |= limit(spec, threads, rate)
    reference = torch_fft_step(x, w) if name.startswith("long1d") else None
    whole = fftbp_step(x, w.copy(), 1, pad, groups, "fft")
    t_all, t_one, t_whole, t_ref = [], [], [], []
    for _ in range(rounds):
        t_all.append(sample(step))
        fftbp.set_num_threads(1)
        try:
            t_one.append(sample(step))
        finally:
            fftbp.set_num_threads(threads)
        t_whole.append(sample(whole))
    if reference is not None:  # after fftbp's rounds: torch's OpenMP threads, still spinning
        # after a torch call, slowed the next fftbp call by up to 2x when interleaved
        t_ref = [sample(reference) for _ in range(rounds)]
    row["fftbp_s"] = statistics.median(t_all)
    row["one_thread_s"] = statistics.median(t_one)
    row["whole_map_fft_s"] = statistics.median(t_whole)
    # Amdahl per round (t_p / t_1 = s + (1 - s) / p), then the median: the two samples of a
    # round are taken back to back, so a round's ratio is less noisy than a ratio of medians
    p = threads
    fractions = [(p * a / b - 1) / (p - 1) for a, b in zip(t_all, t_one)] if p > 1 else []
    sf = min(max(statistics.median(fractions), 0.0), 1.0) if fractions else float("nan")
    row["serial_fraction"] = sf
    for cores in (16, 64):
        row[f"projected_{cores}"] = 1 / (sf + (1 - sf) / cores) if not math.isnan(sf) else sf
    row["fftbp_over_limit"] = row["fftbp_s"] / row["limit_s"]
    if row["routes"] == "fft/fft/fft" and not spec.is_depthwise:
        row["products_flops"] = products_rate(step, spec, layout(spec).nfreq, 3)
        row["products_share_of_gemm"] = row["products_flops"] / rate
    si = instrumented_serial(step, 3)
    row["serial_instrumented"] = si
    row["projected_16_instrumented"] = 1 / (si + (1 - si) / 16)
    if counts:
        row["scaling"] = scaling(step, counts, rounds)
    if t_ref:
        row["torch_fft_s"] = statistics.median(t_ref)
        row["torch_fft_over_fftbp"] = row["torch_fft_s"] / row["fftbp_s"]
    return row


def scaling(step: Callable[[], None], counts: list[int], rounds: int) -> dict[str, float]:
    """The step's median time with each thread count (the counts alternate within a round),
    for a machine with more cores: measured speedups beside the Amdahl projections."""
    threads = fftbp.get_num_threads()
    times: dict[int, list[float]] = {p: [] for p in counts}
    try:
        for _ in range(rounds):
            for p in counts:
                fftbp.set_num_threads(p)
                times[p].append(sample(step))
    finally:
        fftbp.set_num_threads(threads)
    return {str(p): statistics.median(t) for p, t in times.items()}


def scaling_table(rows: list[dict[str, Any]], counts: list[int]) -> str:
    head = " | ".join(f"{p} threads ms (speedup)" for p in counts)
    out = [
        f"| layer | {head} | projected x16 (instrumented) |",
        "|---|" + "---|" * (len(counts) + 1),
    ]
    for r in rows:
        t = r["scaling"]
        base = t[str(counts[0])]
        cells = " | ".join(f"{t[str(p)] * 1e3:.1f} ({base / t[str(p)]:.2f}x)" for p in counts)
        out.append(f"| {r['layer']} | {cells} | {r['projected_16_instrumented']:.1f} |")
    return "\n".join(out)


def products_table(rows: list[dict[str, Any]]) -> str:
    out = ["| layer | products GFLOP/s | share of the GEMM rate |", "|---|---|---|"]
    for r in rows:
        if "products_flops" in r:
            share = r["products_share_of_gemm"]
            out.append(f"| {r['layer']} | {r['products_flops'] / 1e9:.0f} | {share:.0%} |")
    return "\n".join(out)


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| layer | routes (fwd/dx/dw) | fftbp ms | whole-map fft ms | limit ms (FFT + products) | "
        "fftbp / limit | 1 thread ms | serial fraction (timed) | projected x16 / x64 | "
        "limit's own speedup 1->p | serial fraction (instrumented) | projected x16 | "
        "torch.fft code / fftbp |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = f"{r['torch_fft_over_fftbp']:.2f}x" if "torch_fft_over_fftbp" in r else "-"
        out.append(
            f"| {r['layer']} | {r['routes']} | {r['fftbp_s'] * 1e3:.1f} | "
            f"{r['whole_map_fft_s'] * 1e3:.1f} | {r['limit_s'] * 1e3:.1f} "
            f"({r['transforms_s'] * 1e3:.1f} + "
            f"{r['products_s'] * 1e3:.1f}) | {r['fftbp_over_limit']:.2f} | "
            f"{r['one_thread_s'] * 1e3:.1f} | {r['serial_fraction']:.1%} | "
            f"{r['projected_16']:.1f} / {r['projected_64']:.1f} | "
            f"{r['transforms_speedup']:.2f}x | {r['serial_instrumented']:.1%} | "
            f"{r['projected_16_instrumented']:.1f} | {ref} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument(
        "--scaling",
        type=lambda v: [int(p) for p in v.split(",")],
        default=None,
        help="thread counts to time each step with too, e.g. 1,4,8,16 (a many-core machine)",
    )
    args = ap.parse_args(argv)
    names = QUICK if args.quick else list(LAYERS)
    rounds = 3 if args.quick else args.rounds
    machine = describe()
    rate = gemm_rate(fftbp.get_num_threads())
    print(f"complex64 GEMM rate: {rate / 1e9:.0f} GFLOP/s", flush=True)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        rows.append(measure(name, rounds, rate, args.scaling))
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    text = table(rows)
    text += "\n\nChannel products in the step (dense layers by whole-map FFT), against the GEMM "
    text += f"rate ({rate / 1e9:.0f} GFLOP/s):\n\n" + products_table(rows)
    if args.scaling:
        text += "\n\nMeasured scaling (speedup over the first count's time):\n\n"
        text += scaling_table(rows, args.scaling)
    print(text)
    stem = "limit_quick" if args.quick else "limit"
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine, "gemm_flops": rate, "rows": rows}
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    title = "# fftbp: training steps against the machine's limit"
    (args.out / f"{stem}.md").write_text(
        f"{title}\n\nMachine: `{json.dumps(machine)}`\n\ncomplex64 GEMM rate: "
        f"{rate / 1e9:.0f} GFLOP/s\n\n{text}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
