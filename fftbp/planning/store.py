"""Persistent planner state: measured decisions, FFTW wisdom and calibrated constants.

Everything lives in one JSON document per file, written atomically (a temporary file in the
same directory, then ``os.replace``). A file that cannot be read, is not fftbp's, is of another
schema version, or was made on another machine (different fingerprint) is ignored with a warning,
never an exception: wisdom is an optimisation, not a requirement. Malformed decisions in an
otherwise usable wisdom file are dropped one by one (one warning per file).

Several processes may measure layers into one cache: :func:`save_wisdom` holds an exclusive lock
on ``<file>.lock`` (``fcntl.flock``; no lock where ``fcntl`` is unavailable) while it re-reads the
file, merges its decisions and FFTW wisdom with this process's, and replaces it.

Default location: ``$FFTBP_CACHE_DIR``, else ``$XDG_CACHE_HOME/fftbp``, else ``~/.cache/fftbp``.

What a document holds and how decisions, keys and constants are checked is
:mod:`fftbp.planning.schema`; its public names are re-exported here.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import platform
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyfftw

from fftbp.planning.schema import (
    CONSTANT_RANGE,
    FORMAT,
    VERSION,
    constants_problem,
    decision_key,
    valid_decision,
)

_fcntl: ModuleType | None
try:
    import fcntl as _fcntl
except ImportError:  # Windows: no advisory locks, saves are merged but not serialised
    _fcntl = None

__all__ = [
    "CONSTANT_RANGE",
    "FORMAT",
    "VERSION",
    "cache_dir",
    "cpu_model",
    "decision_key",
    "load_constants",
    "load_wisdom",
    "machine_fingerprint",
    "save_constants",
    "save_wisdom",
    "valid_decision",
]

_lock = threading.Lock()
_load_lock = threading.Lock()
#: decision key -> {pass name: {"route", "seconds", "bytes", "runner_up", "error"}}
_decisions: dict[str, dict[str, Any]] = {}
_loaded_default = False


def cache_dir() -> Path:
    """Where wisdom and constants live by default (see the module docstring)."""
    env = os.environ.get("FFTBP_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fftbp"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what ``platform`` reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_fingerprint() -> str:
    """What decides whether timings transfer: CPU, core count, library versions."""
    parts = [cpu_model(), str(os.cpu_count()), np.__version__, pyfftw.__version__]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` at once, via a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _acquire(lock: Path) -> int | None:
    """An open descriptor of ``lock`` holding an exclusive ``flock`` on the file that ``lock``
    names, or None where locks are unavailable (no ``fcntl``, or a file system without them)."""
    if _fcntl is None:
        return None
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX)
            held = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:  # removed by its holder while we waited: lock afresh
            held = False
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return None  # merge unlocked rather than not save
            raise
        except BaseException:
            os.close(fd)
            raise
        if held:
            return fd
        os.close(fd)  # our file was replaced by a newer lock file while we waited


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<path>.lock`` (created beside ``path``) for the block.

    The lock file is removed on release, while still locked; a process that was waiting on the
    removed file finds on waking that the name no longer leads to its file and locks afresh, so
    two processes never both hold "the" lock. Where ``fcntl`` is missing (Windows) or the file
    system refuses locks, the block runs unlocked.
    """
    lock = path.with_name(path.name + ".lock")
    fd = _acquire(lock)
    try:
        yield
    finally:
        if fd is not None:
            try:
                lock.unlink(missing_ok=True)
            finally:
                os.close(fd)


