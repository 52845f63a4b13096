"""The execution engine under the conditions users create: several threads, thread counts and
limits changed mid-flight, forked workers, workspace limits, odd sizes, non-finite data.

Each test here failed on the code before the engine (commit 9108b80) and passes now.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fftbp
from fftbp._params import ConvSpec
from fftbp.planning import planner
from fftbp.testing import (
    reference_conv,
    reference_input_grad,
    reference_weight_grad,
    relative_error,
)

GROUPINGS = {"dense": (6, 6, 1), "grouped": (6, 6, 3), "depthwise": (6, 6, 6)}
METHODS = ["fft", "fft_tiled", "direct", "auto"]


@pytest.fixture
def two_workers():
    old = fftbp.get_num_threads()
    fftbp.set_num_threads(2)
    yield
    fftbp.set_num_threads(old)


def _race(fn, n: int, threads: int = 4, rounds: int = 3) -> int:
    """Run ``fn(i)`` for i < n serially, then from ``threads`` threads at once (released
    together by a barrier), ``rounds`` times; the number of results that differ."""
    serial = [fn(i) for i in range(n)]
    bad = 0
    for _ in range(rounds):
        bar = threading.Barrier(threads)

        def worker(t: int, bar: threading.Barrier = bar) -> list[tuple[int, object]]:
            bar.wait()
            return [(i, fn(i)) for i in range(t, n, threads)]

        with ThreadPoolExecutor(threads) as ex:
            for fut in [ex.submit(worker, t) for t in range(threads)]:
                for i, r in fut.result():
                    ref = serial[i]
                    same = (
                        all(np.array_equal(a, b) for a, b in zip(r, ref))
                        if isinstance(ref, tuple)
                        else np.array_equal(r, ref)
                    )
                    bad += not same
    return bad


def _layer(grouping: str, rng: np.random.Generator, size: int = 26, k: int = 7):
    c, f, groups = GROUPINGS[grouping]
    w = rng.standard_normal((f, c // groups, k, k))
    xs = [rng.standard_normal((2, c, size, size)) for _ in range(8)]
    gs = [rng.standard_normal((2, f, size, size)) for _ in range(8)]
    return w, groups, xs, gs


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("grouping", list(GROUPINGS))
def test_shared_layer_from_four_threads(grouping, method, rng, two_workers):
    w, groups, xs, gs = _layer(grouping, rng)
    layer = fftbp.Conv(w, padding=3, groups=groups, method=method)

    def step(i: int):
        y, res = layer.forward_step(xs[i])
        grads = layer.backward(gs[i], residuals=res)
        return y, grads.input, grads.weight

    assert _race(lambda i: layer.forward(xs[i]), 8) == 0
    assert _race(step, 8) == 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("grouping", list(GROUPINGS))
def test_functions_from_four_threads(grouping, method, rng, two_workers):
    w, groups, xs, gs = _layer(grouping, rng)
    kw = dict(padding=3, groups=groups, method=method)
    assert _race(lambda i: fftbp.conv(xs[i], w, **kw), 8) == 0
    assert _race(lambda i: fftbp.conv_input_grad(xs[i].shape, w, gs[i], **kw), 8) == 0
    assert _race(lambda i: fftbp.conv_weight_grad(xs[i], w.shape, gs[i], **kw), 8) == 0


def test_set_num_threads_while_other_threads_compute(rng):
    """Toggling the thread count never breaks a running call (it used to shut the worker pool
    down under it: 'cannot schedule new futures after shutdown') nor changes its result."""
    old = fftbp.get_num_threads()
    w, groups, xs, gs = _layer("grouped", rng, size=40, k=9)
    serial = [
        fftbp.conv_weight_grad(x, w.shape, g, padding=4, groups=groups, method="fft")
        for x, g in zip(xs, gs)
    ]
    stop = threading.Event()

    def toggle() -> None:
        n = 0
        while not stop.is_set():
            fftbp.set_num_threads(1 + n % 3)
            n += 1
            time.sleep(0.0005)

    t = threading.Thread(target=toggle)
    t.start()
    try:
        with ThreadPoolExecutor(3) as ex:
            futs = [
                ex.submit(fftbp.conv_weight_grad, x, w.shape, g, padding=4, groups=groups, method=m)
                for _ in range(3)
                for x, g in zip(xs, gs)
                for m in ("fft",)
            ]
            results = [f.result() for f in futs]
    finally:
        stop.set()
        t.join()
        fftbp.set_num_threads(old)
    for i, r in enumerate(results):
        np.testing.assert_allclose(r, serial[i % len(serial)], rtol=1e-12, atol=1e-12)


def _child_conv(queue) -> None:  # runs in a forked child
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 20, 20))
    w = rng.standard_normal((4, 3, 5, 5))
    y = fftbp.conv(x, w, padding=2, method="fft")
    queue.put(relative_error(y, reference_conv(x, w, padding=2)))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_forked_child_computes_after_the_parent_did(rng):
    """The worker pool of the parent does not exist in a forked child (DataLoader workers):
    the child starts its own instead of waiting forever for the parent's threads."""
    old = fftbp.get_num_threads()
    fftbp.set_num_threads(2)
    try:
        x = rng.standard_normal((2, 3, 20, 20))
        fftbp.conv(x, rng.standard_normal((4, 3, 5, 5)), padding=2, method="fft")  # pool up
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child_conv, args=(q,))
        p.start()
        p.join(60)
        hung = p.is_alive()
        if hung:
            p.kill()
        assert not hung, "the forked child hung"
        assert p.exitcode == 0
        assert q.get(timeout=5) < 1e-12
    finally:
        fftbp.set_num_threads(old)


