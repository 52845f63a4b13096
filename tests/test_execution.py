"""Threads, workspace chunking, plan cache and FFT sizes."""

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fftbp
from fftbp._params import PASSES, ConvSpec
from fftbp.fft import plan_cache_info, transform_shape
from fftbp.planning import Route
from fftbp.planning.workspace import workspace
from fftbp.testing import (
    reference_conv,
    reference_input_grad,
    reference_weight_grad,
    relative_error,
)


def test_transform_size_is_minimal_not_padded_extent():
    spec = ConvSpec.from_shapes((8, 32, 64, 64), (32, 32, 31, 31), padding="same")
    assert transform_shape(spec) == (80, 80)  # 64 + 15 + 1 -> next fast length 80, not 96
    spec = ConvSpec.from_shapes((1, 1, 64), (1, 1, 7), padding=(2,))
    assert transform_shape(spec) == (72,)  # needs 64 + max(2, 2) = 66 = 2*3*11: slower than 72
    spec = ConvSpec.from_shapes((16, 128, 56, 56), (128, 1, 51, 51), padding="same", groups=128)
    assert transform_shape(spec) == (84, 84)  # needs 81 = 3^4: 1.7x slower than 84x84


@pytest.mark.parametrize("method", ["fft", "direct"])
def test_workspace_limit_chunks_and_agrees(method, rng):
    x = rng.standard_normal((5, 3, 20, 20))
    w = rng.standard_normal((4, 3, 5, 5))
    g = rng.standard_normal((5, 4, 20, 20))
    full = [
        fftbp.conv(x, w, padding=2, method=method),
        fftbp.conv_input_grad(x.shape, w, g, padding=2, method=method),
        fftbp.conv_weight_grad(x, w.shape, g, padding=2, method=method),
    ]
    spec = ConvSpec.from_shapes(x.shape, w.shape, padding=2, dtype=x.dtype)
    threads = fftbp.get_num_threads()
    # room for two samples of the most demanding pass: chunks of 1 or 2 samples
    limit = max(workspace(Route(method), spec, p, threads).at(2) for p in PASSES)
    assert any(workspace(Route(method), spec, p, threads).chunk(5, limit) < 5 for p in PASSES)
    old = fftbp.get_workspace_limit()
    fftbp.set_workspace_limit(limit)
    try:
        small = [
            fftbp.conv(x, w, padding=2, method=method),
            fftbp.conv_input_grad(x.shape, w, g, padding=2, method=method),
            fftbp.conv_weight_grad(x, w.shape, g, padding=2, method=method),
        ]
        layer = fftbp.Conv(w, padding=2, method=method)
        y = layer.forward(x)
        grads = layer.backward(g)
    finally:
        fftbp.set_workspace_limit(old)
    for a, b in zip(full, small):
        assert relative_error(b, a) < 1e-12
    assert relative_error(y, full[0]) < 1e-12
    assert relative_error(grads.input, full[1]) < 1e-12
    assert relative_error(grads.weight, full[2]) < 1e-12


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_results_do_not_depend_on_thread_count(threads, rng):
    x = rng.standard_normal((4, 8, 24, 24))
    w = rng.standard_normal((8, 8, 7, 7))
    ref = reference_conv(x, w, padding=3)
    old = fftbp.get_num_threads()
    fftbp.set_num_threads(threads)
    try:
        assert relative_error(fftbp.conv(x, w, padding=3, method="fft"), ref) < 1e-12
    finally:
        fftbp.set_num_threads(old)


