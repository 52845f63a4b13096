"""Training iterations of whole PyTorch models: native ``nn.Conv2d`` vs ``fftbp.torch.convert``.

One iteration is forward, a loss, backward (every parameter's gradient, no input gradient for
the network input). Models:

* ``replknet-example``: the network of ``examples/train_large_kernel.py`` (3x3 stem, two
  RepLKNet blocks with 31x31 depthwise kernels and 1x1 mixing, 16 channels, 32x32, batch 64);
* ``replknet-size``: one RepLKNet block at RepLKNet's size (128 channels, 56x56, batch 16);
* ``slak-stage``: a SLaK-style block (51x51 depthwise with a parallel 5x5 branch, 64 channels,
  56x56, batch 8);
* ``resnet18-style``: ResNet-18's layout at 112x112, batch 8, plus a per-layer table: each
  convolution's own step (forward + the gradients the network needs) after ``convert``, native,
  and as ``fftbp.torch.Conv2d`` forced on every layer (``method="auto"``, which still leaves
  single passes to torch where the planner predicts torch is faster).

Protocol as ``benchmarks/layers.py`` (../shared/CALIBRATION.md): the variants alternate within
one process, their order rotates each round, each timed call follows a 0.25 s pause and
untimed warm-up calls for at least 0.1 s; reported are median times and the median of
per-round ratios.

    python -m benchmarks.torch_model            # writes benchmarks/results/torch_model.{md,json}
    python -m benchmarks.torch_model --quick    # two small models, 3 rounds

Each model is also timed compiled (``torch.compile(model, fullgraph=True)``, inductor, both
the native and the converted one; ``--no-compile`` skips that).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.machine import describe
from fftbp.study.layers import warm_up
from fftbp.torch import adopt, convert
from fftbp.torch._convert import layer_inputs
from fftbp.torch.models import LargeKernelBlock, ResNet18Style, replknet_style, slak_stage

MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "replknet-example": lambda: (replknet_style(1, 16, 31, 2), torch.randn(64, 1, 32, 32)),
    "replknet-size": lambda: (LargeKernelBlock(128, 31), torch.randn(16, 128, 56, 56)),
    "slak-stage": lambda: (slak_stage(64, 51, 1), torch.randn(8, 64, 56, 56)),
    "resnet18-style": lambda: (ResNet18Style(), torch.randn(8, 3, 112, 112)),
}
QUICK = ("replknet-example", "resnet18-style")


def iteration(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().mean().backward()

    return step


def layer_step(module: nn.Module, shape: tuple[int, ...], x_grad: bool) -> Callable[[], None]:
    x = torch.randn(shape).requires_grad_(x_grad)
    g = None

    def step() -> None:
        nonlocal g
        module.zero_grad(set_to_none=True)
        x.grad = None
        y = module(x)
        if g is None:
            g = torch.randn_like(y)
        y.backward(g)

    return step


def alternate(
    calls: dict[str, Callable[[], None]], rounds: int, min_sample: float = 0.1
) -> dict[str, list[float]]:
    """Per-variant samples: rotating order, 0.25 s pause and a 0.1 s warm-up before each. A
    sample of a call shorter than ``min_sample`` is the median of enough back-to-back calls to
    fill it (single millisecond calls here vary by 1.5x)."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    reps: dict[str, int] = {}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(0.25)
            warm_up(calls[name])
            one = []
            for _ in range(reps.get(name, 1)):
                t0 = time.perf_counter()
                calls[name]()
                one.append(time.perf_counter() - t0)
            if name not in reps:
                reps[name] = max(1, min(25, round(min_sample / max(one[0], 1e-6))))
            times[name].append(statistics.median(one))
    return times


def ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    return statistics.median(a / b for a, b in zip(times[slow], times[fast]))


def spread(t: list[float]) -> float:
    """Run-to-run spread of one variant: (max - min) / median over the rounds."""
    return (max(t) - min(t)) / statistics.median(t)