@pytest.mark.parametrize("grouping", ["dense", "depthwise"])
@pytest.mark.parametrize("method", ["fft", "auto"])
def test_limit_changed_between_forward_and_backward(grouping, method, rng):
    """Backward uses what forward kept, under the limit forward ran with."""
    c, f, groups = GROUPINGS[grouping]
    w = rng.standard_normal((f, c // groups, 9, 9))
    x = rng.standard_normal((3, c, 32, 32))
    g = rng.standard_normal((3, f, 32, 32))
    layer = fftbp.Conv(w, padding=4, groups=groups, method=method)
    layer.forward(x)
    old = fftbp.get_workspace_limit()
    try:
        fftbp.set_workspace_limit(30_000)
        grads = layer.backward(g)
    finally:
        fftbp.set_workspace_limit(old)
    kw = dict(padding=4, groups=groups)
    assert relative_error(grads.weight, reference_weight_grad(x, w.shape, g, **kw)) < 1e-12
    assert relative_error(grads.input, reference_input_grad(x.shape, w, g, **kw)) < 1e-12


def _workspace(fn) -> tuple[int, object]:
    """Peak bytes traced during ``fn()`` beyond its result (after a warm-up call)."""
    fn()
    fftbp.fft.clear_plan_cache()  # plans made during the call count too
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak - out.nbytes, out


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "kw", "limit"),
    [
        ((8, 16, 96, 96), (16, 16, 31, 31), dict(padding=15), 16 << 20),
        ((4, 16, 64, 64), (16, 16, 15, 15), dict(padding=7), 8 << 20),
        ((4, 16, 64, 64), (16, 16, 15, 15), dict(padding=7), 12 << 20),
        ((6, 8, 64, 64), (8, 1, 31, 31), dict(padding=15, groups=8), 4 << 20),
        ((4, 8, 48, 48), (8, 8, 7, 7), dict(padding=3, stride=2), 2 << 20),
    ],
    ids=["issue-16MB", "dense-8MB", "dense-12MB", "depthwise-4MB", "strided-2MB"],
)
def test_plan_with_memory_limit_runs_within_it(x_shape, w_shape, kw, limit, rng):
    p = fftbp.plan(x_shape, w_shape, memory_limit=limit, **kw)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    g = rng.standard_normal(p.spec.output_shape).astype(np.float32)
    calls = {
        "forward": lambda: fftbp.conv(x, w, method=p, **kw),
        "input_grad": lambda: fftbp.conv_input_grad(x.shape, w, g, method=p, **kw),
        "weight_grad": lambda: fftbp.conv_weight_grad(x, w.shape, g, method=p, **kw),
    }
    for name, fn in calls.items():
        used, _ = _workspace(fn)
        assert p.choice(name).bytes <= limit
        assert used <= limit, f"{name} by {p.choice(name).route.label()}: {used} > {limit}"
        assert used <= p.choice(name).bytes  # the plan's figure bounds what the run uses


