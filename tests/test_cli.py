"""The fftbp command: output of the plan subcommand, and one-line errors with exit code 2."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

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


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``fftbp argv`` in-process; assert exit status 2 (returned, or argparse's SystemExit)
    and exactly one line on stderr, and return that line."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's errors
        status = exc.code
    captured = capsys.readouterr()
    assert status == 2, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fftbp") and ": error: " in lines[0], lines[0]
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.fixture
def no_study(monkeypatch: pytest.MonkeyPatch) -> None:
    """Error cases must stop before any study starts: make each study's ``run`` fail loudly
    (and fast, rather than run a whole default study should a check regress)."""

    def study_started(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("the study started before the arguments were checked")

    for study in ("crossover", "accuracy", "layers"):
        monkeypatch.setattr(f"fftbp.study.{study}.run", study_started)


_PLAN = ["plan", "--input", "1,1,8,8", "--weight", "1,1,3,3"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["plan", "--input", "8,32,64", "--weight", "32,32,3,3"],
            "input_shape: expected 4 dim",
            id="bad-ndim",
        ),
        pytest.param(
            ["plan", "--input", "8,a,64,64", "--weight", "32,32,3,3"],
            "expected integers",
            id="not-int",
        ),
        pytest.param([*_PLAN, "--mode", "fast"], "invalid choice", id="bad-mode"),
        pytest.param([*_PLAN, "--stride", "0"], "stride:", id="bad-stride"),
        pytest.param([*_PLAN, "--tol", "2"], "tol: expected", id="bad-tol"),
        pytest.param(
            [*_PLAN, "--tol", "x"], "argument --tol: expected a finite float, got 'x'", id="tol-x"
        ),
        pytest.param(
            [*_PLAN, "--tol", "nan"],
            "argument --tol: expected a finite float, got 'nan'",
            id="tol-nan",
        ),
        pytest.param(
            [*_PLAN, "--tol", "1e-4", "--dynamic-range", "0"],
            "dynamic_range: expected",
            id="bad-dynamic-range",
        ),
        pytest.param(
            [
                *["plan", "--input", "2,3,16,16", "--weight", "4,3,3,3"],
                *["--tol", "1e-3", "--dynamic-range", "inf"],
            ],
            "argument --dynamic-range: expected a finite float, got 'inf'",
            id="dynamic-range-inf",
        ),
        pytest.param(
            [*_PLAN, "--tol", "1e-4", "--dynamic-range=-inf"],
            "argument --dynamic-range: expected a finite float, got '-inf'",
            id="dynamic-range-minus-inf",
        ),
        pytest.param(["nope"], "invalid choice", id="bad-command"),
        pytest.param([], "required", id="no-command"),
        pytest.param(
            ["crossover", "--kernels", "3,4"], "--kernels: expected odd sizes", id="even-kernel"
        ),
        pytest.param(
            ["crossover", "--batch", "0"], "--batch: expected a positive int, got 0", id="batch"
        ),
        pytest.param(
            ["crossover", "--channels", "6", "--groups", "4"], "--groups: must divide", id="groups"
        ),
        pytest.param(
            ["crossover", "--kernels", "71", "--size", "64"],
            "exceeds --size=64",
            id="kernel-too-large",
        ),
        pytest.param(["crossover", "--dim", "4"], "invalid choice", id="dim"),
        pytest.param(
            ["accuracy", "--distributions", "lognormal"],
            "--distributions: expected some of",
            id="accuracy-distribution",
        ),
        pytest.param(
            ["accuracy", "--dtypes", "float16"], "--dtypes: expected float32", id="accuracy-dtype"
        ),
        pytest.param(
            ["layers", "--only", "vgg"], "--only: unknown layer(s) vgg", id="layers-unknown"
        ),
        pytest.param(
            ["layers", "--rounds", "0"], "--rounds: expected a positive int, got 0", id="rounds"
        ),
        pytest.param(
            ["layers", "--max-call", "nan"],
            "--max-call: expected positive seconds, got nan",
            id="max-call",
        ),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(argv, message, capsys, no_study):
    assert message in _fails(argv, capsys)


def test_python_m_fftbp_reports_a_bad_argument_in_one_line_with_exit_2():
    """The one test through the real entry point: ``python -m fftbp`` passes main's status on."""
    proc = subprocess.run(
        [sys.executable, "-m", "fftbp", "crossover", "--kernels", "3,4"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "fftbp crossover: error: --kernels: expected odd sizes >= 1 ('same' padding), got (3, 4)"
    ]


def test_plan_with_an_enormous_dynamic_range_plans(capsys):
    # a finite --dynamic-range so large that the error model's arithmetic used to overflow
    argv = ["plan", "--input", "2,3,16,16", "--weight", "4,3,3,3", "--tol", "1e-3"]
    assert main([*argv, "--dynamic-range", "1.7e308"]) == 0
    assert "direct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (OverflowError("int too large to convert to float"), "OverflowError: int too large"),
        (MemoryError(), "MemoryError"),
        (ValueError("input_shape: expected\npositive sizes"), "input_shape: expected positive"),
    ],
    ids=["overflow", "memory", "multi-line-message"],
)
def test_plan_errors_from_the_planner_are_one_line(exc, message, capsys, monkeypatch):
    import fftbp

    def failing_plan(*args: object, **kwargs: object) -> NoReturn:
        raise exc

    monkeypatch.setattr(fftbp, "plan", failing_plan)
    line = _fails(_PLAN, capsys)
    assert line.startswith("fftbp plan: error: ") and message in line, line


