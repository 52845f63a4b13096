"""Process-wide settings: thread count, workspace limit, FFTW planning effort, the worker pool.

Threading scheme (chosen by measurement, see ``docs/design.md``): every FFTW plan and every BLAS
call runs single-threaded, and fftbp splits work (batch chunks for transforms, frequency chunks
for the channel products) over its own pool of Python threads, which release the GIL inside FFTW
and BLAS. OpenBLAS is set to one thread for the duration of an fftbp call and restored after;
this keeps the OpenBLAS and OpenMP pools from spinning against each other (2-5x slowdowns
measured when they alternate).
"""

from __future__ import annotations

import contextvars
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "WorkspaceWarning",
    "blas_single_threaded",
    "call_settings",
    "current_call",
    "get_fftw_effort",
    "get_num_threads",
    "get_workspace_limit",
    "median_time",
    "parallel_for",
    "parallel_map",
    "parallel_tasks",
    "set_fftw_effort",
    "set_num_threads",
    "set_workspace_limit",
]

_FFTW_EFFORTS = ("FFTW_ESTIMATE", "FFTW_MEASURE", "FFTW_PATIENT", "FFTW_EXHAUSTIVE")
#: Fraction of physical memory that one fftbp call may use for its workspace by default.
DEFAULT_WORKSPACE_FRACTION = 0.25


class WorkspaceWarning(UserWarning):
    """One sample of a pass needs more workspace than the limit allows: fftbp computes it one
    sample at a time and uses more than the limit (a plan made with ``memory_limit`` never
    does: its routes fit, or planning raises ``MemoryError``)."""


def physical_memory() -> int:
    """Bytes of physical memory (8 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {raw!r}")
    return value


_state: dict[str, Any] = {
    "threads": _env_int("FFTBP_NUM_THREADS", os.cpu_count() or 1),
    "workspace": _env_int(
        "FFTBP_WORKSPACE_LIMIT", int(DEFAULT_WORKSPACE_FRACTION * physical_memory())
    ),
    "effort": os.environ.get("FFTBP_FFTW_EFFORT", "FFTW_MEASURE"),
}
if _state["effort"] not in _FFTW_EFFORTS:
    raise ValueError(
        f"FFTBP_FFTW_EFFORT: expected one of {', '.join(_FFTW_EFFORTS)}, got {_state['effort']!r}"
    )
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def get_num_threads() -> int:
    """Number of threads fftbp uses (default: all cores, or ``FFTBP_NUM_THREADS``).

    Inside an fftbp call this is the count the call started with (:func:`call_settings`), so a
    :func:`set_num_threads` from another thread never changes a running call's split of work.
    """
    call = _call.get()
    return call.threads if call is not None else int(_state["threads"])


def set_num_threads(n: int) -> None:
    """Set the number of threads fftbp uses for transforms and channel products.

    Calls already running keep their thread count; the worker pool grows when needed and is
    never shut down under a running call.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    _state["threads"] = n


@dataclass(frozen=True)
class CallSettings:
    """What one fftbp call runs with, fixed when it starts: worker threads and workspace bytes."""

    threads: int
    limit: int


_call: contextvars.ContextVar[CallSettings | None] = contextvars.ContextVar(
    "fftbp_call", default=None
)


def current_call() -> CallSettings:
    """The settings of the running call, or those a call would start with now."""
    call = _call.get()
    if call is not None:
        return call
    return CallSettings(int(_state["threads"]), int(_state["workspace"]))


@contextmanager
def call_settings(limit: int | None = None) -> Iterator[CallSettings]:
    """Fix the thread count and the workspace limit for the calls made in this context (this
    thread), and hold BLAS at one thread meanwhile. ``limit`` (a plan's, or what a forward pass
    ran under) replaces the global limit; nested contexts keep the outer thread count and never
    raise the outer limit."""
    outer = _call.get()
    threads = outer.threads if outer is not None else int(_state["threads"])
    if limit is None:
        limit = outer.limit if outer is not None else int(_state["workspace"])
    elif outer is not None:
        limit = min(outer.limit, int(limit))
    settings = CallSettings(threads, int(limit))
    token = _call.set(settings)
    try:
        with blas_single_threaded():
            yield settings
    finally:
        _call.reset(token)


