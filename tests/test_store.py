"""fftbp.planning.store: concurrent writers, hostile files, decision validation, canonical keys."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fftbp.planning import store

ROUTE = {"base": "fft", "prep": "", "tile": [8, 8], "precision": ""}


def _decision() -> dict[str, Any]:
    """A well-formed decision, as the planner stores it."""
    entry = {
        "route": dict(ROUTE),
        "seconds": 1.5e-3,
        "bytes": 4096,
        "runner_up": [{"base": "direct", "prep": "", "tile": None, "precision": ""}, 2e-3],
        "error": None,
    }
    return {p: copy.deepcopy(entry) for p in ("forward", "input_grad", "weight_grad")}


def _doc(**extra: Any) -> dict[str, Any]:
    """The envelope of a file this machine wrote, with ``extra`` fields."""
    return {
        "format": store.FORMAT,
        "version": store.VERSION,
        "fingerprint": store.machine_fingerprint(),
        **extra,
    }


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory and an empty in-memory decision table."""
    monkeypatch.setenv("FFTBP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(store, "_decisions", {})
    monkeypatch.setattr(store, "_loaded_default", False)
    return tmp_path


# -- 1. concurrent writers ----------------------------------------------------------------------
#: each writer process: wait until all are ready, then store 3 decisions of its own, interleaved
_WRITER = """
import json, random, sys, time
from pathlib import Path
from fftbp.planning import store

me, barrier, writers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
decision = json.loads(sys.argv[4])
(barrier / me).touch()
deadline = time.monotonic() + 60
while len(list(barrier.iterdir())) < writers and time.monotonic() < deadline:
    time.sleep(0.001)
rng = random.Random(me)
for i in range(3):
    store.put_decision(f"{me}-{i}", decision)
    time.sleep(rng.uniform(0.002, 0.02))
"""


def _run_writers(cache: Path, code: str = _WRITER, writers: int = 2) -> dict[str, Any]:
    """Run ``writers`` processes of ``code`` on one cache; the decisions the file holds after."""
    barrier = cache / "barrier"
    barrier.mkdir(parents=True)
    env = {**os.environ, "FFTBP_CACHE_DIR": str(cache)}
    args = [str(barrier), str(writers), json.dumps(_decision())]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), f"w{i}", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(writers)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "Warning" not in err, err
    return json.loads((cache / "wisdom.json").read_text())["decisions"]


def test_concurrent_processes_keep_every_decision(tmp_path):
    decisions = _run_writers(tmp_path / "cache")
    assert sorted(decisions) == [f"w{w}-{i}" for w in range(2) for i in range(3)]
    assert all(v == _decision() for v in decisions.values())
    # the lock file is removed after each save; nothing else is left beside the wisdom file
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["barrier", "wisdom.json"]


def test_save_merges_the_file_and_ours_win(fresh):
    path = fresh / "wisdom.json"
    theirs, ours = _decision(), _decision()
    ours["forward"]["seconds"] = 9.0
    path.write_text(json.dumps(_doc(decisions={"a": theirs, "b": theirs}, fftw=["", "", ""])))
    store._decisions["b"] = ours
    assert store.save_wisdom(path) == path
    written = json.loads(path.read_text())["decisions"]
    assert written == {"a": theirs, "b": ours}


def test_save_over_an_unusable_file_replaces_it(fresh):
    path = fresh / "wisdom.json"
    path.write_text("{not json")
    store._decisions["k"] = _decision()
    with pytest.warns(UserWarning, match="ignoring unreadable wisdom file"):
        store.save_wisdom(path)
    assert json.loads(path.read_text())["decisions"] == {"k": _decision()}


def test_save_without_fcntl_still_merges(fresh, monkeypatch):
    """Where fcntl is missing (Windows) saves are unlocked but still merged."""
    monkeypatch.setattr(store, "_fcntl", None)
    path = fresh / "wisdom.json"
    path.write_text(json.dumps(_doc(decisions={"a": _decision()}, fftw=["", "", ""])))
    store._decisions["b"] = _decision()
    store.save_wisdom(path)
    assert sorted(json.loads(path.read_text())["decisions"]) == ["a", "b"]
    assert sorted(p.name for p in fresh.iterdir()) == ["wisdom.json"]


def test_put_decision_stores_in_the_default_file(fresh):
    store.put_decision("k", _decision())
    assert store.get_decision("k") == _decision()
    assert json.loads((fresh / "wisdom.json").read_text())["decisions"] == {"k": _decision()}
    assert sorted(p.name for p in fresh.iterdir()) == ["wisdom.json"]


