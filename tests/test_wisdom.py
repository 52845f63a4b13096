"""Measured decisions and FFTW wisdom: persistence across processes, corrupt files, constants."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fftbp
from fftbp.engine.calibrate import calibrate
from fftbp.planning import store
from fftbp.planning.cost import Constants
from fftbp.planning.planner import constants, set_constants

LAYER = "((2, 3, 24, 24), (4, 3, 7, 7))"


def _run(code: str, cache: Path) -> dict:
    env = {**os.environ, "FFTBP_CACHE_DIR": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_measured_decisions_round_trip_between_processes(tmp_path):
    path = tmp_path / "moved.json"
    first = _run(
        f"""
        import json, fftbp
        fftbp.set_fftw_effort("FFTW_ESTIMATE")
        p = fftbp.plan(*{LAYER}, padding=3, mode="measure")
        fftbp.save_wisdom({str(path)!r})
        print(json.dumps({{"routes": [p.choice(k).route.label() for k in
            ("forward", "input_grad", "weight_grad")], "timed": len(p.timings)}}))
        """,
        tmp_path / "cache_a",
    )
    assert first["timed"] >= 2  # measure mode timed several candidates
    assert (tmp_path / "cache_a" / "wisdom.json").exists()  # and stored the decision itself
    second = _run(
        f"""
        import json, fftbp
        ok = fftbp.load_wisdom({str(path)!r})
        p = fftbp.plan(*{LAYER}, padding=3, mode="measure")
        print(json.dumps({{"ok": ok, "routes": [p.choice(k).route.label() for k in
            ("forward", "input_grad", "weight_grad")], "timed": len(p.timings),
            "measured": p.forward_choice.measured}}))
        """,
        tmp_path / "cache_b",
    )
    assert second["ok"] is True
    assert second["routes"] == first["routes"]
    assert second["timed"] == 0 and second["measured"] is True  # recalled, not re-measured


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "ignoring unreadable wisdom file"),
        ('{"format": "something-else"}', "not an fftbp wisdom file"),
        (
            json.dumps(
                {"format": "fftbp-wisdom", "version": store.VERSION, "fingerprint": "0" * 16}
            ),
            "made on another machine",
        ),
        ("MACHINE", "malformed wisdom file"),
    ],
    ids=["not-json", "foreign-format", "other-machine", "malformed"],
)
def test_unusable_wisdom_file_only_warns(tmp_path, content, message):
    if content == "MACHINE":  # right machine, broken payload
        content = json.dumps(
            {
                "format": "fftbp-wisdom",
                "version": store.VERSION,
                "fingerprint": store.machine_fingerprint(),
                "decisions": {},
                "fftw": ["%%%", "", ""],
            }
        )
    path = tmp_path / "w.json"
    path.write_text(content)
    with pytest.warns(UserWarning, match=message):
        assert fftbp.load_wisdom(path) is False
    # planning still works
    assert fftbp.plan((1, 1, 8, 8), (1, 1, 3, 3)).forward_choice.seconds > 0


def test_missing_wisdom_file_warns(tmp_path):
    with pytest.warns(UserWarning, match="no wisdom file"):
        assert fftbp.load_wisdom(tmp_path / "absent.json") is False


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "w.json"
    assert fftbp.save_wisdom(target) == target
    doc = json.loads(target.read_text())
    assert doc["format"] == "fftbp-wisdom" and len(doc["fftw"]) == 3
    assert [p.name for p in target.parent.iterdir()] == ["w.json"]


def test_calibrate_measures_positive_constants_and_they_round_trip(tmp_path):
    k = calibrate(reps=1, save=False)
    assert all(v > 0 for v in k.to_json().values())
    path = store.save_constants(k.to_json(), tmp_path / "c.json")
    assert Constants(**store.load_constants(path)) == k


def test_constants_from_an_older_cost_model_are_not_mixed_in(tmp_path, monkeypatch):
    """A calibration is fitted jointly: a file that lacks one of today's constants is ignored
    (with a warning naming it), not merged with the shipped values."""
    monkeypatch.setenv("FFTBP_CACHE_DIR", str(tmp_path))
    old = Constants().to_json()
    del old["product_item_s"]
    old["product_flops"] = 1e6  # would change every plan if it were used
    store.save_constants(old)
    set_constants(None)
    try:
        with pytest.warns(UserWarning, match="product_item_s"):
            assert constants() == Constants()
    finally:
        set_constants(None)


def test_calibration_files_do_not_pin_the_constants_calibrate_does_not_measure(
    tmp_path, monkeypatch
):
    """A file holds every field, but the per-tile, per-map and weight-gradient-share constants
    always come from the shipped values (a file written before they were re-fitted would
    otherwise keep the old ones), and a file without them still loads its measured rates."""
    from fftbp.planning.cost import NOT_CALIBRATED

    monkeypatch.setenv("FFTBP_CACHE_DIR", str(tmp_path))
    saved = Constants().to_json() | {"product_flops": 7e10, "tile_s": 1.0, "map_s": 1.0}
    del saved["direct_wg_share"]  # written before this constant existed
    store.save_constants(saved)
    set_constants(None)
    try:
        k = constants()
        assert k.product_flops == 7e10  # measured: taken from the file
        for name in NOT_CALIBRATED:
            assert getattr(k, name) == getattr(Constants(), name)
    finally:
        set_constants(None)