def get_workspace_limit() -> int:
    """Bytes of scratch memory one fftbp call may use (default: 25% of physical memory).

    Inside a call, the limit that call runs under (a plan's ``memory_limit`` when smaller).
    """
    call = _call.get()
    return call.limit if call is not None else int(_state["workspace"])


def set_workspace_limit(nbytes: int) -> None:
    """Bound the workspace (spectra, unfolded matrices) of one call; work is chunked to fit."""
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 1:
        raise ValueError(f"nbytes: expected a positive int (bytes), got {nbytes!r}")
    _state["workspace"] = nbytes


def get_fftw_effort() -> str:
    """FFTW planner effort used for new plans (default ``'FFTW_MEASURE'``)."""
    return str(_state["effort"])


def set_fftw_effort(effort: str) -> None:
    """Set the FFTW planner effort for plans made from now on."""
    if effort not in _FFTW_EFFORTS:
        raise ValueError(f"effort: expected one of {', '.join(_FFTW_EFFORTS)}, got {effort!r}")
    _state["effort"] = effort


def _get_pool(n: int) -> ThreadPoolExecutor:
    """A pool with at least ``n - 1`` workers. A larger one replaces a smaller one without
    shutting it down: calls holding the old one finish on it, and its idle workers exit when
    it is garbage."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n - 1:
            _pool_size = max(n - 1, 1)
            _pool = ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix="fftbp")
        return _pool


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's worker threads: start a fresh pool on demand,
    with fresh locks (a lock held by a parent thread at fork time would never be released)."""
    global _pool, _pool_size, _pool_lock, _blas_lock, _blas_depth, _profile_lock
    _pool, _pool_size = None, 0
    _pool_lock = threading.Lock()
    _blas_lock = threading.Lock()
    _blas_depth = 0
    _blas_saved.clear()
    _profile_lock = threading.Lock()