def test_plan_defaults_to_the_global_workspace_limit():
    old = fftbp.get_workspace_limit()
    try:
        fftbp.set_workspace_limit(16 << 20)
        p = fftbp.plan((8, 16, 96, 96), (16, 16, 31, 31), padding=15)
    finally:
        fftbp.set_workspace_limit(old)
    assert p.memory_limit == 16 << 20
    assert all(p.choice(q).bytes <= 16 << 20 for q in ("forward", "input_grad", "weight_grad"))


def test_forced_method_beyond_the_limit_warns_and_stays_correct(rng):
    x = rng.standard_normal((3, 6, 32, 32))
    w = rng.standard_normal((6, 6, 9, 9))
    old = fftbp.get_workspace_limit()
    try:
        fftbp.set_workspace_limit(20_000)
        with pytest.warns(fftbp.WorkspaceWarning, match=r"workspace: the forward pass .* by fft"):
            y = fftbp.conv(x, w, padding=4, method="fft")
    finally:
        fftbp.set_workspace_limit(old)
    assert relative_error(y, reference_conv(x, w, padding=4)) < 1e-12


def test_sizes_past_memory_are_refused_at_once():
    t0 = time.perf_counter()
    with pytest.raises(MemoryError, match=r"workspace"):
        fftbp.plan((1, 1, 2**40), (1, 1, 3))
    w, g = np.ones((1, 1, 3)), np.ones((1, 1, 2))
    with pytest.raises(MemoryError):
        fftbp.conv_input_grad((1, 1, 2**40), w, g, stride=2**39, method="direct")
    with pytest.raises(MemoryError):
        fftbp.conv_input_grad((1, 1, 2**40), w, g, stride=2**39)
    assert time.perf_counter() - t0 < 5


def test_non_finite_data_with_tol_is_a_clear_error(rng):
    x = rng.standard_normal((2, 3, 16, 16))
    g = rng.standard_normal((2, 4, 16, 16))
    x[0, 0, 3, 3] = np.inf
    with pytest.raises(ValueError, match=r"input: contains NaN or Inf; tol= needs finite data"):
        fftbp.conv_weight_grad(x, (4, 3, 5, 5), g, padding=2, tol=1e-3)
    with pytest.raises(ValueError, match=r"dynamic_range: expected a finite number >= 1, got inf"):
        fftbp.plan((2, 3, 16, 16), (4, 3, 5, 5), tol=1e-3, dynamic_range=float("inf"))
    # a finite but enormous range plans (the range saturates) instead of overflowing
    p = fftbp.plan((2, 3, 16, 16), (4, 3, 5, 5), padding=2, tol=1e-3, dynamic_range=1e308)
    assert p.forward_choice.route.algorithm == "direct"


def test_forced_plans_are_bounded(rng, monkeypatch):
    monkeypatch.setattr(planner, "MAX_CACHED", 16)
    w = rng.standard_normal((2, 2, 3))
    for n in range(4, 60):
        fftbp.conv(rng.standard_normal((1, 2, n)), w, method="fft")
    assert len(planner._cache) <= 16


