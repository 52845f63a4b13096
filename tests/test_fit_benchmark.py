"""Smoke test of benchmarks/fit.py on the committed planner timings (one calibration run)."""

from __future__ import annotations

from pathlib import Path

import pytest

fit = pytest.importorskip("benchmarks.fit")

TIMINGS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "planner.json"


def test_fit_reads_the_timings_and_reports_choices(capsys, monkeypatch):
    monkeypatch.setattr(fit, "FITTED", ("tile_s",))  # one constant: a quick fit
    assert fit.main(["--timings", str(TIMINGS), "--runs", "1"]) == 0
    out = capsys.readouterr().out
    for line in ("shipped constants:", "calibrated now:", "two-fold cross-validated fit:"):
        assert line in out
    data = fit.samples(TIMINGS)
    assert len(data) == 3 * 82
    ratios = fit.choices(data, fit.Constants())
    assert all(r >= 1.0 for r in ratios) and len(ratios) == len(data)


def test_choice_search_never_makes_the_choices_worse(capsys, monkeypatch):
    """The search starts from the shipped constants and keeps a move only if the loss drops,
    so its choices on the data it searched score no worse than the shipped ones; a constant
    pushed far off (tile costs 20x too high) is pulled back towards where tiles get chosen."""
    data = fit.samples(TIMINGS)[:60]
    monkeypatch.setattr(fit, "SEARCHED", ("tile_s",))
    off = fit.replace(fit.Constants(), tile_s=20 * fit.Constants().tile_s)
    found = fit.search(data, off, sweeps=2)
    assert fit.choice_loss(data, found) <= fit.choice_loss(data, off)
    assert found.tile_s < off.tile_s
    assert fit.search_main(data) == 0
    assert "two-fold cross-validated search:" in capsys.readouterr().out
