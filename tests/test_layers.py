"""The package's layering, checked on the sources: every import (at module level or inside a
function) goes down, never up, and no file grows past one screenful of jobs.

::

    fftbp._params, _config, _arrays     arguments, settings, array helpers
    fftbp.fft                           pyFFTW plans, transform sizes
    fftbp.kernels    fftbp.planning     execution kernels | plans as data, cost and memory models
    fftbp.engine                        the one executor (kernels + planning), measure mode
    fftbp.api, fftbp.layer              conv / conv_input_grad / conv_weight_grad / plan; Conv
    fftbp.torch, fftbp.study, fftbp.cli on top
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "fftbp"
BASE = {"fftbp._params", "fftbp._config", "fftbp._arrays"}
ALLOWED = {
    "base": BASE,
    "fft": BASE | {"fftbp.fft"},
    "kernels": BASE | {"fftbp.fft", "fftbp.kernels"},
    "planning": BASE | {"fftbp.fft", "fftbp.planning"},
    "engine": BASE | {"fftbp.fft", "fftbp.kernels", "fftbp.planning", "fftbp.engine"},
    "testing": BASE,
}
MAX_LINES = 450


def _layer(path: Path) -> str | None:
    rel = path.relative_to(PKG).with_suffix("")
    top = rel.parts[0]
    if f"fftbp.{top}" in BASE:
        return "base"
    return top if top in ALLOWED else None


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)]
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(n, m) for n, m in out if m == "fftbp" or m.startswith("fftbp.")]


SOURCES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PKG)) for p in SOURCES])
def test_imports_go_down(path: Path) -> None:
    layer = _layer(path)
    if layer is None:
        return  # api, torch, study, cli: on top
    allowed = ALLOWED[layer]
    up = []
    for line, name in _imports(path):
        parts = name.split(".")
        # a name imported from a module (``from fftbp.planning import store``) is checked as
        # the module it names; ``fftbp`` itself (the public namespace) is the top
        prefixes = {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        if name == "fftbp" or not prefixes & allowed:
            up.append(f"line {line}: {name}")
    assert not up, f"{path.relative_to(PKG)} ({layer}) imports from above: {up}"


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PKG)) for p in SOURCES])
def test_files_stay_small(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PKG)} has {n} lines (at most {MAX_LINES})"


def test_the_check_sees_upward_imports(tmp_path: Path) -> None:
    """The checker itself: a function-level import of the API from a kernel is caught."""
    bad = PKG / "kernels" / "_probe_upward.py"
    bad.write_text("def f():\n    from fftbp.api import conv\n    return conv\n")
    try:
        with pytest.raises(AssertionError, match="imports from above"):
            test_imports_go_down(bad)
    finally:
        bad.unlink()