def test_concurrent_calls_from_several_threads(rng):
    """Same and different shapes from 6 Python threads at once share the plan cache safely."""
    layers = []
    for i in range(6):
        size = 20 if i % 2 else 17
        groups = 1 if i % 3 else 4
        x = rng.standard_normal((3, 4, size, size))
        w = rng.standard_normal((4, 4 // groups, 5, 5))
        g = rng.standard_normal((3, 4, size, size))
        layers.append((x, w, g, groups))
    errors: list[float] = []
    failures: list[BaseException] = []

    def run(x, w, g, groups):
        try:
            for _ in range(5):
                layer = fftbp.Conv(w, padding=2, groups=groups, method="fft")
                y = layer.forward(x)
                grads = layer.backward(g)
                errors.append(relative_error(y, reference_conv(x, w, padding=2, groups=groups)))
                errors.append(
                    relative_error(
                        grads.input, reference_input_grad(x.shape, w, g, padding=2, groups=groups)
                    )
                )
                errors.append(
                    relative_error(
                        grads.weight, reference_weight_grad(x, w.shape, g, padding=2, groups=groups)
                    )
                )
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=a) for a in layers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(errors) == 6 * 5 * 3 and max(errors) < 1e-12


def test_plan_cache_is_bounded(rng, monkeypatch):
    """Far more distinct transform sizes than the (lowered) bound: the pool keeps at most the
    bound, and still computes right."""
    monkeypatch.setattr(fftbp.fft.plans, "MAX_PLANS", 8)
    w = rng.standard_normal((1, 1, 2))
    for n in range(3, 40):
        x = rng.standard_normal((1, 1, n))
        y = fftbp.conv(x, w, method="fft")
        assert relative_error(y, reference_conv(x, w)) < 1e-12
        assert plan_cache_info()["size"] <= 8


def test_plan_cache_is_bounded_in_bytes(rng, monkeypatch):
    """Plans of large maps hold large scratch (at least a cache line of maps): the pool keeps
    at most MAX_PLAN_BYTES of them (lowered here to 2 MB), the one just returned at least, and
    its byte count matches what it holds."""
    import fftbp.fft.plans as plans

    monkeypatch.setattr(plans, "MAX_PLAN_BYTES", 2 << 20)
    fftbp.fft.clear_plan_cache()
    assert plan_cache_info()["bytes"] == 0
    w = rng.standard_normal((8, 8, 5, 5))
    for n in (40, 56, 72, 90):
        x = rng.standard_normal((2, 8, n, n))
        y = fftbp.conv(x, w, padding=2, method="fft")
        assert relative_error(y, reference_conv(x, w, padding=2)) < 1e-12
        info = plan_cache_info()
        held = sum(p.nbytes for free in plans._free.values() for p in free)
        assert info["bytes"] == held
        assert held <= 2 << 20 or info["size"] == 1
    fftbp.fft.clear_plan_cache()
    assert plan_cache_info()["bytes"] == 0


def test_plan_pool_evicts_while_plans_are_lent(monkeypatch):
    """Eviction with a key whose only plan is lent out (its free list empty) used to raise
    IndexError inside an unrelated call once the pool was full."""
    from fftbp.fft import owned, plans

    monkeypatch.setattr(plans, "MAX_PLANS", 2)
    plans.clear_plan_cache()

    def build():
        return owned._build_owned(True, 1, (8,), np.dtype(np.float64), "FFTW_ESTIMATE")

    with plans.checkout(("a",), build):
        pass  # "a" has one free plan
    with plans.checkout(("a",), build):  # lent again: no free plan of "a" left
        for key in ("b", "c", "d"):  # fill the pool past its bound: "a" is the oldest key
            with plans.checkout((key,), build):
                pass
    assert plan_cache_info()["size"] <= 2


def test_measure_effort_gives_the_same_result(rng):
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    w = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    fftbp.set_fftw_effort("FFTW_MEASURE")
    try:
        y = fftbp.conv(x, w, padding=2, method="fft")
    finally:
        fftbp.set_fftw_effort("FFTW_ESTIMATE")
    assert relative_error(y, reference_conv(x, w, padding=2)) < 1e-5


@st.composite
def layer_specs(draw):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2, 3]))
    cg, fg = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    pads = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd))
    size = []
    for k, d, (lo, hi) in zip(kernel, dil, pads):
        ext = d * (k - 1) + 1
        size.append(draw(st.integers(max(1, ext - lo - hi), 9)))
    return dict(
        n=draw(st.integers(1, 2)),
        c=groups * cg,
        f=groups * fg,
        size=tuple(size),
        kernel=kernel,
        stride=stride,
        padding=pads,
        dilation=dil,
        groups=groups,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer_specs(), st.sampled_from(["fft", "direct"]), st.integers(0, 2**32 - 1))
def test_random_layer_specs(p, method, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p["n"], p["c"], *p["size"]))
    w = rng.standard_normal((p["f"], p["c"] // p["groups"], *p["kernel"]))
    kw = dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"], groups=p["groups"])
    y = fftbp.conv(x, w, **kw, method=method)
    g = rng.standard_normal(y.shape)
    assert relative_error(y, reference_conv(x, w, **kw)) < 1e-11
    dx = fftbp.conv_input_grad(x.shape, w, g, **kw, method=method)
    assert relative_error(dx, reference_input_grad(x.shape, w, g, **kw)) < 1e-11
    dw = fftbp.conv_weight_grad(x, w.shape, g, **kw, method=method)
    assert relative_error(dw, reference_weight_grad(x, w.shape, g, **kw)) < 1e-11


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize(
    "total, shape",
    [(1, (32,)), (16, (32, 32, 32)), (64, (32, 32, 32)), (3, (8, 8)), (1024, (80, 80))],
)
def test_sub_chunks_never_share_a_cache_line(threads, real, total, shape):
    """Workers write sub-chunks of adjacent maps at every frequency of the frequency-major
    spectrum: a sub-chunk must span whole 64-byte lines (it used to be 4 maps of complex64 for
    a 3D layer of 16 maps, and two workers then contended for every line)."""
    from fftbp.fft.plans import _chunking

    old = fftbp.get_num_threads()
    fftbp.set_num_threads(threads)
    try:
        sub = _chunking(total, shape, np.dtype(real))
    finally:
        fftbp.set_num_threads(old)
    line_maps = 64 // (2 * np.dtype(real).itemsize)
    assert sub >= 1 and sub % line_maps == 0


def test_tiny_channel_products_run_on_one_worker(rng, monkeypatch):
    """Products of matrices under ONE_WORKER_BELOW flops go to one worker in one piece (two
    threads calling BLAS on tiny matrices ran slower than one); larger ones are split. The
    results stay those of the float64 reference either way."""
    import fftbp.kernels.fft as kf

    seen: list[tuple[int, int]] = []
    real = kf.parallel_for

    def spy(fn, n, chunk):
        seen.append((n, chunk))
        return real(fn, n, chunk)

    monkeypatch.setattr(kf, "parallel_for", spy)
    old = fftbp.get_num_threads()
    fftbp.set_num_threads(2)
    try:
        for c, expect_one in ((4, True), (32, False)):  # 8*2*4*4 and 8*2*32*32 flops
            x = rng.standard_normal((2, c, 20, 20))
            w = rng.standard_normal((c, c, 5, 5))
            seen.clear()
            y = fftbp.conv(x, w, padding=2, method="fft")
            assert relative_error(y, reference_conv(x, w, padding=2)) < 1e-12
            products = [(n, chunk) for n, chunk in seen if n == 24 * 13]  # one piece per freq
            assert products, seen
            assert all((chunk >= n) == expect_one for n, chunk in products), (c, products)
    finally:
        fftbp.set_num_threads(old)
