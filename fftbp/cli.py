"""The ``fftbp`` command (also ``python -m fftbp``).

Subcommands so far: ``crossover`` (the kernel-size sweep: where FFT starts to win, per pass),
``accuracy`` and ``layers`` (studies), ``plan`` (print the planner's table for a layer) and
``calibrate`` (measure the cost model's constants on this machine). Bad arguments print one line
(``fftbp <cmd>: error: <arg>: <rule>, got <value>``) and exit with 2; the directory a command
writes to (``--out``, the calibration cache) is checked before its long run starts.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (``fftbp <cmd>: error: ...``) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by ',' or 'x', got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def _finite(text: str) -> float:
    """A finite float (argparse's ``float`` also takes 'inf' and 'nan')."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite float, got {text!r}")
    return value


def _padding(text: str) -> int | str | tuple[int, ...]:
    if text in ("same", "valid"):
        return text
    values = _ints(text)
    return values[0] if len(values) == 1 else values


def _one_or_tuple(values: tuple[int, ...]) -> int | tuple[int, ...]:
    return values[0] if len(values) == 1 else values


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="fftbp", description="fftbp: convolution layers in the frequency domain")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("plan", help="print the planner's choices for one layer")
    p.add_argument("--input", type=_ints, required=True, help="input shape N,C,H[,W[,D]]")
    p.add_argument("--weight", type=_ints, required=True, help="weight shape F,C/groups,kH[,..]")
    p.add_argument("--stride", type=_ints, default=(1,))
    p.add_argument("--padding", type=_padding, default=0, help="int, ints, 'same' or 'valid'")
    p.add_argument("--dilation", type=_ints, default=(1,))
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--mode", choices=("estimate", "measure"), default="estimate")
    p.add_argument("--memory-limit", type=int, default=None, help="bytes")
    p.add_argument(
        "--tol",
        type=_finite,
        default=None,
        help="accuracy target (each output vs its terms' scale)",
    )
    p.add_argument(
        "--dynamic-range", type=_finite, default=1.0, help="the data's dynamic range tol assumes"
    )

    x = sub.add_parser(
        "crossover",
        help="kernel-size sweep: from which k on FFT wins, per pass (table, CSV, JSON, PNG)",
    )
    x.add_argument("--kernels", type=_ints, default=(3, 5, 7, 11, 15, 21, 31), help="odd sizes")
    x.add_argument("--size", type=int, default=64, help="spatial size of the input maps")
    x.add_argument("--batch", type=int, default=4)
    x.add_argument("--channels", type=int, default=16, help="C = F")
    x.add_argument("--groups", type=int, default=1)
    x.add_argument("--dim", type=int, choices=(1, 2, 3), default=2)
    x.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    x.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    x.add_argument("--no-scipy", action="store_true", help="leave scipy.signal out")
    x.add_argument("--no-plot", action="store_true", help="no PNG (no matplotlib needed)")
    x.add_argument("--out", default="fftbp-results", help="directory for CSV, JSON and PNG")

    a = sub.add_parser(
        "accuracy", help="errors of fft / fft_tiled / direct against exact arithmetic (+ PNG)"
    )
    a.add_argument("--kernels", type=_ints, default=(3, 7, 15, 31), help="odd sizes")
    a.add_argument("--sizes", type=_ints, default=(32, 64), help="map sizes")
    a.add_argument("--distributions", default=",".join(_DISTRIBUTIONS))
    a.add_argument("--dtypes", default="float32,float64")
    a.add_argument("--no-plot", action="store_true", help="no PNG (no matplotlib needed)")
    a.add_argument("--out", default="fftbp-results", help="directory for CSV, JSON and PNG")

    la = sub.add_parser("layers", help="named real-world layers: fftbp against PyTorch")
    la.add_argument("--only", default="", help="comma-separated layer names (default: all)")
    la.add_argument("--rounds", type=int, default=3)
    la.add_argument("--max-call", type=float, default=20.0, help="seconds; see --help text")
    la.add_argument("--no-torch", action="store_true")
    la.add_argument("--out", default="fftbp-results", help="directory for CSV and JSON")

    c = sub.add_parser("calibrate", help="measure the cost model's constants on this machine")
    c.add_argument("--no-save", action="store_true", help="print only, do not store")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command == "plan":
        import fftbp

        try:
            p = fftbp.plan(
                args.input,
                args.weight,
                _one_or_tuple(args.stride),
                args.padding,
                _one_or_tuple(args.dilation),
                args.groups,
                args.dtype,
                mode=args.mode,
                memory_limit=args.memory_limit,
                tol=args.tol,
                dynamic_range=args.dynamic_range,
            )
        except (ValueError, TypeError) as exc:
            return _error("plan", _one_line(exc))
        except (MemoryError, OverflowError) as exc:
            # a layer (or --dynamic-range) too large for the planner's arithmetic
            return _error("plan", f"out of range: planning raised {_one_line(exc, typed=True)}")
        print(p)
        return 0
    if args.command == "crossover":
        return _crossover(ap, args)
    if args.command == "accuracy":
        return _accuracy(args)
    if args.command == "layers":
        return _layers(args)
    return _calibrate(args)


