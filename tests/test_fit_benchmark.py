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
