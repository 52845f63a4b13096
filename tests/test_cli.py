"""The fftbp command: output of the plan subcommand, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fftbp.cli import main


def test_plan_prints_the_table(capsys):
    assert (
        main(["plan", "--input", "8,32,64,64", "--weight", "32,32,31,31", "--padding", "same"]) == 0
    )
    out = capsys.readouterr().out
    assert "forward" in out and "weight_grad" in out and "80x80" in out and "runner-up" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "--input", "8,32,64", "--weight", "32,32,3,3"], "input_shape: expected 4 dim"),
        (["plan", "--input", "8,a,64,64", "--weight", "32,32,3,3"], "expected integers"),
        (["plan", "--input", "1,1,8,8", "--weight", "1,1,3,3", "--mode", "fast"], "invalid choice"),
        (["plan", "--input", "1,1,8,8", "--weight", "1,1,3,3", "--stride", "0"], "stride:"),
        (["nope"], "invalid choice"),
        ([], "required"),
    ],
    ids=["bad-ndim", "not-int", "bad-mode", "bad-stride", "bad-command", "no-command"],
)
def test_bad_arguments_give_one_line_and_exit_2(argv, message):
    proc = subprocess.run(
        [sys.executable, "-m", "fftbp", *argv], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0] and "Traceback" not in proc.stderr
