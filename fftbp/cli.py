"""The ``fftbp`` command (also ``python -m fftbp``).

Subcommands so far: ``plan`` (print the planner's table for a layer) and ``calibrate`` (measure
the cost model's constants on this machine). Bad arguments print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn


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
            )
        except (ValueError, TypeError, MemoryError) as exc:
            print(f"fftbp plan: error: {exc}", file=sys.stderr)
            return 2
        print(p)
        return 0
    from fftbp.planning import store
    from fftbp.planning.calibrate import calibrate

    k = calibrate(save=not args.no_save)
    print(json.dumps(k.to_json(), indent=1))
    if not args.no_save:
        print(f"stored in {store.constants_path()}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