def split_range(n: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """Split ``range(n)`` into at most ``parts`` contiguous pieces whose starts are multiples of
    ``align`` (so that array views cut there keep their SIMD alignment)."""
    parts = max(1, min(parts, -(-n // align)))
    step = -(-n // parts)
    step = -(-step // align) * align
    return [(a, min(a + step, n)) for a in range(0, n, step)]


#: ``on`` while this thread runs a range of :func:`parallel_map`
_inside = threading.local()


def parallel_map(fn: Callable[[int, int, int], None], ranges: list[tuple[int, int]]) -> None:
    """Run ``fn(slot, start, stop)`` for each range, one range per thread slot.

    The calling thread takes the last range itself. Exceptions propagate. Called from inside a
    range (a nested section), the ranges run one after another on the calling thread: the
    workers are busy with the outer ranges, and waiting for them could deadlock.
    """
    if getattr(_inside, "on", False):
        for i, (a, b) in enumerate(ranges):
            fn(i, a, b)
        return

    def marked(slot: int, a: int, b: int, _fn: Callable[[int, int, int], None] = fn) -> None:
        _inside.on = True
        try:
            _fn(slot, a, b)
        finally:
            _inside.on = False

    fn = marked
    if _profile is not None:  # account idle worker time (CPU-seconds) while profiling
        t_start = time.perf_counter()
        busy = [0.0]

        def traced(slot: int, a: int, b: int, _fn=fn) -> None:
            t0 = time.perf_counter()
            try:
                _fn(slot, a, b)
            finally:
                with _profile_lock:
                    busy[0] += time.perf_counter() - t0

        fn = traced
    if len(ranges) == 1:
        fn(0, *ranges[0])
    else:
        pool = _get_pool(len(ranges))
        # each task runs in a copy of the caller's context: the call's settings travel along
        futures = [
            pool.submit(contextvars.copy_context().run, fn, i, a, b)
            for i, (a, b) in enumerate(ranges[:-1])
        ]
        error: BaseException | None = None
        try:
            fn(len(ranges) - 1, *ranges[-1])
        except BaseException as exc:
            error = exc
        for fut in futures:
            try:
                fut.result()
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error
    if _profile is not None:
        wall = time.perf_counter() - t_start
        record("parallel", wall)
        record("idle", wall * get_num_threads() - busy[0])


def parallel_for(fn: Callable[[int, int, int], None], n: int, chunk: int) -> None:
    """Run ``fn(slot, a, b)`` over ``[0, n)`` in pieces of ``chunk``, handed out dynamically.

    Each worker thread (``slot``) takes the next piece when it finishes one, so a worker that
    is slowed down (a preempted core on a shared machine) does not hold the others at the
    barrier the way a static split does.
    """
    pieces = [(a, min(a + chunk, n)) for a in range(0, n, max(chunk, 1))]
    if not pieces:
        return
    lock = threading.Lock()
    queue = iter(pieces)

    def worker(slot: int, _a: int, _b: int) -> None:
        while True:
            with lock:
                piece = next(queue, None)
            if piece is None:
                return
            fn(slot, *piece)

    workers = min(get_num_threads(), len(pieces))
    parallel_map(worker, [(0, 0)] * workers)


def parallel_tasks(tasks: Sequence[tuple[Any, ...]], body: Callable[..., None]) -> None:
    """``body(slot, *task)`` for every task, handed out dynamically to the worker threads."""

    def work(slot: int, a: int, b: int) -> None:
        for t in range(a, b):
            body(slot, *tasks[t])

    parallel_for(work, len(tasks), 1)


def median_time(fn: Callable[[], object], reps: int = 1, warm_up: bool = True) -> float:
    """Median wall time of ``reps`` calls of ``fn``, after one untimed warm-up call (unless
    ``warm_up`` is false: the caller has warmed it up)."""
    if warm_up:
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -- BLAS threads -------------------------------------------------------------------------------
_blas_lock = threading.Lock()
_blas_depth = 0
_blas_saved: list[tuple[Any, int]] = []
_blas_libs: list[Any] | None = None


def _blas_controllers() -> list[Any]:
    global _blas_libs
    if _blas_libs is None:
        from threadpoolctl import ThreadpoolController

        _blas_libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas_libs


@contextmanager
def blas_single_threaded() -> Iterator[None]:
    """Hold every BLAS library at one thread while fftbp computes (re-entrant, thread-safe)."""
    global _blas_depth
    with _blas_lock:
        if _blas_depth == 0:
            libs = _blas_controllers()
            _blas_saved[:] = [(lib, lib.num_threads) for lib in libs]
            for lib in libs:
                lib.set_num_threads(1)
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for lib, n in _blas_saved:
                    lib.set_num_threads(n)
                _blas_saved.clear()


# -- optional time accounting (used by benchmarks/layers.py) ------------------------------------
_profile: dict[str, float] | None = None
_profile_lock = threading.Lock()


@contextmanager
def profiling() -> Iterator[dict[str, float]]:
    """Collect CPU-seconds (summed over threads) spent in FFTW executes (``transforms``), channel
    products (``products``) and the copies into and out of transform buffers (``copies``), plus
    the wall time inside worker-pool sections (``parallel``) and the workers' idle CPU-seconds
    there (``idle``). Outside those sections the other workers idle too (``wall - parallel``)."""
    global _profile
    _profile = {
        "transforms": 0.0,
        "products": 0.0,
        "copies": 0.0,
        "parallel": 0.0,  # wall seconds inside worker-pool sections
        "idle": 0.0,  # worker CPU-seconds spent waiting inside those sections
    }
    try:
        yield _profile
    finally:
        _profile = None


def record(category: str, seconds: float) -> None:
    prof = _profile
    if prof is not None:
        with _profile_lock:
            prof[category] += seconds


class _Timer:
    """Context manager behind :func:`timed` (a plain class: a generator-based context manager
    costs microseconds per use, which profiling would then report as overhead)."""

    __slots__ = ("category", "t0")

    def __init__(self, category: str) -> None:
        self.category = category
        self.t0 = 0.0

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        record(self.category, time.perf_counter() - self.t0)


class _NoTimer:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_TIMER = _NoTimer()


def timed(category: str) -> _Timer | _NoTimer:
    """Account the block's time to ``category`` when :func:`profiling` is on (else free)."""
    return _NO_TIMER if _profile is None else _Timer(category)


os.register_at_fork(after_in_child=_after_fork_in_child)
