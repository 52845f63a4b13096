"""fftbp.torch as PyTorch operators: each everyday PyTorch workflow against native ``nn.ConvNd``.

Every test runs the workflow with the native module and with fftbp's on a layer where fftbp
really computes (the profiler or :class:`tests._oplog.OpLog` shows its operators ran) and
compares outputs and gradients. docs/torch.md's feature table points here.
"""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")

from fftbp.torch import Conv1d, Conv2d, Conv3d  # noqa: E402
from tests._oplog import OpLog  # noqa: E402

F64 = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def twins(cls, *args, dtype=torch.float32, method="fft", seed=0, **kw):
    """An fftbp module and the native module with the same parameters."""
    torch.manual_seed(seed)
    ours = cls(*args, method=method, **kw).to(dtype)
    native = getattr(torch.nn, cls.__name__)(*args, **kw).to(dtype)
    native.load_state_dict(ours.state_dict())
    return ours, native


def fftbp_ops(fn) -> list[str]:
    """Names of fftbp's operators that ran during ``fn()`` (the profiler sees compiled code)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({e.name for e in prof.events() if e.name.startswith("fftbp::")})


class Net(torch.nn.Module):
    """A small large-kernel network: a native 1x1, a depthwise 15x15 and a dense 9x9 layer."""

    def __init__(self, native: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)

        def conv(*args, method, **kw):
            return torch.nn.Conv2d(*args, **kw) if native else Conv2d(*args, method=method, **kw)

        self.stem = torch.nn.Conv2d(3, 8, 1)
        self.dw = conv(8, 8, 15, padding=7, groups=8, method="auto")
        self.dense = conv(8, 4, 9, padding=4, method="fft")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(torch.relu(self.dw(torch.relu(self.stem(x)))))


def train(model: torch.nn.Module, steps: int = 3) -> list[float]:
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 4, 32, 32, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), t)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


# -- torch.compile ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_compile_fullgraph_trains_like_eager_and_native(backend):
    torch._dynamo.reset()
    native = train(Net(native=True))
    eager = train(Net())
    compiled = torch.compile(Net(), backend=backend, fullgraph=True)
    got = train(compiled)
    ran = fftbp_ops(lambda: train(compiled, 1))
    assert ran == ["fftbp::conv_backward", "fftbp::conv_forward"]  # both gradients: one call
    for a, b, c in zip(got, eager, native):
        assert abs(a - b) <= 1e-5 * abs(b) and abs(a - c) <= 1e-4 * abs(c)


def test_compile_with_dynamic_shapes_plans_each_shape():
    """Automatic dynamic shapes (a second batch size recompiles with a symbolic batch) would
    hand the planner a symbol: the graph is specialised on each shape instead."""
    torch._dynamo.reset()
    model = Net().eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for n in (2, 3, 2):
        x = torch.randn(n, 3, 32, 32)
        assert rel(compiled(x), model(x)) < 1e-6


def test_compile_without_fullgraph_makes_one_graph():
    torch._dynamo.reset()
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    model = torch.compile(Net(), backend=counter)
    train(model, 2)
    assert counter.frame_count == 1


# -- second order: double backward, gradient penalty, hvp, gradgradcheck ---------------------

CASES = [  # (class, in, out, kernel, options, input size)
    (Conv2d, 2, 2, 3, {"padding": 1}, (6, 6)),
    (Conv2d, 2, 4, 4, {"padding": "same", "dilation": 2}, (7, 6)),
    (Conv2d, 2, 2, 3, {"stride": 2, "padding": 2}, (7, 7)),
    (Conv2d, 4, 4, 3, {"groups": 2}, (5, 6)),
    (Conv2d, 3, 3, 5, {"groups": 3, "padding": 2}, (6, 6)),
    (Conv1d, 2, 3, 5, {"padding": 3, "stride": 2}, (11,)),
    (Conv3d, 1, 2, 3, {"padding": 1}, (4, 4, 3)),
]


TILED = [  # outputs larger than one tile
    (Conv2d, 1, 2, 3, {"padding": 1}, (14, 12)),
    (Conv2d, 2, 2, 3, {"padding": 1, "groups": 2}, (13, 13)),
    (Conv1d, 1, 1, 5, {"padding": 2, "stride": 2}, (40,)),
]


@pytest.mark.parametrize(
    "case, method",
    [*itertools.product(CASES, ["fft", "direct"]), *((c, "fft_tiled") for c in TILED)],
)
def test_gradgradcheck(case, method):
    cls, c, f, k, kw, size = case
    ours, _ = twins(cls, c, f, k, dtype=F64, method=method, **kw)
    x = torch.randn(2, c, *size, dtype=F64, requires_grad=True)

    def fn(x, w, b):
        return ours._conv_forward(x, w, b)

    args = (x, ours.weight, ours.bias)
    assert fftbp_ops(lambda: fn(*args)) == ["fftbp::conv_forward"]
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_gradient_penalty_and_hvp_match_native():
    ours, native = twins(Conv2d, 3, 4, 7, dtype=F64, padding=3)
    x = torch.randn(2, 3, 12, 12, dtype=F64, requires_grad=True)
    results = []
    for m in (ours, native):
        (gx,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
        (pw,) = torch.autograd.grad(gx.square().sum(), m.weight)  # a gradient penalty
        v = torch.randn_like(m.weight, generator=torch.Generator().manual_seed(2))

        def loss(w, m=m):
            return torch.nn.functional.mse_loss(m._conv_forward(x, w, m.bias), x[:, :1] * 0 + 1)

        _, hv = torch.autograd.functional.hvp(loss, m.weight.detach(), v)
        results.append((pw, hv))
    (pw, hv), (pw_ref, hv_ref) = results
    assert float(hv_ref.abs().max()) > 0 and rel(pw, pw_ref) < 1e-10 and rel(hv, hv_ref) < 1e-10


# -- autocast ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_returns_what_native_returns(dtype):
    ours, native = twins(Conv2d, 4, 4, 15, padding=7, groups=4)
    x = torch.randn(2, 4, 24, 24, requires_grad=True)
    out = []
    for m in (ours, native):
        with torch.autocast("cpu", dtype=dtype):
            y = m(x)
        y.float().square().sum().backward()
        out.append((y, x.grad.clone(), m.weight.grad.clone()))
        x.grad = None
    (y, gx, gw), (y_ref, gx_ref, gw_ref) = out
    assert y.dtype == y_ref.dtype == dtype
    assert gx.dtype == gw.dtype == torch.float32
    assert rel(y, y_ref) < 2e-2 and rel(gx, gx_ref) < 5e-2 and rel(gw, gw_ref) < 5e-2
    with torch.autocast("cpu", dtype=dtype):
        assert fftbp_ops(lambda: ours(x)) == ["fftbp::conv_forward"]


def test_autocast_leaves_a_float64_layer_in_float64():
    ours, native = twins(Conv2d, 2, 2, 9, dtype=F64, padding=4)
    x = torch.randn(1, 2, 16, 16, dtype=F64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ref = ours(x), native(x)
    assert y.dtype == ref.dtype == F64 and rel(y, ref) < 1e-12


def test_autocast_under_compile():
    torch._dynamo.reset()
    ours, native = twins(Conv2d, 4, 4, 15, padding=7, groups=4)
    x = torch.randn(2, 4, 24, 24)

    def run(m, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(x)

    y = torch.compile(lambda x: run(ours, x), fullgraph=True)(x)
    ref = run(native, x)
    assert y.dtype == ref.dtype == torch.bfloat16 and rel(y, ref) < 2e-2


# -- export, trace -----------------------------------------------------------------------------


def test_export_gives_an_fftbp_node_and_the_same_numbers():
    model = Net().eval()
    x = torch.randn(2, 3, 32, 32)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "fftbp.conv_forward.default" in targets
    assert rel(ep.module()(x), model(x)) < 1e-6
    native = Net(native=True).eval()
    assert rel(ep.module()(x), native(x)) < 1e-4


def test_jit_trace_records_the_operator():
    ours, native = twins(Conv2d, 4, 4, 15, padding=7)
    x = torch.randn(2, 4, 24, 24)
    traced = torch.jit.trace(ours, (x,))
    assert "fftbp::conv_forward" in str(traced.graph)
    xg = x.clone().requires_grad_()
    traced(xg).square().sum().backward()
    assert rel(traced(x), native(x)) < 1e-5
    xn = x.clone().requires_grad_()
    native(xn).square().sum().backward()
    assert rel(xg.grad, xn.grad) < 1e-5


# -- torch.func -------------------------------------------------------------------------------


def test_vmap_without_grad_works():
    ours, native = twins(Conv2d, 4, 4, 9, padding=4)
    xs = torch.randn(3, 2, 4, 16, 16)
    assert fftbp_ops(lambda: torch.func.vmap(ours)(xs)) == ["fftbp::conv_forward"]
    assert rel(torch.func.vmap(ours)(xs), torch.func.vmap(native)(xs)) < 1e-5


@pytest.mark.parametrize("in_dims", [0, 2])
def test_vmap_over_non_contiguous_samples(in_dims):
    ours, native = twins(Conv2d, 4, 4, 9, padding=4)
    xs = torch.randn(2, 4, 3, 16, 16) if in_dims == 2 else torch.randn(3, 2, 4, 16, 16)
    if in_dims == 0:
        xs = xs.transpose(-1, -2)
    got = torch.func.vmap(ours, in_dims=in_dims)(xs)
    assert rel(got, torch.func.vmap(native, in_dims=in_dims)(xs)) < 1e-5


@pytest.mark.parametrize("transform", ["grad", "vmap_grad", "jvp", "forward_ad"])
def test_differentiating_transforms_raise_one_clear_error(transform):
    ours, _ = twins(Conv2d, 2, 2, 9, padding=4)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    x = torch.randn(3, 2, 12, 12)

    def loss(p, xi):
        return torch.func.functional_call(ours, p, (xi,)).sum()

    with pytest.raises(RuntimeError, match=r"(?s)torch\.func transforms .* Per-sample gradients"):
        if transform == "grad":
            torch.func.grad(loss)(params, x)
        elif transform == "vmap_grad":
            torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x[:, None])
        elif transform == "jvp":
            torch.func.jvp(ours, (x,), (torch.ones_like(x),))
        else:
            import torch.autograd.forward_ad as fwad

            with fwad.dual_level():
                ours(fwad.make_dual(x, torch.ones_like(x)))


# -- what forward keeps: a tensor autograd owns ------------------------------------------------


def test_saved_tensor_hooks_see_the_spectrum_and_may_replace_it():
    ours, native = twins(Conv2d, 4, 4, 15, padding=7)  # dense by FFT: the spectrum is kept
    x = torch.randn(2, 4, 24, 24, requires_grad=True)
    packed: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(t)
        return t.clone()  # as offloading would: backward gets a copy

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = ours(x)
    assert any(t.shape[-1] == 2 and t.dim() == 4 and t.numel() > x.numel() for t in packed)
    packed.clear()
    y.square().sum().backward()
    xn = x.detach().clone().requires_grad_()
    native(xn).square().sum().backward()
    assert rel(x.grad, xn.grad) < 1e-5 and rel(ours.weight.grad, native.weight.grad) < 1e-5


# -- weights and layouts -----------------------------------------------------------------------


@pytest.mark.parametrize("change", ["optimizer", "data", "load_state_dict", "no_grad_add"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted"])
def test_weight_changes_are_seen_in_every_layout(change, layout):
    ours, native = twins(Conv2d, 4, 4, 11, padding=5)
    if layout == "channels_last":
        ours = ours.to(memory_format=torch.channels_last)
        native = native.to(memory_format=torch.channels_last)
    elif layout == "permuted":  # a non-contiguous parameter
        for m in (ours, native):
            w = m.weight.detach().permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
            m.weight = torch.nn.Parameter(w)
        assert not ours.weight.is_contiguous()
    x = torch.randn(2, 4, 20, 20)
    ours(x).sum().backward()  # the spectrum of the first weight is made
    ours.zero_grad(set_to_none=True)
    new = torch.randn_like(ours.weight)
    for m in (ours, native):
        if change == "optimizer":
            m.weight.grad = new.clone()
            torch.optim.SGD(m.parameters(), lr=1.0).step()
        elif change == "data":
            m.weight.data.copy_(new)
        elif change == "load_state_dict":
            m.load_state_dict({"weight": new, "bias": m.bias.detach()})
        else:
            with torch.no_grad():
                m.weight.add_(new)
    assert rel(ours(x), native(x)) < 1e-5


def test_channels_last_3d_in_gives_channels_last_3d_out():
    ours, native = twins(Conv3d, 2, 2, 5, padding=2)
    ours, native = (m.to(memory_format=torch.channels_last_3d) for m in (ours, native))
    x = torch.randn(2, 2, 8, 8, 8).to(memory_format=torch.channels_last_3d)
    y = ours(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    assert rel(y, native(x)) < 1e-5


def test_channels_last_weight_gives_channels_last_output():
    ours, native = twins(Conv2d, 4, 4, 9, padding=4)
    ours, native = (m.to(memory_format=torch.channels_last) for m in (ours, native))
    x = torch.randn(2, 4, 16, 16)  # contiguous
    y, ref = ours(x), native(x)
    assert ref.is_contiguous(memory_format=torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last) and rel(y, ref) < 1e-5


def test_operators_check_their_arguments():
    ours, _ = twins(Conv2d, 2, 2, 5, padding=2)
    x = torch.randn(1, 2, 8, 8)
    plan = ours._conv_forward.__globals__["_plan"](
        (1, 2, 8, 8), (2, 2, 5, 5), (1, 1), (2, 2), (1, 1), 1, "float32", "fft"
    )
    with pytest.raises(ValueError, match=r"input: expected shape \(1, 2, 8, 8\) and float32"):
        torch.ops.fftbp.conv_forward(x[:, :1], ours.weight, None, plan, False)
    with pytest.raises(ValueError, match=r"bias: expected shape \(2,\) and float32"):
        torch.ops.fftbp.conv_forward(x, ours.weight, ours.bias.double(), plan, False)
    with pytest.raises(ValueError, match="plan: not a plan"):
        torch.ops.fftbp.conv_forward(x, ours.weight, None, "{}", False)
    with OpLog() as log:
        torch.ops.fftbp.conv_forward(x, ours.weight, None, plan, False)
    assert log.calls == ["conv_forward"]


def test_plan_strings_carry_the_operators_source_digest():
    """Compiled graphs hold the plan string, so torch.compile's caches see a new key whenever
    the operators' autograd formulas change (a stale cached backward ran the old formulas)."""
    import hashlib
    from pathlib import Path

    from fftbp.torch import _modules, _ops

    digest = hashlib.sha256(Path(_ops.__file__).read_bytes()).hexdigest()[:16]
    plan = _modules._plan((1, 2, 8, 8), (2, 2, 5, 5), (1, 1), (2, 2), (1, 1), 1, "float32", "fft")
    assert f'"source":"{digest}"' in plan


def _child_runs_layer(queue) -> None:  # module level: a fork start method target
    torch.set_num_threads(1)  # as DataLoader workers do: libgomp's threads do not survive fork
    ours, native = twins(Conv2d, 2, 2, 9, padding=4)
    x = torch.randn(1, 2, 16, 16)
    queue.put(rel(ours(x), native(x)))


def test_fork_while_the_weight_memo_lock_is_held():
    """A fork taken while another thread holds the operators' locks (an inference server that
    also forks workers): the child resets them instead of waiting forever."""
    import multiprocessing as mp

    from fftbp.torch import _ops

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    with _ops._weights_lock, _ops._pool._lock:
        child = ctx.Process(target=_child_runs_layer, args=(queue,))
        child.start()
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
    assert queue.get(timeout=5) < 1e-5
