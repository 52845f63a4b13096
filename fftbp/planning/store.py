"""Persistent planner state: measured decisions, FFTW wisdom and calibrated constants.

Everything lives in one JSON document per file, written atomically (a temporary file in the
same directory, then ``os.replace``). A file that cannot be read, is not fftbp's, or was made on
another machine (different fingerprint) is ignored with a warning, never an exception: wisdom is
an optimisation, not a requirement.

Default location: ``$FFTBP_CACHE_DIR``, else ``$XDG_CACHE_HOME/fftbp``, else ``~/.cache/fftbp``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyfftw

__all__ = [
    "cache_dir",
    "cpu_model",
    "load_constants",
    "load_wisdom",
    "machine_fingerprint",
    "save_constants",
    "save_wisdom",
]

FORMAT = "fftbp-wisdom"
VERSION = 1

_lock = threading.Lock()
#: decision key -> {pass name: {"route": route json, "seconds": float}}
_decisions: dict[str, dict[str, Any]] = {}
_loaded_default = False


def cache_dir() -> Path:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, what: str) -> dict[str, Any] | None:
    """The document at ``path`` if it is a valid fftbp document for this machine, else None."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        warnings.warn(f"fftbp: ignoring unreadable {what} file {path}: {exc}", stacklevel=3)
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        warnings.warn(f"fftbp: ignoring {path}: not an fftbp {what} file", stacklevel=3)
        return None
    if doc.get("fingerprint") != machine_fingerprint():
        warnings.warn(
            f"fftbp: ignoring {what} from {path}: it was made on another machine or with other "
            "library versions (fingerprint mismatch)",
            stacklevel=3,
        )
        return None
    return doc


# -- decisions + FFTW wisdom ------------------------------------------------------------------
def default_wisdom_path() -> Path:
    return cache_dir() / "wisdom.json"


def get_decision(key: str) -> dict[str, Any] | None:
    _ensure_default_loaded()
    with _lock:
        return _decisions.get(key)


def put_decision(key: str, value: dict[str, Any]) -> None:
    """Record a measured decision and persist it (with FFTW wisdom) to the default file."""
    _ensure_default_loaded()
    with _lock:
        _decisions[key] = value
    try:
        save_wisdom(default_wisdom_path())
    except OSError as exc:
        warnings.warn(f"fftbp: could not store wisdom: {exc}", stacklevel=2)


def _ensure_default_loaded() -> None:
    global _loaded_default
    if _loaded_default:
        return
    _loaded_default = True
    load_wisdom(default_wisdom_path(), _missing_ok=True)


def save_wisdom(path: str | os.PathLike[str] | None = None) -> Path:
    """Write the planner's measured decisions and FFTW's wisdom to ``path`` (atomically).

    Default: ``wisdom.json`` in :func:`cache_dir`. Returns the path written.
    """
    target = Path(path) if path is not None else default_wisdom_path()
    with _lock:
        decisions = dict(_decisions)
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
    """Merge decisions and FFTW wisdom from ``path``; ``False`` (with a warning) if unusable."""
    target = Path(path) if path is not None else default_wisdom_path()
    if not target.exists():
        if not _missing_ok:
            warnings.warn(f"fftbp: no wisdom file at {target}", stacklevel=2)
        return False
    doc = _read(target, "wisdom")
    if doc is None:
        return False
    decisions, fftw = doc.get("decisions"), doc.get("fftw")
    try:
        if not isinstance(decisions, dict) or not isinstance(fftw, list) or len(fftw) != 3:
            raise ValueError("missing decisions or FFTW wisdom")
        wisdom = tuple(base64.b64decode(w.encode("ascii"), validate=True) for w in fftw)
    except (ValueError, TypeError, AttributeError) as exc:
        warnings.warn(f"fftbp: ignoring malformed wisdom file {target}: {exc}", stacklevel=2)
        return False
    pyfftw.import_wisdom(wisdom)
    with _lock:
        _decisions.update(decisions)
    return True


# -- calibrated constants ----------------------------------------------------------------------
def constants_path() -> Path:
    return cache_dir() / "constants.json"


def save_constants(values: dict[str, float], path: str | os.PathLike[str] | None = None) -> Path:
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
    """Calibrated constants for this machine, or None (shipped defaults apply)."""
    target = Path(path) if path is not None else constants_path()
    doc = _read(target, "constants")
    if doc is None:
        return None
    values = doc.get("constants")
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and v > 0 for k, v in values.items()
    ):
        warnings.warn(f"fftbp: ignoring malformed constants file {target}", stacklevel=2)
        return None
    return {k: float(v) for k, v in values.items()}