def test_pending_forward_passes_with_explicit_residuals(rng):
    w = rng.standard_normal((4, 3, 5, 5))
    layer = fftbp.Conv(w, padding=2, method="fft")
    xs = [rng.standard_normal((2, 3, 16, 16)) for _ in range(3)]
    gs = [rng.standard_normal((2, 4, 16, 16)) for _ in range(3)]
    pending = [layer.forward_step(x) for x in xs]
    for x, g, (_, res) in reversed(list(zip(xs, gs, pending))):
        grads = layer.backward(g, residuals=res)
        ref = reference_weight_grad(x, w.shape, g, padding=2)
        assert relative_error(grads.weight, ref) < 1e-12


def test_geometry_is_normalised_once():
    with pytest.raises(ValueError, match="'same' needs stride 1"):
        fftbp.Conv(np.ones((4, 3, 5, 4)), stride=(1, 2), padding="same")
    layer = fftbp.Conv(np.ones((4, 3, 5, 4)), padding="same", dilation=2)
    assert layer.geometry.padding == ((4, 4), (3, 3))
    spec = layer.geometry.spec((2, 3, 20, 20))
    assert spec == ConvSpec.from_shapes((2, 3, 20, 20), (4, 3, 5, 4), padding="same", dilation=2)


def test_plans_are_data():
    p = fftbp.plan((2, 3, 16, 16), (4, 3, 5, 5), padding=2)
    assert not any(hasattr(p, name) for name in ("run", "forward", "input_grad", "weight_grad"))


def test_a_copy_of_residuals_keeps_its_spectrum(rng):
    """The kept spectrum goes back to the layer's pool only when the array itself is garbage:
    a copy of the residuals still reads it after the original is gone."""
    import copy

    w = rng.standard_normal((4, 3, 5, 5))
    layer = fftbp.Conv(w, padding=2, method="fft")
    x, g = rng.standard_normal((2, 3, 16, 16)), rng.standard_normal((2, 4, 16, 16))
    _, res = layer.forward_step(x)
    assert res.xf is not None
    kept = copy.copy(res)
    del res
    layer.forward_step(rng.standard_normal((2, 3, 16, 16)))  # would reuse a returned buffer
    grads = layer.backward(g, residuals=kept)
    assert relative_error(grads.weight, reference_weight_grad(x, w.shape, g, padding=2)) < 1e-12


@pytest.mark.parametrize("method", ["fft", "direct"])
def test_nan_in_the_weight_gives_nan_gradients_not_an_error(method, rng):
    w = rng.standard_normal((4, 3, 5, 5))
    w[0, 0, 0, 0] = np.nan
    layer = fftbp.Conv(w, padding=2, method=method)
    layer.forward(rng.standard_normal((2, 3, 16, 16)))
    grads = layer.backward(rng.standard_normal((2, 4, 16, 16)))
    assert np.isnan(grads.input).any()


def test_residuals_of_another_layer_are_refused(rng):
    a = fftbp.Conv(rng.standard_normal((4, 3, 5, 5)), padding=2)
    b = fftbp.Conv(rng.standard_normal((4, 3, 5, 5)), padding=0)
    _, res = a.forward_step(rng.standard_normal((2, 3, 16, 16)))
    with pytest.raises(ValueError, match=r"residuals: made by a forward pass of another layer"):
        b.backward(rng.standard_normal((2, 4, 16, 16)), residuals=res)


@pytest.mark.parametrize("shape", [(1, 8, 160, 160), (3, 2, 300, 301), (700, 1000)])
def test_parallel_copy_matches_numpy(shape, rng, two_workers, monkeypatch):
    """Large copies are split over the workers along the longest axis but the last; any
    source layout (a transposed view, a strided window) lands exactly."""
    from fftbp import _arrays
    from fftbp._arrays import parallel_copy

    monkeypatch.setattr(_arrays, "PARALLEL_COPY_BYTES", 1 << 20)  # these sizes are split
    src = rng.standard_normal(shape[::-1]).T  # every axis strided
    assert src.nbytes >= _arrays.PARALLEL_COPY_BYTES
    dst = np.empty(shape)
    parallel_copy(dst, src)
    assert np.array_equal(dst, src)
    with pytest.raises(ValueError, match="src: expected shape"):
        parallel_copy(dst, src[..., :-1])


