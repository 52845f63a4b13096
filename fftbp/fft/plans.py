"""Cached single-threaded pyFFTW plans and the batched transforms built on them.

Spectra live in *frequency-major* layout: a C-contiguous complex array of shape
``(*half_shape, B)`` whose last axis runs over the batch of maps. In that layout the channel sum at
each frequency is a small matrix product that BLAS takes directly, with no transpose. FFTW writes
and reads this layout itself (measured here: 1.1x the cost of the natural layout, far less than
a separate transpose).

Each worker thread transforms its own slice of the batch in sub-chunks through a plan that owns
a small real-space scratch array: the caller's ``fill`` writes a sub-chunk into it (padding,
flipping, dilating on the way) and FFTW writes the spectrum straight into the caller's
frequency-major array; ``irfft_batch`` runs the reverse.

Plans are keyed by everything that affects them and lent out by a bounded pool: a caller checks
a plan out (:func:`checkout`), owns it and its arrays until it hands it back, and a second
caller asking for the same key meanwhile gets a plan of its own. No two calls ever share a plan's
arrays, whichever threads they run on.
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import numpy as np
import pyfftw

from fftbp._config import get_fftw_effort, get_num_threads, parallel_for, timed

__all__ = [
    "MAX_PLANS",
    "aligned",
    "clear_plan_cache",
    "irfft_batch",
    "plan_cache_info",
    "prepare_irfft",
    "rfft_batch",
]

#: Most free plans kept, and most bytes of their buffers: a plan holds its sub-chunk's scratch
#: (at least one cache line of maps, :func:`_chunking`: 12 MB for 8 maps of 72^3), a pruned plan
#: also a complex buffer of its spectra; the least recently used go first
MAX_PLANS = 256
MAX_PLAN_BYTES = 256 << 20
#: Target size of one sub-chunk's real-space scratch: small enough to stay in L2 between the
#: fill copy and the transform (1 MiB L2 per core on the reference machine).
_SCRATCH_BYTES = 512 << 10
_ALIGN = pyfftw.simd_alignment

FillFn = Callable[[np.ndarray, int, int], None]
Index = slice | np.ndarray
ReadFn = Callable[[np.ndarray, int, int], None]


class _Plan:
    """An FFTW plan, its own real-space scratch, and the arrays it is bound to while nobody
    has it checked out (``park``: its own arrays, or for a strided plan a stand-in of the
    spectrum's geometry), so that a cached plan never keeps a caller's array alive."""

    __slots__ = ("fftw", "inner", "nbytes", "park", "rows", "scratch")

    def __init__(
        self,
        fftw: Any,
        scratch: np.ndarray,
        park: tuple[np.ndarray, np.ndarray],
        inner: Any = None,
        rows: np.ndarray | None = None,
        extra: int = 0,
    ):
        self.fftw = fftw
        self.scratch = scratch
        self.park = park
        #: a pruned plan's other stage, between its own arrays (see :func:`_build_pruned`)
        self.inner = inner
        #: a pruned inverse plan's buffer of the rows kept after the first stage
        self.rows = rows
        #: bytes of the buffers it owns (``extra``: those not named above)
        self.nbytes = scratch.nbytes + (0 if rows is None else rows.nbytes) + extra
        fftw.update_arrays(*park)


def _stand_in(like: np.ndarray) -> np.ndarray:
    """An array with ``like``'s shape, strides, dtype and alignment over a few bytes of memory:
    a plan is bound to it only while parked, and every user rebinds the plan to real arrays
    (``update_arrays``) before executing it, so FFTW never reads or writes through it."""
    raw = pyfftw.empty_aligned(2 * _ALIGN, dtype=np.uint8, n=_ALIGN)
    offset = like.ctypes.data % _ALIGN
    base = raw[offset : offset + like.itemsize].view(like.dtype)
    return np.lib.stride_tricks.as_strided(base, shape=like.shape, strides=like.strides)


#: key -> plans not lent out (most recently returned last); LRU over keys
_free: OrderedDict[tuple[Any, ...], list[_Plan]] = OrderedDict()
_free_count = 0
_free_bytes = 0
_cache_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0, "executes": 0, "forward_maps": 0, "inverse_maps": 0}


def clear_plan_cache() -> None:
    """Drop every cached plan (FFTW wisdom stays, so replanning is quick)."""
    global _free_count, _free_bytes
    with _cache_lock:
        _free.clear()
        _free_count = _free_bytes = 0


def plan_cache_info() -> dict[str, int]:
    """Counters: cache ``hits``/``misses``/``size`` (plans not lent out), FFTW ``executes``,
    and the number of maps transformed so far by real-to-complex (``forward_maps``) and
    complex-to-real (``inverse_maps``) transforms."""
    with _cache_lock:
        return {**_stats, "size": _free_count, "bytes": _free_bytes}


def _after_fork_in_child() -> None:
    global _cache_lock, _free_count, _free_bytes
    _cache_lock = threading.Lock()
    _free.clear()  # plans lent out at fork time belong to threads the child does not have
    _free_count = _free_bytes = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def _strided_scratch(
    shape: tuple[int, ...], strides: tuple[int, ...], dtype: np.dtype, aligned: bool
) -> np.ndarray:
    """A throw-away array with the given geometry, to plan on (MEASURE overwrites it)."""
    span = sum((n - 1) * s for n, s in zip(shape, strides)) + dtype.itemsize
    raw = pyfftw.empty_aligned(span + _ALIGN, dtype=np.uint8, n=_ALIGN)
    offset = 0 if aligned else dtype.itemsize
    base = raw[offset : offset + span].view(dtype)
    return np.lib.stride_tricks.as_strided(base, shape=shape, strides=strides)


@contextmanager
def checkout(key: tuple[Any, ...], build: Callable[[], _Plan]) -> Iterator[_Plan]:
    """Lend the caller a plan for ``key`` (a free cached one, else a new one built outside the
    lock) and take it back afterwards; at most :data:`MAX_PLANS` free plans of at most
    :data:`MAX_PLAN_BYTES` in all are kept (and always the one just returned)."""
    global _free_count, _free_bytes
    with _cache_lock:
        free = _free.get(key)
        plan = free.pop() if free else None
        if free is not None and not free:
            del _free[key]  # no key without a free plan (the eviction below relies on it)
        if plan is not None:
            _free_count -= 1
            _free_bytes -= plan.nbytes
            _stats["hits"] += 1
        else:
            _stats["misses"] += 1
    if plan is None:
        plan = build()
    try:
        yield plan
    finally:
        fftw = plan.fftw
        if fftw.input_array is not plan.park[0] or fftw.output_array is not plan.park[1]:
            fftw.update_arrays(*plan.park)  # drop the caller's arrays
        with _cache_lock:
            _free.setdefault(key, []).append(plan)
            _free.move_to_end(key)
            _free_count += 1
            _free_bytes += plan.nbytes
            while _free_count > 1 and (_free_count > MAX_PLANS or _free_bytes > MAX_PLAN_BYTES):
                oldest = next(iter(_free))
                _free_bytes -= _free[oldest].pop(0).nbytes
                _free_count -= 1
                if not _free[oldest]:
                    del _free[oldest]


def _strided_key(
    forward: bool, shape: tuple[int, ...], real: np.dtype, spec_view: np.ndarray, prune: int
) -> tuple[tuple[Any, ...], bool, str]:
    aligned = spec_view.ctypes.data % _ALIGN == 0
    effort = get_fftw_effort()
    key = (forward, shape, real.str, spec_view.shape, spec_view.strides, aligned, effort)
    return (("pruned", prune, *key) if prune else key), aligned, effort


def _strided_plan(
    forward: bool,
    view: np.ndarray,
    shape: tuple[int, ...],
    real: np.dtype,
    on_view: bool,
    prune: int = 0,
) -> AbstractContextManager[_Plan]:
    """Check out a plan between scratch maps and the frequency-major ``view`` (built on
    ``view`` itself if ``on_view``, see :func:`_build_strided`); ``prune`` > 0: a pruned plan
    of that many rows along the first axis (:func:`_build_pruned`)."""
    key, aligned, effort = _strided_key(forward, shape, real, view, prune)
    args = (forward, view.shape[-1], shape, real, view, aligned, effort, on_view)
    if prune:
        return checkout(key, lambda: _build_pruned(*args, prune))
    return checkout(key, lambda: _build_strided(*args))


def _planning_target(
    spec_view: np.ndarray, real: np.dtype, aligned: bool, on_view: bool
) -> np.ndarray:
    """The frequency-major spectrum a plan is made on, as FFTW sees it: ``(b, *half)``, a
    transposed view of ``(*half, b)``. ``on_view``: ``spec_view`` itself (its contents may be
    overwritten: a spectrum about to be written), else a throw-away array of its geometry,
    which spans the whole frequency-major buffer."""
    if on_view:
        spec = spec_view
    else:
        complex_dt = np.result_type(real, np.complex64)
        spec = _strided_scratch(spec_view.shape, spec_view.strides, complex_dt, aligned)
    return np.moveaxis(spec, -1, 0)


def _build_strided(
    forward: bool,
    b: int,
    shape: tuple[int, ...],
    real: np.dtype,
    spec_view: np.ndarray,
    aligned: bool,
    effort: str,
    on_view: bool,
) -> _Plan:
    """A plan between its own scratch maps and a frequency-major view of ``spec_view``'s
    geometry, made on :func:`_planning_target`."""
    scratch = pyfftw.empty_aligned((b, *shape), dtype=real, n=_ALIGN)
    spec_t = _planning_target(spec_view, real, aligned, on_view)
    # forward plans keep their real input intact, so the zero padding in the scratch survives
    # from one fill to the next (see fftbp.kernels.fft.place_maps); c2r must destroy its input
    flags = [effort] if forward else [effort, "FFTW_DESTROY_INPUT"]
    if not aligned:
        flags.append("FFTW_UNALIGNED")
    axes = tuple(range(1, len(shape) + 1))
    if forward:
        fftw = pyfftw.FFTW(
            scratch, spec_t, axes=axes, direction="FFTW_FORWARD", flags=flags, threads=1
        )
        return _Plan(fftw, scratch, (scratch, _stand_in(spec_t)))
    fftw = pyfftw.FFTW(
        spec_t, scratch, axes=axes, direction="FFTW_BACKWARD", flags=flags, threads=1
    )
    return _Plan(fftw, scratch, (_stand_in(spec_t), scratch))


#: Skip the rows of the first axis that hold no data (or are not read) when they are at least
#: half (measured: 0.95x / 0.81x the whole forward / inverse at 31 of 80 rows, 0.6x at 15 of 72)
PRUNE_BELOW = 0.5


def prunes(rows: int, shape: tuple[int, ...]) -> bool:
    """Whether maps of transform size ``shape`` with data in (or read from) ``rows`` rows of
    the first axis are transformed by a pruned plan."""
    return len(shape) > 1 and rows <= PRUNE_BELOW * shape[0]


def _build_pruned(
    forward: bool,
    b: int,
    shape: tuple[int, ...],
    real: np.dtype,
    spec_view: np.ndarray,
    aligned: bool,
    effort: str,
    on_view: bool,
    rows: int,
) -> _Plan:
    """A transform of maps of which only ``rows`` rows of the first axis matter: the data rows
    (forward: the trailing axes over those rows into a buffer whose other rows stay zero, then
    the first axis into the spectrum) or the rows read (inverse: the first axis, then the
    caller gathers the rows, :func:`_run`, then the trailing axes). docs/design.md, "Pruned
    transforms". ``plan.scratch``: the real maps, ``(b, rows, *shape[1:])``; ``plan.fftw``:
    the stage bound to the spectrum; ``plan.inner``: the other stage."""
    complex_dt = np.result_type(real, np.complex64)
    half = (*shape[:-1], shape[-1] // 2 + 1)
    scratch = pyfftw.empty_aligned((b, rows, *shape[1:]), dtype=real, n=_ALIGN)
    full = pyfftw.empty_aligned((b, *half), dtype=complex_dt, n=_ALIGN)
    spec_t = _planning_target(spec_view, real, aligned, on_view)
    trailing = tuple(range(2, len(shape) + 1))
    extra = [] if aligned else ["FFTW_UNALIGNED"]
    if forward:
        part = full[:, :rows]
        inner = pyfftw.FFTW(scratch, part, axes=trailing, flags=[effort], threads=1)
        # the first axis' c2c keeps its input (FFTW's default), so the zero rows stay zero
        outer = pyfftw.FFTW(full, spec_t, axes=(1,), flags=[effort, *extra], threads=1)
        full[:] = 0  # planning wrote into it
        return _Plan(outer, scratch, (full, _stand_in(spec_t)), inner=inner, extra=full.nbytes)
    kept = pyfftw.empty_aligned((b, rows, *half[1:]), dtype=complex_dt, n=_ALIGN)
    destroy = [effort, "FFTW_DESTROY_INPUT"]
    outer = pyfftw.FFTW(
        spec_t, full, axes=(1,), direction="FFTW_BACKWARD", flags=destroy + extra, threads=1
    )
    inner = pyfftw.FFTW(kept, scratch, axes=trailing, direction="FFTW_BACKWARD", flags=destroy)
    return _Plan(
        outer, scratch, (_stand_in(spec_t), full), inner=inner, rows=kept, extra=full.nbytes
    )


#: Bytes of a cache line: in the frequency-major spectrum the maps of a sub-chunk are adjacent
#: at every frequency, so a sub-chunk that is not a whole number of lines wide shares a line
#: with its neighbour at every frequency, and two workers writing them fight over each line
#: (3D dense k7, 16 maps in sub-chunks of 4: a step ran 2.4x slower on 2 threads than on 1).
LINE_BYTES = 64


def _chunking(total: int, shape: tuple[int, ...], real: np.dtype) -> int:
    """Maps per sub-chunk: a whole number of cache lines of the spectrum (no two workers write
    one line; also keeps each sub-chunk's view aligned), scratch under ``_SCRATCH_BYTES``
    where that allows, and at least two sub-chunks per worker where the batch allows
    (dynamic load balance)."""
    map_bytes = math.prod(shape) * real.itemsize
    line = LINE_BYTES // (2 * real.itemsize)  # maps per line of the spectrum
    per = -(-total // (2 * get_num_threads()))
    sub = max(1, min(per, _SCRATCH_BYTES // map_bytes))
    return max(line, sub - sub % line)


def rfft_batch(spec: np.ndarray, shape: tuple[int, ...], fill: FillFn, rows: int = 0) -> None:
    """Real-to-complex transforms of a batch of maps into the frequency-major array ``spec``.

    Parameters
    ----------
    spec
        C-contiguous complex64/complex128 array of shape ``(*shape[:-1], shape[-1]//2+1, B)``.
    shape
        Transform size per axis.
    fill
        ``fill(scratch, b0, b1)`` must write maps ``b0:b1`` entirely (zeros included) into
        ``scratch`` of shape ``(b1 - b0, *shape)``, or ``(b1 - b0, rows, *shape[1:])``.
    rows
        If > 0 (and the maps have two or more axes): the maps hold data in their first
        ``rows`` rows only, and are transformed by a pruned plan (:func:`_build_pruned`).
    """
    if not 0 <= rows <= shape[0]:
        raise ValueError(f"rows: expected 0 to {shape[0]} (shape[0]), got {rows}")
    _run(True, spec, shape, fill, rows)


def prepare_irfft(spec: np.ndarray, shape: tuple[int, ...], rows: int = 0) -> None:
    """Make sure the plans :func:`irfft_batch` will use on ``spec`` exist, planning them on
    ``spec`` itself: call it before ``spec`` is written (planning overwrites it). Planning on
    a throw-away array of the same strided geometry would allocate a buffer as large as
    ``spec`` for every plan made. ``rows``: the number of rows the pruned inverse will read
    (see :func:`irfft_batch`), 0 for whole maps."""
    total = spec.shape[-1]
    real = np.dtype(np.float32 if spec.dtype == np.complex64 else np.float64)
    sub = _chunking(total, shape, real)
    starts = list(range(0, total, sub))
    workers = min(get_num_threads(), len(starts))
    # as many plans per geometry as workers use at once: the full sub-chunks', the last one's
    last = [starts[-1]] if starts[-1] not in starts[:workers] else []
    views = [spec[..., b0 : b0 + sub] for b0 in starts[:workers] + last]
    keys = Counter(_strided_key(False, shape, real, v, rows)[0] for v in views)
    with _cache_lock:  # the usual case, every plan already there: mark them used, return
        if all(len(_free.get(key, ())) >= count for key, count in keys.items()):
            for key in keys:
                _free.move_to_end(key)
            return
    with ExitStack() as held:
        for view in views:
            held.enter_context(_strided_plan(False, view, shape, real, True, rows))


def irfft_batch(
    spec: np.ndarray, shape: tuple[int, ...], read: ReadFn, rows: Index | None = None
) -> None:
    """Complex-to-real transforms (unnormalised) of the frequency-major array ``spec``.

    ``read(scratch, b0, b1)`` receives maps ``b0:b1`` in natural layout, ``(b1 - b0, *shape)``;
    with ``rows`` (positions along the first axis, a slice or an index array) only those rows,
    ``(b1 - b0, len(rows), *shape[1:])``, computed by a pruned plan. ``spec`` is destroyed.
    """
    if isinstance(rows, np.ndarray) and (rows.dtype.kind not in "iu" or rows.ndim != 1):
        raise ValueError(f"rows: expected a slice or a 1D array of positions, got {rows!r}")
    count = 0 if rows is None else np.arange(shape[0])[rows].size  # IndexError past shape[0]
    _run(False, spec, shape, read, count, rows)


def _run(
    forward: bool,
    spec: np.ndarray,
    shape: tuple[int, ...],
    io: FillFn,
    prune: int = 0,
    rows: Index | None = None,
) -> None:
    total = spec.shape[-1]
    real = np.dtype(np.float32 if spec.dtype == np.complex64 else np.float64)
    sub = _chunking(total, shape, real)
    if len(shape) < 2:
        prune, rows = 0, None  # nothing to prune in one dimension: a plain 1D transform

    def work(_slot: int, b0: int, b1: int) -> None:
        view = spec[..., b0:b1]
        view_t = np.moveaxis(view, -1, 0)
        # a forward transform is about to overwrite the view: FFTW may plan on it
        with _strided_plan(forward, view, shape, real, forward, prune) as plan:
            if forward:
                io(plan.scratch, b0, b1)
                if plan.inner is not None:
                    with timed("transforms"):
                        plan.inner.execute()
                    plan.fftw.update_arrays(plan.fftw.input_array, view_t)
                else:
                    plan.fftw.update_arrays(plan.scratch, view_t)
                execute(plan)
            else:
                plan.fftw.update_arrays(view_t, plan.fftw.output_array)
                execute(plan)
                if plan.inner is not None:
                    assert rows is not None and plan.rows is not None
                    with timed("copies"):
                        if isinstance(rows, slice):
                            plan.rows[...] = plan.fftw.output_array[:, rows]
                        else:
                            np.take(plan.fftw.output_array, rows, axis=1, out=plan.rows)
                    with timed("transforms"):
                        plan.inner.execute()
                io(plan.scratch, b0, b1)

    parallel_for(work, total, sub)
    with _cache_lock:  # a pruned plan runs two FFTW executes per sub-chunk
        _stats["executes"] += -(-total // sub) * (2 if prune else 1)
        _stats["forward_maps" if forward else "inverse_maps"] += total


def execute(plan: _Plan) -> None:
    """Run a plan the caller has checked out, accounting the time when profiling is on."""
    with timed("transforms"):
        plan.fftw.execute()


def aligned(a: np.ndarray) -> bool:
    """Whether ``a`` starts on FFTW's SIMD alignment (required to rebind an aligned plan)."""
    return a.ctypes.data % _ALIGN == 0


def count_maps(forward: bool, maps: int) -> None:
    """Record ``maps`` transformed maps (for callers driving their own plans, such as
    :func:`fftbp.fft.owned.owned_plan`)."""
    with _cache_lock:
        _stats["forward_maps" if forward else "inverse_maps"] += maps