def test_put_decision_refuses_a_malformed_decision(fresh):
    bad = _decision()
    bad["forward"]["seconds"] = float("nan")
    with pytest.warns(UserWarning, match="not storing the decision for key 'k'"):
        store.put_decision("k", bad)
    assert store.get_decision("k") is None
    assert not (fresh / "wisdom.json").exists()


# -- 2. hostile files ---------------------------------------------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000


def test_deeply_nested_wisdom_file_only_warns(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(DEEP)
    with pytest.warns(UserWarning, match="ignoring unreadable wisdom file .*nested too deeply"):
        assert store.load_wisdom(path) is False


def test_deeply_nested_constants_file_only_warns(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(DEEP)
    with pytest.warns(UserWarning, match="ignoring unreadable constants file .*nested too deeply"):
        assert store.load_constants(path) is None


def test_wisdom_file_of_version_1_is_ignored_naming_both_versions(tmp_path):
    path = tmp_path / "w.json"
    doc = _doc(decisions={"k": _decision()}, fftw=["", "", ""])
    doc["version"] = 1
    path.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match=r"not an fftbp wisdom file.*version 1.*version 2"):
        assert store.load_wisdom(path) is False


# -- 3. decision validation ---------------------------------------------------------------------
def _broken(change: str) -> Any:
    """``_decision()`` with one thing wrong, named by ``change``."""
    d = _decision()
    f = d["forward"]
    if change == "not-a-dict":
        return [d]
    if change == "missing-pass":
        del d["weight_grad"]
    elif change == "extra-pass":
        d["backward"] = f
    elif change == "pass-not-a-dict":
        d["forward"] = None
    elif change == "missing-field":
        del f["error"]
    elif change == "extra-field":
        f["extra"] = 1
    elif change == "route-missing-precision":
        del f["route"]["precision"]
    elif change == "route-extra-key":
        f["route"]["kernel"] = "x"
    elif change.startswith("route-"):
        what, _, value = change[6:].partition("=")
        f["route"][what] = json.loads(value)
    else:
        what, _, value = change.partition("=")
        f[what] = json.loads(value)
    return d


@pytest.mark.parametrize(
    "change",
    [
        "not-a-dict",
        "missing-pass",
        "extra-pass",
        "pass-not-a-dict",
        "missing-field",
        "extra-field",
        "route-missing-precision",
        "route-extra-key",
        'route-base="cuda"',
        "route-base=1",
        'route-prep="padding"',
        'route-precision="float32"',
        "route-tile=[]",
        "route-tile=[1,2,3,4]",
        "route-tile=[0]",
        "route-tile=[-4]",
        "route-tile=[4.0]",
        "route-tile=[true]",
        "route-tile=[2147483649]",
        "route-tile=8",
        "seconds=-1",
        "seconds=1e400",
        'seconds="1"',
        "seconds=null",
        "bytes=-1",
        "bytes=1.5",
        "bytes=true",
        "runner_up=[]",
        "runner_up=[null, 1.0]",
        'runner_up=[{"base": "fft"}, 1.0]',
        'runner_up=[{"base": "fft", "prep": "", "tile": null, "precision": ""}, "x"]',
        "error=1e400",
        'error="small"',
    ],
)
def test_valid_decision_rejects(change):
    assert store.valid_decision(_broken(change)) is False


def test_valid_decision_accepts_well_formed_entries():
    assert store.valid_decision(_decision())
    d = _decision()
    d["forward"].update(runner_up=None, error=1e-6, seconds=0, bytes=0)
    d["input_grad"]["route"].update(base="torch", prep="dilation", tile=None, precision="float64")
    d["weight_grad"]["route"].update(prep="polyphase", tile=[2**31, 1, 7])
    assert store.valid_decision(d)


def test_malformed_decisions_are_dropped_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "_decisions", {})
    path = tmp_path / "w.json"
    decisions = {
        "good-1": _decision(),
        "bad-1": _broken("seconds=-1"),
        "good-2": _decision(),
        "bad-2": _broken('route-base="cuda"'),
        "bad-3": 7,
    }
    path.write_text(json.dumps(_doc(decisions=decisions, fftw=["", "", ""])))
    with pytest.warns(UserWarning) as record:
        assert store.load_wisdom(path) is True
    assert len(record) == 1
    message = str(record[0].message)
    assert "dropped 3 of 5 decisions" in message and "'bad-1'" in message
    assert str(path) in message
    assert sorted(store._decisions) == ["good-1", "good-2"]


