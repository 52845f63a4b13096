"""What the planner returns: a :class:`Plan` (one :class:`Choice` per pass), as data.

A plan describes; it does not execute. It prints as a table (pass, algorithm, transform or
tile size, time, memory, runner-up) and is consumed by :mod:`fftbp.engine` (``method=plan``
in the public functions and :class:`fftbp.Conv`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fftbp._params import PASSES, ConvSpec, Pass
from fftbp.fft.sizes import transform_shape
from fftbp.planning.routes import Route

__all__ = ["Choice", "Plan", "describe_spec", "format_bytes"]


@dataclass(frozen=True)
class Choice:
    """The decision for one pass: the route, its cost and the runner-up."""

    route: Route
    seconds: float
    #: peak workspace of the pass in bytes (what a run under the plan's limit uses at most)
    bytes: int
    runner_up: tuple[Route, float] | None = None
    measured: bool = False
    #: predicted error (``tol=``'s measure, :mod:`fftbp.planning.errors`), when planned with tol
    error: float | None = None


@dataclass(frozen=True)
class Plan:
    """How each pass of one layer is computed. Print it to see why."""

    spec: ConvSpec
    mode: str
    forward_choice: Choice
    input_grad_choice: Choice
    weight_grad_choice: Choice
    #: workspace bytes every pass of this plan runs within (None: the limit in force at run time)
    memory_limit: int | None = None
    threads: int = 1
    #: measure mode: route label -> pass -> measured seconds, for every timed candidate
    timings: dict[str, dict[str, float]] = field(default_factory=dict, compare=False)
    #: accuracy target the plan meets (``tol=``), and what it excluded to meet it
    tol: float | None = None
    notes: tuple[str, ...] = ()

    def choice(self, pass_: Pass | str) -> Choice:
        return getattr(self, f"{Pass(pass_).value}_choice")

    def __str__(self) -> str:
        rows = [
            f"fftbp plan for {describe_spec(self.spec)}",
            f"mode={self.mode}, threads={self.threads}"
            + (f", memory_limit={format_bytes(self.memory_limit)}" if self.memory_limit else "")
            + (f", tol={self.tol:g}" if self.tol is not None else ""),
            "",
            f"{'pass':<12} {'algorithm':<22} {'transform / tile':<24} {'time':>10} "
            f"{'memory':>10}" + (f" {'error':>9}" if self.tol is not None else "") + "  runner-up",
        ]
        for p in PASSES:
            c = self.choice(p)
            ru = (
                f"{c.runner_up[0].label()} {_size(c.runner_up[0], self.spec)} "
                f"({_fmt_s(c.runner_up[1])}, {c.runner_up[1] / c.seconds:.2f}x)"
                if c.runner_up
                else "-"
            )
            err = f" {c.error:9.1e}" if self.tol is not None and c.error is not None else ""
            rows.append(
                f"{p.value:<12} {c.route.label():<22} {_size(c.route, self.spec):<24} "
                f"{_fmt_s(c.seconds):>10} {format_bytes(c.bytes):>10}{err}  {ru}"
            )
        total = sum(self.choice(p).seconds for p in PASSES)
        rows.append("")
        rows.append(
            f"times are {'measured' if self.mode == 'measure' else 'estimated'}; "
            f"sum over passes {_fmt_s(total)}; memory is each pass's peak workspace"
        )
        if self.tol is not None:
            rows.append(
                f"error: predicted error of each output relative to its terms' scale "
                f"(docs/results.md); every pass meets tol={self.tol:g}"
            )
        rows += list(self.notes)
        return "\n".join(rows)

    def __repr__(self) -> str:
        routes = ", ".join(f"{p.value}={self.choice(p).route.label()}" for p in PASSES)
        return f"Plan({describe_spec(self.spec)}; {routes}; mode={self.mode!r})"


def describe_spec(s: ConvSpec) -> str:
    """One line naming the layer (for messages and tables, never as a key)."""
    x = "x".join
    pads = "x".join(f"{lo}" if lo == hi else f"{lo}:{hi}" for lo, hi in s.padding)
    return (
        f"{s.nd}D N{s.batch} C{s.in_channels} F{s.out_channels} {x(map(str, s.in_size))} "
        f"k{x(map(str, s.kernel))} stride {x(map(str, s.stride))} pad {pads} "
        f"dilation {x(map(str, s.dilation))} groups {s.groups} {s.dtype.name}"
    )


def _size(route: Route, spec: ConvSpec) -> str:
    if route.base in ("direct", "torch"):
        return "-"
    inner = route.inner(spec)
    shape = "x".join(map(str, transform_shape(inner)))
    if route.tile:
        return f"{shape} ({'x'.join(map(str, route.tile))} out)"
    return shape


def _fmt_s(t: float) -> str:
    return f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s"


def format_bytes(n: float | None) -> str:
    """``n`` bytes in B, KB, MB or GB."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
