"""The training example runs, and the converted model trains exactly like the native one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch is part of the 'test' extra")
pytest.importorskip("sklearn", reason="scikit-learn (the example's dataset) is in the 'test' extra")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_large_kernel.py"


def test_example_losses_agree_in_float64(capsys):
    spec = importlib.util.spec_from_file_location("train_large_kernel", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    worst = module.main(
        ["--epochs", "1", "--train", "128", "--test", "64", "--dtype", "float64", "--kernel", "15"]
    )
    out = capsys.readouterr().out
    assert "2 of 7 convolutions converted" in out
    assert "faster; losses agree to" in out
    assert worst <= 1e-10


def test_example_compiled_trains_like_eager(capsys):
    """torch.compile(fullgraph=True) of the converted example network trains with the losses of
    the eager converted one (float32: the same operators, only inductor's fusions differ)."""
    spec = importlib.util.spec_from_file_location("train_large_kernel", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--epochs", "2", "--train", "128", "--test", "64", "--kernel", "15", "--compile"])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "losses agree with eager fftbp to" in x)
    assert float(line.split("eager fftbp to ")[1].split(" ")[0]) <= 1e-5