def bench_model(name: str, rounds: int, per_layer: bool, compiled: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    native, x = MODELS[name]()
    converted, report = convert(copy.deepcopy(native), x)
    print(report, flush=True)
    calls = {"native": iteration(native, x), "fftbp": iteration(converted, x)}
    if compiled:  # torch.compile (inductor, fullgraph) of both; compiled before timing
        for key, model in (("native", native), ("fftbp", converted)):
            step = iteration(torch.compile(copy.deepcopy(model), fullgraph=True), x)
            t0 = time.perf_counter()
            step()
            print(f"{name}: compiled {key} in {time.perf_counter() - t0:.1f} s", flush=True)
            calls[f"{key}+compile"] = step
    times = alternate(calls, rounds)
    row: dict[str, Any] = {
        "model": name,
        "input": list(x.shape),
        "converted": report.converted,
        "native_s": statistics.median(times["native"]),
        "fftbp_s": statistics.median(times["fftbp"]),
        "speedup": ratio(times, "native", "fftbp"),
        "rounds": rounds,
        "layers": [],
    }
    if compiled:
        row |= {
            "native_compiled_s": statistics.median(times["native+compile"]),
            "fftbp_compiled_s": statistics.median(times["fftbp+compile"]),
            "speedup_compiled": ratio(times, "native+compile", "fftbp+compile"),
            "compiled_vs_eager": ratio(times, "fftbp+compile", "fftbp"),
            "eager_spread": spread(times["fftbp"]),
        }
        print(
            f"{name}, torch.compile: native {row['native_compiled_s'] * 1e3:.1f} ms, converted "
            f"{row['fftbp_compiled_s'] * 1e3:.1f} ms: {row['speedup_compiled']:.2f}x; compiled "
            f"converted / eager converted {row['compiled_vs_eager']:.3f} (eager spread "
            f"{row['eager_spread']:.3f})",
            flush=True,
        )
    print(
        f"{name}: native {row['native_s'] * 1e3:.1f} ms, converted {row['fftbp_s'] * 1e3:.1f} ms "
        f"per iteration: {row['speedup']:.2f}x\n",
        flush=True,
    )
    if per_layer:
        shapes = {
            n: (tuple(meta.shape), needs_grad)
            for n, (meta, needs_grad, _) in layer_inputs(native, (x,)).items()
        }
        mods = dict(converted.named_modules())
        for lname, module in native.named_modules():
            if lname not in shapes:
                continue
            shape, x_grad = shapes[lname]
            calls = {
                "native": layer_step(module, shape, x_grad),
                "converted": layer_step(mods[lname], shape, x_grad),
                "forced": layer_step(adopt(copy.deepcopy(module)), shape, x_grad),
            }
            t = alternate(calls, max(rounds, 5))
            entry = {
                "layer": lname,
                "input": list(shape),
                "kernel": list(module.kernel_size),
                "stride": list(module.stride),
                "converted": lname in report.converted,
                "native_s": statistics.median(t["native"]),
                "converted_s": statistics.median(t["converted"]),
                "forced_s": statistics.median(t["forced"]),
                "converted_vs_native": ratio(t, "converted", "native"),
                "forced_vs_native": ratio(t, "forced", "native"),
            }
            row["layers"].append(entry)
            print(
                f"  {lname:<22} native {entry['native_s'] * 1e3:7.2f} ms  after convert "
                f"{entry['converted_vs_native']:.2f}x native  forced fftbp "
                f"{entry['forced_vs_native']:.2f}x native",
                flush=True,
            )
    return row


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| model | input | converted layers | native ms/iter | converted ms/iter | speedup |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {'x'.join(map(str, r['input']))} | {len(r['converted'])} | "
            f"{r['native_s'] * 1e3:.1f} | {r['fftbp_s'] * 1e3:.1f} | {r['speedup']:.2f}x |"
        )
    compiled = [r for r in rows if "fftbp_compiled_s" in r]
    if compiled:
        out += [
            "",
            "Under `torch.compile(model, fullgraph=True)` (inductor), both models compiled; "
            "'compiled / eager' is compiled converted over eager converted, median of per-round "
            "ratios, next to the eager run's spread ((max - min) / median):",
            "",
            "| model | native ms/iter | converted ms/iter | speedup | compiled / eager | "
            "eager spread |",
            "|---|---|---|---|---|---|",
        ]
        for r in compiled:
            out.append(
                f"| {r['model']} | {r['native_compiled_s'] * 1e3:.1f} | "
                f"{r['fftbp_compiled_s'] * 1e3:.1f} | {r['speedup_compiled']:.2f}x | "
                f"{r['compiled_vs_eager']:.3f} | {r['eager_spread']:.3f} |"
            )
    for r in rows:
        if not r["layers"]:
            continue
        out += [
            "",
            f"Per layer, {r['model']} (time of the layer's own step as a multiple of native; "
            "'after convert' is the layer in the converted model, 'forced' is "
            "fftbp.torch.Conv2d with method='auto' on every layer):",
            "",
            "| layer | input | kernel / stride | converted | native ms | after convert | forced |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in r["layers"]:
            out.append(
                f"| {e['layer']} | {'x'.join(map(str, e['input']))} | "
                f"{e['kernel'][0]} / {e['stride'][0]} | {'yes' if e['converted'] else 'no'} | "
                f"{e['native_s'] * 1e3:.2f} | {e['converted_vs_native']:.2f}x | "
                f"{e['forced_vs_native']:.2f}x |"
            )
        conv = [e["converted_vs_native"] for e in r["layers"] if e["converted"]]
        same = [e["converted_vs_native"] for e in r["layers"] if not e["converted"]]
        forced = [e["forced_vs_native"] for e in r["layers"]]
        out.append("")
        out.append(
            f"Converted layers: {len(conv)}"
            + (f", slowest {max(conv):.2f}x native." if conv else ".")
        )
        if same:
            out.append(
                f"Layers left native: {len(same)}. After convert they are torch's own module, "
                f"the same code as native; their column is this protocol's A/A spread: "
                f"{min(same):.2f}-{max(same):.2f}x."
            )
        out.append(
            f"Forced fftbp.torch.Conv2d on every layer: {min(forced):.2f}-{max(forced):.2f}x "
            "native."
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two small models, 3 rounds")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument(
        "--no-layout-optimization",
        action="store_true",
        help="compile with torch._inductor.config.layout_optimization = False (inductor then "
        "keeps NCHW instead of converting the graph to channels_last around fftbp's operators)",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument(
        "--table-from", type=Path, help="only re-print the tables of a results JSON file"
    )
    args = ap.parse_args(argv)
    if args.table_from:
        print(table(json.loads(args.table_from.read_text())["rows"]))
        return 0
    names = list(QUICK) if args.quick else args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"--models: unknown {unknown}, expected names from {list(MODELS)}", file=sys.stderr)
        return 2
    rounds = 3 if args.quick else args.rounds
    if args.no_layout_optimization:
        import torch._inductor.config

        torch._inductor.config.layout_optimization = False
    machine = describe() | {"inductor_layout_optimization": not args.no_layout_optimization}
    rows = [
        bench_model(n, rounds, per_layer=n == "resnet18-style", compiled=not args.no_compile)
        for n in names
    ]
    text = table(rows)
    print(text)
    stem = "torch_model_quick" if args.quick else "torch_model"
    if args.no_layout_optimization:
        stem += "_no_layout_opt"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    title = "# fftbp.torch: training iterations, converted vs native"
    (args.out / f"{stem}.md").write_text(f"{title}\n\nMachine: `{json.dumps(machine)}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
