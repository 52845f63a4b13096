"""The schema of fftbp's stored documents, and the checks that decide whether one is usable.

Both files in the cache directory (see :mod:`fftbp.planning.store`) are one JSON object with the
same header::

    {"format": "fftbp-wisdom", "version": 2, "fingerprint": "<16 hex digits>", ...}

``format`` is :data:`FORMAT` for both files; ``version`` is :data:`VERSION`, the schema version
of the files and of :func:`decision_key`, and a file of another version is ignored whole;
``fingerprint`` names the machine and library versions the timings were taken on. The rest:

- wisdom file: ``"decisions"``, an object mapping keys made by :func:`decision_key` to measured
  decisions (structure in :func:`valid_decision`), and ``"fftw"``, a list of the 3 strings of
  FFTW wisdom (double, single, long double), each base64-encoded;
- constants file: ``"constants"``, an object mapping names to calibrated constants, each a
  finite number (not a bool) in :data:`CONSTANT_RANGE` (see :func:`constants_problem`).

Validated here: the structure of one decision, the fields of a decision key and the constants
object; these checks never read or write files. Checking the header and the ``"fftw"`` list, and
what is done with a document that fails, belongs to :mod:`fftbp.planning.store`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CONSTANT_RANGE",
    "FORMAT",
    "VERSION",
    "constants_problem",
    "decision_key",
    "valid_decision",
]

FORMAT = "fftbp-wisdom"
#: schema version of the files and of :func:`decision_key`; files of another version are ignored
VERSION = 2
#: calibrated constants outside this range are corrupt (denormals, zeros, overflows)
CONSTANT_RANGE = (1e-15, 1e15)

_PASSES = frozenset({"forward", "input_grad", "weight_grad"})
_PASS_FIELDS = frozenset({"route", "seconds", "bytes", "runner_up", "error"})
_ROUTE_FIELDS = frozenset({"base", "prep", "tile", "precision"})
_BASES = ("fft", "direct", "torch")
_PREPS = ("", "polyphase", "dilation")
_PRECISIONS = ("", "float64")
_MAX_TILE = 2**31


def _finite(x: object) -> bool:
    """``x`` is a finite int or float (not a bool)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond float range
        return False


def _tile_size(t: object) -> bool:
    """``t`` is one tile extent: an int (not a bool) in ``1..2**31``."""
    return isinstance(t, int) and not isinstance(t, bool) and 0 < t <= _MAX_TILE


def _valid_route(route: object) -> bool:
    """``route`` is a stored route: exactly base, prep, tile and precision, each allowed."""
    if not isinstance(route, dict) or set(route) != _ROUTE_FIELDS:
        return False
    tile = route["tile"]
    if tile is not None and not (
        isinstance(tile, (list, tuple)) and 1 <= len(tile) <= 3 and all(map(_tile_size, tile))
    ):
        return False
    return (
        isinstance(route["base"], str)
        and route["base"] in _BASES
        and isinstance(route["prep"], str)
        and route["prep"] in _PREPS
        and isinstance(route["precision"], str)
        and route["precision"] in _PRECISIONS
    )


def _valid_pass(entry: object) -> bool:
    """``entry`` is one pass of a decision: route, seconds, bytes, runner_up and error."""
    if not isinstance(entry, dict) or set(entry) != _PASS_FIELDS:
        return False
    seconds, nbytes, runner, error = (entry[k] for k in ("seconds", "bytes", "runner_up", "error"))
    return (
        _valid_route(entry["route"])
        and _finite(seconds)
        and seconds >= 0
        and isinstance(nbytes, int)
        and not isinstance(nbytes, bool)
        and nbytes >= 0
        and (
            runner is None
            or (
                isinstance(runner, (list, tuple))
                and len(runner) == 2
                and _valid_route(runner[0])
                and _finite(runner[1])
            )
        )
        and (error is None or _finite(error))
    )


def valid_decision(value: object) -> bool:
    """Whether ``value`` is a well-formed measured decision (the structure only).

    A decision maps exactly the passes ``"forward"``, ``"input_grad"`` and ``"weight_grad"``
    each to a dict of exactly:

    - ``"route"``: a dict of exactly ``"base"`` (``"fft"``, ``"direct"`` or ``"torch"``),
      ``"prep"`` (``""``, ``"polyphase"`` or ``"dilation"``), ``"tile"`` (None or a list of
      1 to 3 ints in ``1..2**31``) and ``"precision"`` (``""`` or ``"float64"``);
    - ``"seconds"``: a finite number >= 0;
    - ``"bytes"``: an int >= 0;
    - ``"runner_up"``: None or ``[route, seconds]`` with a route as above and a finite number;
    - ``"error"``: None or a finite number.

    Whether a tile's rank matches the layer is for the caller to check.

    Parameters
    ----------
    value
        Anything, typically one entry of a wisdom file's ``"decisions"``.

    Returns
    -------
    bool
        True if ``value`` has the structure above. Never raises.
    """
    return (
        isinstance(value, dict)
        and set(value) == _PASSES
        and all(_valid_pass(entry) for entry in value.values())
    )


def _check_key_field(value: object, where: str) -> None:
    """``TypeError`` unless ``value`` is a JSON scalar or a (nested) list/tuple of them."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"decision_key: {where} is {value!r}; numbers must be finite")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_key_field(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"decision_key: {where} is {value!r} of type {type(value).__name__}; fields may hold "
        "only str, int, float, bool, None and lists/tuples of them (pass a numpy dtype as its "
        "name, a numpy number as int or float)"
    )


def decision_key(fields: Mapping[str, Any]) -> str:
    """The canonical key under which a measured decision is stored.

    ``json.dumps({"schema": VERSION, **fields})`` with sorted keys and no spaces, so the same
    fields give the same key whatever their order, and a tuple the same key as a list.

    Parameters
    ----------
    fields
        What the decision depends on, by name. Values: str, int, float (finite), bool, None, or
        lists/tuples of these, nested to any depth. ``"schema"`` is reserved.

    Returns
    -------
    str
        The key, one line of JSON.

    Raises
    ------
    TypeError
        If a name is not a str or a value is of another type (e.g. a numpy dtype or integer).
    ValueError
        If a field is named ``"schema"`` or a float is not finite.
    """
    for name, value in fields.items():
        if not isinstance(name, str):
            raise TypeError(f"decision_key: field name {name!r} is not a str")
        if name == "schema":
            raise ValueError("decision_key: the field name 'schema' is reserved (the version)")
        _check_key_field(value, f"field {name!r}")
    return json.dumps(
        {"schema": VERSION, **fields}, sort_keys=True, separators=(",", ":"), allow_nan=False
    )


def constants_problem(values: object) -> str | None:
    """What is wrong with a constants object, or None if nothing is.

    Parameters
    ----------
    values
        Anything, typically the ``"constants"`` entry of a constants file.

    Returns
    -------
    str or None
        None if ``values`` maps str names to numbers (not bools) that are finite and in
        :data:`CONSTANT_RANGE`; else the first problem found, as a phrase for a warning.
        Never raises.
    """
    if not isinstance(values, dict):
        return f"'constants' is {type(values).__name__}, not an object"
    low, high = CONSTANT_RANGE
    for name, value in values.items():
        if not isinstance(name, str):
            return f"constant name {name!r} is not a string"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} is {value!r}, not a number"
        if not (_finite(value) and low <= value <= high):
            return f"{name} is {value!r}; a constant must be finite and in [{low:g}, {high:g}]"
    return None