# -- 4. canonical keys --------------------------------------------------------------------------
def test_decision_key_is_canonical():
    a = {"input": [2, 3, 24, 24], "dtype": "float32", "padding": (3, 3), "tol": None}
    b = dict(reversed(list(a.items())))
    b["padding"] = [3, 3]
    assert list(a) != list(b)
    assert store.decision_key(a) == store.decision_key(b)
    assert json.loads(store.decision_key(a))["schema"] == store.VERSION
    assert " " not in store.decision_key(a)
    assert store.decision_key({"x": ((1, 2), [3])}) == store.decision_key({"x": [[1, 2], (3,)]})
    assert store.decision_key({"x": 1}) != store.decision_key({"x": 2})


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"dtype": np.dtype("float32")}, TypeError),
        ({"n": np.int64(3)}, TypeError),
        ({"shape": [1, np.int64(3)]}, TypeError),
        ({"nested": {"a": 1}}, TypeError),
        ({"s": {1, 2}}, TypeError),
        ({1: "int name"}, TypeError),
        ({"tol": float("nan")}, ValueError),
        ({"tol": [float("inf")]}, ValueError),
        ({"schema": 1}, ValueError),
    ],
    ids=["dtype", "np-int", "np-int-in-list", "dict", "set", "int-name", "nan", "inf", "schema"],
)
def test_decision_key_rejects(fields, error):
    with pytest.raises(error, match="decision_key"):
        store.decision_key(fields)


# -- 5. constants -------------------------------------------------------------------------------
def _constants_file(tmp_path: Path, raw_value: str) -> Path:
    path = tmp_path / "c.json"
    head = json.dumps(_doc(constants={}))[:-1].replace('"constants": {}', '"constants": ')
    path.write_text(head + '{"call_s": 1e-5, "copy_bytes": ' + raw_value + "}}")
    return path


@pytest.mark.parametrize("raw", ["5e-324", "1e400", "-1e400", "true", "0", "-1", "1e16", '"1"'])
def test_implausible_constants_are_rejected(tmp_path, raw):
    path = _constants_file(tmp_path, raw)
    json.loads(path.read_text())  # the file itself is valid JSON
    with pytest.warns(UserWarning, match="ignoring malformed constants file .*copy_bytes"):
        assert store.load_constants(path) is None


@pytest.mark.parametrize("raw", ["1e-15", "1e15", "50000000000", "2.8e9"])
def test_plausible_constants_are_accepted(tmp_path, raw):
    values = store.load_constants(_constants_file(tmp_path, raw))
    assert values == {"call_s": 1e-5, "copy_bytes": float(json.loads(raw))}


def test_constants_round_trip(tmp_path):
    path = store.save_constants({"call_s": 1e-5, "copy_bytes": 5e10}, tmp_path / "c.json")
    assert store.load_constants(path) == {"call_s": 1e-5, "copy_bytes": 5e10}


def test_stored_decision_that_does_not_fit_the_layer_is_measured_again(tmp_path, monkeypatch):
    """A stored tile of the wrong rank, or larger than the output, passes the structural check
    but does not fit the layer: measure mode times the layer again instead of failing later."""
    import numpy as np

    import fftbp
    from fftbp._params import ConvSpec
    from fftbp.planning.planner import Ask
    from fftbp.testing import reference_conv, relative_error

    monkeypatch.setenv("FFTBP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(store, "_decisions", {})
    monkeypatch.setattr(store, "_loaded_default", False)
    shape, wshape = (2, 3, 24, 24), (4, 3, 7, 7)
    spec = ConvSpec.from_shapes(shape, wshape, padding=3)
    key = store.decision_key(Ask.make().fields(spec))
    for tile in ([5], [500, 500]):  # wrong rank; absurdly large for 24x24 outputs
        route = {"base": "fft", "prep": "", "tile": tile, "precision": ""}
        entry = {"route": route, "seconds": 1e-3, "bytes": 1, "runner_up": None, "error": None}
        store.put_decision(key, {p: dict(entry) for p in ("forward", "input_grad", "weight_grad")})
        assert store.get_decision(key)["forward"]["route"]["tile"] == tile
        p = fftbp.plan(shape, wshape, padding=3, mode="measure")
        assert p.forward_choice.route.tile != tuple(tile)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        w = np.random.default_rng(1).standard_normal(wshape).astype(np.float32)
        assert (
            relative_error(fftbp.conv(x, w, padding=3, method=p), reference_conv(x, w, padding=3))
            < 1e-5
        )
        fftbp.planning.planner._cache.clear()