class _TookTooLong(BaseException):
    """Raised by ``_time_limit`` (not an Exception: no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block with ``_TookTooLong`` after ``seconds`` (SIGALRM: Unix, main thread)
    rather than let a hang stall the suite."""
    if not hasattr(signal, "setitimer") or threading.current_thread() != threading.main_thread():
        pytest.skip("the time limit needs SIGALRM in the main thread")

    def expire(signum: int, frame: object) -> NoReturn:
        raise _TookTooLong(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_plan_with_a_huge_input_ends_quickly_without_a_traceback(capsys):
    # An input axis of 2**40: at 9108b80 this hung in the transform-size search (it scanned
    # every length in [n, 2n)). Now the planner refuses it at once: no route's workspace for
    # one sample fits this machine's memory. The time limit turns a hang into a failure.
    argv = ["plan", "--input", "1,1,1099511627776", "--weight", "1,1,3"]
    with _time_limit(60):
        status = main(argv)
    captured = capsys.readouterr()
    assert status == 2 and "Traceback" not in captured.err, captured
    assert len(captured.err.splitlines()) == 1, captured.err
    assert "workspace" in captured.err


def _file_in(tmp_path: Path) -> Path:
    """A regular file: no directory can be made under it (not even by root)."""
    f = tmp_path / "a-file"
    f.write_text("not a directory\n")
    return f


# small studies (they must not start: the checks come first)
_STUDIES = {
    "crossover": ["--kernels", "3", "--size", "8", "--batch", "1", "--channels", "1", "--no-torch"],
    "accuracy": ["--kernels", "3", "--sizes", "8", "--distributions", "normal", "--no-plot"],
    "layers": ["--only", "convnext_dw_7x7", "--rounds", "1", "--no-torch"],
}


@pytest.mark.parametrize("under_file", [True, False], ids=["under-a-file", "is-a-file"])
@pytest.mark.parametrize("command", list(_STUDIES))
def test_unwritable_out_fails_before_the_study(command, under_file, tmp_path, capsys, no_study):
    out = _file_in(tmp_path) / "results" if under_file else _file_in(tmp_path)
    line = _fails([command, *_STUDIES[command], "--out", str(out)], capsys)
    assert line.startswith(f"fftbp {command}: error: --out: expected a writable directory (")
    assert line.endswith(f"got {str(out)!r}")
    reason = "Not a directory" if under_file else "exists and is not a directory"
    assert reason in line


def test_out_is_created_and_left_without_a_probe_file(tmp_path, capsys, monkeypatch):
    from fftbp.study import layers

    monkeypatch.setattr(layers, "run", lambda *args, **kwargs: [])
    monkeypatch.setattr(layers, "format_table", lambda rows: "(no rows)")
    out = tmp_path / "new" / "dir"
    assert main(["layers", "--only", "convnext_dw_7x7", "--no-torch", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["layers.csv", "layers.json"]


def test_a_write_that_fails_after_the_study_is_one_line(tmp_path, capsys, monkeypatch):
    from fftbp.study import layers

    def disk_full(*args: object, **kwargs: object) -> NoReturn:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(layers, "run", lambda *args, **kwargs: [])
    monkeypatch.setattr(layers, "format_table", lambda rows: "the table")
    monkeypatch.setattr(layers, "write", disk_full)
    line = _fails(["layers", "--no-torch", "--out", str(tmp_path)], capsys)
    assert "--out: could not write the results ([Errno 28] No space left on device)" in line


class _FakeConstants:
    def to_json(self) -> dict[str, float]:
        return {"fft_s": 1.5e-9}


@pytest.fixture
def fake_calibrate(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Replace the real (slow) calibration; returns the list of ``save`` values it was called
    with."""
    import fftbp.cli

    calls: list[bool] = []

    def calibrate(*, save: bool = True, reps: int = 5) -> _FakeConstants:
        calls.append(save)
        return _FakeConstants()

    monkeypatch.setattr(fftbp.cli, "_calibrate_fn", lambda: calibrate)
    return calls


def test_calibrate_with_an_unwritable_cache_dir_fails_before_measuring(
    tmp_path, capsys, monkeypatch, fake_calibrate
):
    cache = _file_in(tmp_path) / "cache"
    monkeypatch.setenv("FFTBP_CACHE_DIR", str(cache))
    line = _fails(["calibrate"], capsys)
    assert line.startswith("fftbp calibrate: error: FFTBP_CACHE_DIR: expected a writable dir")
    assert "Not a directory" in line and line.endswith(f"got {str(cache)!r}")
    assert fake_calibrate == []


def test_calibrate_no_save_ignores_the_cache_dir(tmp_path, capsys, monkeypatch, fake_calibrate):
    monkeypatch.setenv("FFTBP_CACHE_DIR", str(_file_in(tmp_path) / "cache"))
    assert main(["calibrate", "--no-save"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"fft_s": 1.5e-9} and captured.err == ""
    assert fake_calibrate == [False]


def test_calibrate_stores_the_constants(tmp_path, capsys, monkeypatch, fake_calibrate):
    monkeypatch.setenv("FFTBP_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["calibrate"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "cache" / "constants.json"
    assert out.endswith(f"stored in {path}\n") and '"fft_s": 1.5e-09' in out
    assert json.loads(path.read_text())["constants"] == {"fft_s": 1.5e-9}
    assert sorted(p.name for p in path.parent.iterdir()) == ["constants.json"]


def test_calibrate_prints_the_constants_when_saving_fails_after_measuring(
    tmp_path, capsys, monkeypatch, fake_calibrate
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FFTBP_CACHE_DIR", str(cache))
    import fftbp.cli

    measure = fftbp.cli._calibrate_fn()

    def measure_then_lose_the_cache_dir(**kwargs: bool) -> _FakeConstants:
        # the directory passed the check; while measuring it is replaced by a regular file
        cache.rmdir()
        cache.write_text("")
        return measure(**kwargs)

    monkeypatch.setattr(fftbp.cli, "_calibrate_fn", lambda: measure_then_lose_the_cache_dir)
    assert main(["calibrate"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"fft_s": 1.5e-9}
    (line,) = captured.err.splitlines()
    assert line.startswith("fftbp calibrate: error: could not store the constants (")
    assert line.endswith(f"got {str(cache / 'constants.json')!r}")


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
