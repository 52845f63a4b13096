"""benchmarks/limit.py runs end to end on a tiny layer, and its Amdahl arithmetic holds."""

from __future__ import annotations

import json

import pytest

from benchmarks import limit


def test_limit_benchmark_on_a_tiny_layer(tmp_path, monkeypatch):
    monkeypatch.setattr(limit, "LAYERS", {"tiny": ((1, 2, 12, 12), (2, 2, 5, 5), 2, 1)})
    monkeypatch.setattr(limit, "QUICK", ["tiny"])
    monkeypatch.setattr(limit, "sample", lambda fn, reps=1: (fn(), 1e-3)[1])
    assert limit.main(["--quick", "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "limit_quick.json").read_text())["rows"][0]
    assert row["limit_s"] == pytest.approx(row["transforms_s"] + row["products_s"])
    assert row["fftbp_over_limit"] == pytest.approx(row["fftbp_s"] / row["limit_s"])
    # equal times with 1 and with p threads: everything serial
    assert row["serial_fraction"] == 1.0 and row["projected_16"] == pytest.approx(1.0)
    assert "| tiny |" in (tmp_path / "limit_quick.md").read_text()


def test_transforms_time_is_positive_and_grows_with_the_maps():
    small = limit.transforms_time((16, 16), 8, 8, 1)
    large = limit.transforms_time((16, 16), 8000, 8000, 1)
    assert 0 < small < large


def test_limit_benchmark_measures_scaling_when_asked(tmp_path, monkeypatch):
    """--scaling times each step with the given thread counts (for a many-core machine) and
    restores the thread count."""
    import fftbp

    monkeypatch.setattr(limit, "LAYERS", {"tiny": ((1, 2, 12, 12), (2, 2, 5, 5), 2, 1)})
    monkeypatch.setattr(limit, "QUICK", ["tiny"])
    seen = []

    def fake_sample(fn, reps=1):
        fn()
        seen.append(fftbp.get_num_threads())
        return 1e-3 * (3 if seen[-1] == 1 else 1)

    monkeypatch.setattr(limit, "sample", fake_sample)
    before = fftbp.get_num_threads()
    assert limit.main(["--quick", "--out", str(tmp_path), "--scaling", "1,2"]) == 0
    assert fftbp.get_num_threads() == before and {1, 2} <= set(seen)
    row = json.loads((tmp_path / "limit_quick.json").read_text())["rows"][0]
    assert row["scaling"] == {"1": pytest.approx(3e-3), "2": pytest.approx(1e-3)}
    text = (tmp_path / "limit_quick.md").read_text()
    assert "Measured scaling" in text and "1.0 (3.00x)" in text


def test_products_rate_counts_the_three_passes(monkeypatch):
    """The products' rate is the three passes' flops over the profiled products time per
    worker: with the profiler's products time fixed, the rate follows from the flop count."""
    import contextlib

    import numpy as np

    from fftbp._params import ConvSpec

    spec = ConvSpec.from_shapes((2, 32, 16, 16), (32, 32, 5, 5), 1, 2, 1, 1, "float32")

    @contextlib.contextmanager
    def fake_profiling():
        yield {"products": 0.5}

    monkeypatch.setattr(limit, "profiling", fake_profiling)
    calls = []
    rate = limit.products_rate(lambda: calls.append(1), spec, 100, 3)
    workers = limit.fftbp.get_num_threads()  # 8*2*32*32 flops per matrix: all workers
    assert rate == pytest.approx(3 * 8 * 2 * 32 * 32 * 100 / (0.5 / workers))
    assert len(calls) == 6 and np.isfinite(rate)
