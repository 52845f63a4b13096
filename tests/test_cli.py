"""The fftbp command: output of the plan subcommand, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fftbp.cli import main


def test_plan_with_tol_prints_the_errors(capsys):
    args = ["plan", "--input", "2,4,64,64", "--weight", "4,4,31,31", "--padding", "same"]
    assert main([*args, "--tol", "1e-4", "--dynamic-range", "1e6"]) == 0
    out = capsys.readouterr().out
    assert "tol=0.0001" in out and "tol excludes fft" in out and "error" in out


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
        (["plan", "--input", "1,1,8,8", "--weight", "1,1,3,3", "--tol", "2"], "tol: expected"),
        (["plan", "--input", "1,1,8,8", "--weight", "1,1,3,3", "--tol", "x"], "invalid float"),
        (
            [
                "plan",
                "--input",
                "1,1,8,8",
                "--weight",
                "1,1,3,3",
                "--tol",
                "1e-4",
                "--dynamic-range",
                "0",
            ],
            "dynamic_range: expected",
        ),
        (["nope"], "invalid choice"),
        ([], "required"),
        (["crossover", "--kernels", "3,4"], "--kernels: expected odd sizes"),
        (["crossover", "--channels", "6", "--groups", "4"], "--groups: must divide"),
        (["crossover", "--kernels", "71", "--size", "64"], "exceeds --size=64"),
        (["crossover", "--dim", "4"], "invalid choice"),
        (["accuracy", "--distributions", "lognormal"], "--distributions: expected some of"),
        (["accuracy", "--dtypes", "float16"], "--dtypes: expected float32"),
        (["layers", "--only", "vgg"], "--only: unknown layer(s) vgg"),
    ],
    ids=[
        "bad-ndim",
        "not-int",
        "bad-mode",
        "bad-stride",
        "bad-tol",
        "tol-not-float",
        "bad-dynamic-range",
        "bad-command",
        "no-command",
        "even-kernel",
        "groups",
        "kernel-too-large",
        "dim",
        "accuracy-distribution",
        "accuracy-dtype",
        "layers-unknown",
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(argv, message):
    proc = subprocess.run(
        [sys.executable, "-m", "fftbp", *argv], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0] and "Traceback" not in proc.stderr


def test_crossover_writes_table_csv_json_and_png(tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["crossover", "--kernels", "3,7", "--size", "16", "--batch", "1", "--channels", "2"]
    assert main([*argv, "--no-torch", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "crossover (FFT faster from k on)" in text and "weight_grad (ms)" in text
    rows = (out / "crossover.csv").read_text().splitlines()
    assert rows[0] == "kernel,method,pass,ms,auto_route"
    # 2 kernels x (direct, fft, auto, fft_tiled where it applies) x 3 passes + scipy forward
    methods = {line.split(",")[1] for line in rows[1:]}
    assert {"direct", "fft", "auto", "scipy_fftconvolve"} <= methods
    doc = json.loads((out / "crossover.json").read_text())
    assert doc["machine"]["cores"] >= 1 and set(doc["crossover"]) == {
        "forward",
        "input_grad",
        "weight_grad",
    }
    png = (out / "crossover.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_accuracy_rows_within_bound_and_dynamic_range_shows_the_fft_weakness(tmp_path, capsys):
    out = tmp_path / "acc"
    argv = ["accuracy", "--kernels", "15", "--sizes", "32", "--distributions"]
    assert main([*argv, "normal,dynamic_range", "--dtypes", "float32", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "FFT rows within the L2 bound: 6 of 6" in text
    assert (
        "rows within the error model's prediction (scale-relative, every method): 24 of 24" in text
    )
    assert "tol=0.0001: met (measured) on 6 of 6 passes" in text
    doc = json.loads((out / "accuracy.json").read_text())
    worst = {
        (r["method"], r["distribution"]): max(
            q["worst_rel"]
            for q in doc["rows"]
            if q["method"] == r["method"] and q["distribution"] == r["distribution"]
        )
        for r in doc["rows"]
    }
    # small outputs next to large ones: float32 FFT loses them, direct convolution keeps them
    assert worst[("fft", "dynamic_range")] > 1.0 > 0.1 > worst[("direct", "dynamic_range")]
    scaled = {
        (r["method"], r["pass_"]): r["scaled"]
        for r in doc["rows"]
        if r["distribution"] == "dynamic_range"
    }
    # the 1e-4 target: plain float32 FFT misses it, the planner under tol=1e-4 meets it
    assert scaled[("fft", "forward")] > 1e-4 >= scaled[("tol", "forward")]
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_layers_runs_a_named_layer_and_writes_results(tmp_path, capsys):
    out = tmp_path / "lay"
    assert (
        main(
            [
                "layers",
                "--only",
                "convnext_dw_7x7",
                "--rounds",
                "1",
                "--no-torch",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "convnext_dw_7x7" in capsys.readouterr().out
    doc = json.loads((out / "layers.json").read_text())
    (row,) = doc["rows"]
    assert row["layer"] == "convnext_dw_7x7" and row["fftbp_ms"] > 0 and row["torch_ms"] is None
    assert set(row["routes"]) == {"forward", "input_grad", "weight_grad"}