def _read(path: Path, what: str, stacklevel: int = 3) -> dict[str, Any] | None:
    """The document at ``path`` if it is a valid fftbp document for this machine, else None."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        if isinstance(exc, RecursionError):
            exc = ValueError("JSON nested too deeply")
        warnings.warn(
            f"fftbp: ignoring unreadable {what} file {path}: {exc}", stacklevel=stacklevel
        )
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        warnings.warn(
            f"fftbp: ignoring {path}: not an fftbp {what} file (format {found!r}, expected "
            f"{FORMAT!r})",
            stacklevel=stacklevel,
        )
        return None
    if doc.get("version") != VERSION:
        warnings.warn(
            f"fftbp: ignoring {path}: not an fftbp {what} file of this version (it has version "
            f"{doc.get('version')!r}, this fftbp reads version {VERSION} only)",
            stacklevel=stacklevel,
        )
        return None
    if doc.get("fingerprint") != machine_fingerprint():
        warnings.warn(
            f"fftbp: ignoring {what} from {path}: it was made on another machine or with other "
            "library versions (fingerprint mismatch)",
            stacklevel=stacklevel,
        )
        return None
    return doc


# -- decisions + FFTW wisdom ------------------------------------------------------------------
def default_wisdom_path() -> Path:
    """``wisdom.json`` in :func:`cache_dir`."""
    return cache_dir() / "wisdom.json"


def get_decision(key: str) -> dict[str, Any] | None:
    """The decision stored under ``key`` (loading the default file first), or None."""
    _ensure_default_loaded()
    with _lock:
        return _decisions.get(key)


def put_decision(key: str, value: dict[str, Any]) -> None:
    """Record a measured decision and persist it (with FFTW wisdom) to the default file.

    The file is merged, not overwritten: decisions other processes stored meanwhile are kept.
    A malformed decision (see :func:`valid_decision`) is not recorded, with a warning; a file
    that cannot be written only warns.

    Parameters
    ----------
    key
        The decision's key (see :func:`decision_key`).
    value
        The decision, as :func:`valid_decision` describes it.
    """
    if not isinstance(key, str) or not valid_decision(value):
        warnings.warn(
            f"fftbp: not storing the decision for key {key!r}: {value!r} is not a str key with "
            "a well-formed decision (see fftbp.planning.store.valid_decision)",
            stacklevel=2,
        )
        return
    _ensure_default_loaded()
    with _lock:
        _decisions[key] = value
    try:
        save_wisdom(default_wisdom_path())
    except OSError as exc:
        warnings.warn(f"fftbp: could not store wisdom: {exc}", stacklevel=2)


def _ensure_default_loaded() -> None:
    """Load the default wisdom file once per process, if there is one."""
    global _loaded_default
    if _loaded_default:
        return
    with _load_lock:
        if not _loaded_default:
            load_wisdom(default_wisdom_path(), _missing_ok=True)
            _loaded_default = True


def _parse_wisdom(
    doc: dict[str, Any], path: Path, stacklevel: int
) -> tuple[dict[str, dict[str, Any]], tuple[bytes, ...]] | None:
    """The well-formed decisions and the FFTW wisdom of ``doc`` (read from ``path``).

    None, with a warning, if the FFTW wisdom or the decisions object is malformed; malformed
    decisions alone are dropped, with one warning for all of them.
    """
    decisions, fftw = doc.get("decisions"), doc.get("fftw")
    try:
        if not isinstance(decisions, dict):
            raise ValueError(f"'decisions' is {type(decisions).__name__}, not an object")
        if not isinstance(fftw, list) or len(fftw) != 3:
            raise ValueError("'fftw' is not a list of 3 base64 strings")
        wisdom = tuple(base64.b64decode(w.encode("ascii"), validate=True) for w in fftw)
    except (ValueError, TypeError, AttributeError) as exc:
        warnings.warn(f"fftbp: ignoring malformed wisdom file {path}: {exc}", stacklevel=stacklevel)
        return None
    good = {k: v for k, v in decisions.items() if isinstance(k, str) and valid_decision(v)}
    if len(good) < len(decisions):
        bad = [k for k in decisions if k not in good]
        warnings.warn(
            f"fftbp: dropped {len(bad)} of {len(decisions)} decisions in wisdom file {path} "
            f"(first: {bad[0]!r}): each must give 'forward', 'input_grad' and 'weight_grad' a "
            "well-formed route, seconds, bytes, runner_up and error; they are measured again "
            "when needed",
            stacklevel=stacklevel,
        )
    return good, wisdom


def save_wisdom(path: str | os.PathLike[str] | None = None) -> Path:
    """Write the planner's measured decisions and FFTW's wisdom to ``path``, merged.

    Under an exclusive lock on ``<path>.lock``, the file's current decisions (if it is a usable
    wisdom file for this machine) are merged with this process's, which win on the same key;
    its FFTW wisdom is imported first so that the written wisdom holds both. The file is then
    replaced atomically.

    Parameters
    ----------
    path
        Where to write; default ``wisdom.json`` in :func:`cache_dir`.

    Returns
    -------
    Path
        The path written.
    """
    target = Path(path) if path is not None else default_wisdom_path()
    with _file_lock(target):
        theirs: dict[str, dict[str, Any]] = {}
        old = _read(target, "wisdom")
        parsed = _parse_wisdom(old, target, stacklevel=3) if old is not None else None
        if parsed is not None:
            theirs, wisdom = parsed
            pyfftw.import_wisdom(wisdom)
        with _lock:
            decisions = {**theirs, **_decisions}
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": machine_fingerprint(),
            "decisions": decisions,
            "fftw": [base64.b64encode(w).decode("ascii") for w in pyfftw.export_wisdom()],
        }
        _atomic_write(target, json.dumps(doc, indent=1, sort_keys=True))
    return target


def load_wisdom(path: str | os.PathLike[str] | None = None, *, _missing_ok: bool = False) -> bool:
    """Merge decisions and FFTW wisdom from ``path`` into this process's.

    Never raises on a bad file: an unreadable file, one of another format, version or machine,
    or one with malformed FFTW wisdom is ignored with a warning; malformed decisions in a
    usable file are dropped, with one warning naming how many and the first key.

    Parameters
    ----------
    path
        The wisdom file; default ``wisdom.json`` in :func:`cache_dir`.

    Returns
    -------
    bool
        True if the file was used (possibly without some malformed decisions), else False.
    """
    target = Path(path) if path is not None else default_wisdom_path()
    if not target.exists():
        if not _missing_ok:
            warnings.warn(f"fftbp: no wisdom file at {target}", stacklevel=2)
        return False
    doc = _read(target, "wisdom")
    if doc is None:
        return False
    parsed = _parse_wisdom(doc, target, stacklevel=3)
    if parsed is None:
        return False
    decisions, wisdom = parsed
    pyfftw.import_wisdom(wisdom)
    with _lock:
        _decisions.update(decisions)
    return True


# -- calibrated constants ----------------------------------------------------------------------
def constants_path() -> Path:
    """``constants.json`` in :func:`cache_dir`."""
    return cache_dir() / "constants.json"


def save_constants(values: dict[str, float], path: str | os.PathLike[str] | None = None) -> Path:
    """Write calibrated constants for this machine to ``path``, atomically.

    Parameters
    ----------
    values
        The constants by name (see :func:`~fftbp.planning.schema.constants_problem`).
    path
        Where to write; default ``constants.json`` in :func:`cache_dir`.

    Returns
    -------
    Path
        The path written.
    """
    target = Path(path) if path is not None else constants_path()
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": machine_fingerprint(),
        "constants": values,
    }
    _atomic_write(target, json.dumps(doc, indent=1, sort_keys=True))
    return target


def load_constants(path: str | os.PathLike[str] | None = None) -> dict[str, float] | None:
    """Calibrated constants for this machine, or None (shipped defaults apply).

    Parameters
    ----------
    path
        The constants file; default ``constants.json`` in :func:`cache_dir`.

    Returns
    -------
    dict of str to float or None
        The constants; None if the file is missing, or (with a warning) unusable: unreadable,
        of another format, version or machine, or holding a value that is not a finite number
        in ``CONSTANT_RANGE`` (booleans included).
    """
    target = Path(path) if path is not None else constants_path()
    doc = _read(target, "constants")
    if doc is None:
        return None
    values = doc.get("constants")
    problem = constants_problem(values)
    if problem is not None:
        warnings.warn(
            f"fftbp: ignoring malformed constants file {target}: {problem} (run `fftbp "
            "calibrate` again)",
            stacklevel=2,
        )
        return None
    assert isinstance(values, dict)
    return {k: float(v) for k, v in values.items()}