@pytest.mark.parametrize("pass_", ["forward", "input_grad", "weight_grad"])
def test_tiles_of_a_large_map_with_two_workers(pass_, rng, two_workers, monkeypatch):
    """The tiled route's window copies, transposes and overlap-add run on the workers once the
    arrays pass PARALLEL_COPY_BYTES (lowered to 1 MB here): every pass against the float64
    reference."""
    monkeypatch.setattr(fftbp._arrays, "PARALLEL_COPY_BYTES", 1 << 20)
    x = rng.standard_normal((1, 8, 160, 160))
    w = rng.standard_normal((6, 8, 9, 9))
    g = rng.standard_normal((1, 6, 160, 160))
    if pass_ == "forward":
        got = fftbp.conv(x, w, padding=4, method="fft_tiled")
        ref = reference_conv(x, w, padding=4)
    elif pass_ == "input_grad":
        got = fftbp.conv_input_grad(x.shape, w, g, padding=4, method="fft_tiled")
        ref = reference_input_grad(x.shape, w, g, padding=4)
    else:
        got = fftbp.conv_weight_grad(x, w.shape, g, padding=4, method="fft_tiled")
        ref = reference_weight_grad(x, w.shape, g, padding=4)
    assert relative_error(got, ref) < 1e-12


def test_a_parallel_section_inside_a_worker_runs_inline(rng, two_workers):
    """The large-copy helpers use the worker pool; called from inside a worker (a nested
    section) they run on the calling thread instead of waiting for busy workers (which hung)."""
    from fftbp._arrays import parallel_copy
    from fftbp._config import parallel_for

    src = rng.standard_normal((512, 1024))
    dst = np.empty((2, *src.shape))

    def outer(_slot, a, b):
        for i in range(a, b):
            parallel_copy(dst[i], src)

    t = threading.Thread(target=parallel_for, args=(outer, 2, 1), daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "nested parallel section hung"
    assert np.array_equal(dst[0], src) and np.array_equal(dst[1], src)


def test_pruned_transform_rows_are_checked():
    from fftbp.fft import irfft_batch, rfft_batch

    spec = np.zeros((8, 5, 3), dtype=np.complex128)
    with pytest.raises(ValueError, match="rows: expected 0 to 8"):
        rfft_batch(spec, (8, 8), lambda *a: None, rows=9)
    with pytest.raises(ValueError, match="rows: expected a slice or a 1D array of positions"):
        irfft_batch(spec, (8, 8), lambda *a: None, rows=np.ones(8, dtype=bool))


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "pad"),
    [((1, 16, 200, 200), (16, 16, 31, 31), 15), ((2, 8, 40, 40, 40), (8, 8, 7, 7, 7), 3)],
    ids=["2D-230x230-maps", "3D-46^3-maps"],
)
def test_workspace_model_bounds_large_map_transforms(x_shape, w_shape, pad, rng):
    """Maps too large for 8 in a 512 KB sub-chunk still go 8 to a sub-chunk (whole cache lines
    of the spectrum, fftbp.fft.plans._chunking); the model counts that (it did not: 81.5 MB
    used against 73.6 MB modelled for the 3D layer)."""
    from fftbp._params import Pass
    from fftbp.planning import Route
    from fftbp.planning.workspace import workspace

    spec = ConvSpec.from_shapes(x_shape, w_shape, 1, pad, 1, 1, "float32")
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    g = rng.standard_normal(spec.output_shape).astype(np.float32)
    calls = {
        "forward": lambda: fftbp.conv(x, w, padding=pad, method="fft"),
        "input_grad": lambda: fftbp.conv_input_grad(x.shape, w, g, padding=pad, method="fft"),
        "weight_grad": lambda: fftbp.conv_weight_grad(x, w.shape, g, padding=pad, method="fft"),
    }
    for name, fn in calls.items():
        used, _ = _workspace(fn)
        model = workspace(Route("fft"), spec, Pass(name), fftbp.get_num_threads())
        assert used <= model.at(spec.batch), (name, used, model.at(spec.batch))