def _calibrate_fn() -> Callable[..., Any]:
    """The ``calibrate`` function (tests monkeypatch this one place). With PyTorch installed,
    :mod:`fftbp.torch` is imported first: it registers torch's convolution, whose rates
    calibrate measures too."""
    try:
        import fftbp.torch  # noqa: F401
    except ImportError:
        pass
    from fftbp.engine.calibrate import calibrate

    return calibrate


def _calibrate(args: argparse.Namespace) -> int:
    from fftbp.planning import store

    bad = functools.partial(_error, "calibrate")
    save = not args.no_save
    if save:
        what = (
            "FFTBP_CACHE_DIR"
            if os.environ.get("FFTBP_CACHE_DIR")
            else "cache directory (set FFTBP_CACHE_DIR, or use --no-save)"
        )
        if msg := _unwritable_dir(what, store.cache_dir()):
            return bad(msg)
    # measured unsaved, and stored here, so that a failed save still shows the constants
    k = _calibrate_fn()(save=False)
    values = k.to_json()
    print(json.dumps(values, indent=1), flush=True)
    if save:
        target = store.constants_path()
        try:
            store.save_constants(values, target)
        except OSError as exc:
            return bad(f"could not store the constants ({_one_line(exc)}), got {str(target)!r}")
        print(f"stored in {target}")
    return 0


def _error(command: str, msg: str) -> int:
    """Report a bad argument of ``fftbp <command>`` on stderr; returns the exit status (2)."""
    print(f"fftbp {command}: error: {msg}", file=sys.stderr)
    return 2


def _one_line(exc: BaseException, typed: bool = False) -> str:
    """``exc``'s message on one line (with its type's name if ``typed`` or it has none)."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    if not text:
        return name
    return f"{name}: {text}" if typed else text


def _unwritable_dir(arg: str, path: Path) -> str | None:
    """Create directory ``path`` (and parents) and prove a file can be written in it; what is
    wrong (for ``fftbp <cmd>: error: ...``) if not, else None. Run before a long study."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".fftbp-", suffix=".tmp"):
            pass
    except OSError as exc:
        reason = _one_line(exc)
        if isinstance(exc, FileExistsError):
            reason = f"exists and is not a directory: {reason}"
        return f"{arg}: expected a writable directory ({reason}), got {str(path)!r}"
    return None


def _write_results(
    command: str, out: Path, write: Callable[[], list[Path]], t0: float | None = None
) -> int:
    """Write a study's files to ``--out`` (checked by ``_unwritable_dir`` before the study) and
    say where; a write that fails all the same (disk full, directory gone) is one line, exit 2."""
    try:
        paths = write()
    except OSError as exc:
        return _error(
            command, f"--out: could not write the results ({_one_line(exc)}), got {str(out)!r}"
        )
    took = "" if t0 is None else f" in {time.perf_counter() - t0:.0f} s"
    print(f"wrote {', '.join(map(str, paths))}{took}")
    return 0


def _odd_kernels(kernels: Sequence[int]) -> str | None:
    """What is wrong with ``--kernels`` for 'same' padding, or None."""
    if any(k < 1 or k % 2 == 0 for k in kernels):
        return f"--kernels: expected odd sizes >= 1 ('same' padding), got {kernels}"
    return None


def _plot_problem(no_plot: bool) -> str | None:
    """Why the PNG cannot be drawn (matplotlib missing), or None."""
    if no_plot:
        return None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "the PNG needs matplotlib: pip install 'fftbp[bench]', or use --no-plot"
    return None


def _layers(args: argparse.Namespace) -> int:
    from fftbp.study import layers
    from fftbp.study.machine import describe

    names = [n for n in args.only.split(",") if n] or list(layers.LAYERS)
    unknown = [n for n in names if n not in layers.LAYERS]
    if unknown:
        return _error(
            "layers",
            f"--only: unknown layer(s) {','.join(unknown)}; choose from {','.join(layers.LAYERS)}",
        )
    if args.rounds < 1:
        return _error("layers", f"--rounds: expected a positive int, got {args.rounds}")
    if not args.max_call > 0:
        return _error("layers", f"--max-call: expected positive seconds, got {args.max_call}")
    out = Path(args.out)
    if msg := _unwritable_dir("--out", out):
        return _error("layers", msg)
    torch = not args.no_torch
    if torch:
        try:
            import torch as _torch  # noqa: F401
        except ImportError:
            torch = False
    rows = layers.run(names, args.rounds, args.max_call, torch)
    print(layers.format_table(rows), flush=True)
    return _write_results("layers", out, lambda: layers.write(rows, out, describe()))


_DISTRIBUTIONS = ("uniform", "normal", "heavy_tailed", "dynamic_range")


def _accuracy(args: argparse.Namespace) -> int:
    from fftbp.study import accuracy
    from fftbp.study.machine import describe

    bad = functools.partial(_error, "accuracy")

    dists = tuple(d for d in args.distributions.split(",") if d)
    dtypes = tuple(d for d in args.dtypes.split(",") if d)
    if not dists or any(d not in _DISTRIBUTIONS for d in dists):
        return bad(
            f"--distributions: expected some of {','.join(_DISTRIBUTIONS)}, "
            f"got {args.distributions!r}"
        )
    if not dtypes or any(d not in ("float32", "float64") for d in dtypes):
        return bad(f"--dtypes: expected float32 and/or float64, got {args.dtypes!r}")
    if msg := _odd_kernels(args.kernels):
        return bad(msg)
    if any(n < 1 for n in args.sizes) or not any(k <= n for k in args.kernels for n in args.sizes):
        return bad(f"--sizes: expected positive sizes, some >= a kernel, got {args.sizes}")
    if msg := _plot_problem(args.no_plot):
        return bad(msg)
    out = Path(args.out)
    if msg := _unwritable_dir("--out", out):
        return bad(msg)
    st = accuracy.Study(
        kernels=tuple(sorted(set(args.kernels))),
        sizes=tuple(sorted(set(args.sizes))),
        distributions=dists,
        dtypes=dtypes,
    )
    accuracy.run(st)
    print(accuracy.format_table(st), flush=True)
    return _write_results(
        "accuracy", out, lambda: accuracy.write(st, out, describe(), plot=not args.no_plot)
    )


def _crossover(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fftbp.study import crossover
    from fftbp.study.machine import describe

    bad = functools.partial(_error, "crossover")

    if msg := _odd_kernels(args.kernels):
        return bad(msg)
    for name in ("size", "batch", "channels"):
        if getattr(args, name) < 1:
            return bad(f"--{name}: expected a positive int, got {getattr(args, name)}")
    if args.groups < 1 or args.channels % args.groups:
        return bad(f"--groups: must divide --channels={args.channels}, got {args.groups}")
    if max(args.kernels) > args.size:
        return bad(f"--kernels: the largest ({max(args.kernels)}) exceeds --size={args.size}")
    if msg := _plot_problem(args.no_plot):
        return bad(msg)
    out = Path(args.out)
    if msg := _unwritable_dir("--out", out):
        return bad(msg)
    sw = crossover.Sweep(
        kernels=tuple(sorted(set(args.kernels))),
        size=args.size,
        batch=args.batch,
        channels=args.channels,
        groups=args.groups,
        dim=args.dim,
        dtype=args.dtype,
        torch=not args.no_torch,
        scipy=not args.no_scipy,
    )
    t0 = time.perf_counter()
    crossover.run(sw)
    print(crossover.format_table(sw), flush=True)
    return _write_results(
        "crossover", out, lambda: crossover.write(sw, out, describe(), plot=not args.no_plot), t0
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
