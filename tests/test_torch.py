"""fftbp.torch against PyTorch itself: gradcheck, native modules as oracle, convert, DDP.

``method="auto"`` plans every pass with torch's own convolution as one more candidate, and it
plans the option product's tiny layers (tests/_cases.py) almost entirely to torch: 284 of their
336 ``auto`` cases on the development machine (2 threads), which then compared torch with torch.
The ``auto`` cases of :func:`test_matches_native_module` are therefore the same option product
on larger kernels and maps (``LARGE``), kept only where :func:`fftbp.plan` (``native=True``, as
the module plans) gives at least one pass to fftbp: 114 of 336 on the development machine (the
other 222 are planned to torch everywhere). Only depthwise layers that small get fftbp routes,
so :func:`test_auto_dense_and_grouped_layers` adds two bigger dense and grouped ones, and
:func:`test_auto_all_torch_layers_match_native` checks a sample of layers planned entirely to
torch. :func:`test_auto_cases_are_computed_by_fftbp` keeps the ``auto`` count substantial.
"""

from __future__ import annotations

import copy
import itertools
import pickle
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is part of the 'test' extra")

import fftbp  # noqa: E402
from fftbp.torch import (  # noqa: E402
    Conv1d,
    Conv2d,
    Conv3d,
    convert,
)
from tests._cases import GROUPINGS, KERNELS, SIZES, channels, padding_value  # noqa: E402
from tests._oplog import OpLog  # noqa: E402

OURS = {1: Conv1d, 2: Conv2d, 3: Conv3d}
NATIVE = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
MODES = ["zeros", "reflect", "replicate", "circular"]
PADS = ["int", "tuple", "same", "valid"]  # what nn.ConvNd accepts
DTYPES = {"f32": torch.float32, "f64": torch.float64}
PASSES = ("forward", "input_grad", "weight_grad")

#: (spatial sizes, kernel) by dimension: the option product's tiny layers ...
SMALL = (SIZES, KERNELS)
#: ... and larger kernels on larger maps, where "auto" gives fftbp some passes
LARGE = ({1: (48,), 2: (20, 18), 3: (16, 16, 17)}, {1: (15,), 2: (9, 8), 3: (7, 7, 6)})

pytestmark = pytest.mark.filterwarnings(
    "ignore:Using padding='same' with even kernel lengths:UserWarning"
)


def module_cases():
    """The option product (dimension, stride, padding kind, dilation, grouping); padding mode
    and bias cycle through their values so that every one meets every other option (grouping
    varies fastest, so the mode's cycle shifts by one at every grouping cycle)."""
    combos = [
        c
        for c in itertools.product((1, 2, 3), (1, 2), PADS, (1, 2), GROUPINGS)
        if not (c[2] == "same" and c[1] != 1)
    ]
    for i, (nd, stride, pad, dil, grouping) in enumerate(combos):
        mode = MODES[(i + i // 4) % 4]
        bias = (i + i // 16) % 2 == 0
        yield (
            f"{nd}d-s{stride}-{pad}-d{dil}-{grouping}-{mode}-{'b' if bias else 'nob'}",
            (
                nd,
                stride,
                pad,
                dil,
                grouping,
                mode,
                bias,
            ),
        )


CASES = list(module_cases())


def make_pair(case, dtype, method, seed=0, shapes=SMALL):
    """An fftbp module and a native one with the same parameters, and an input."""
    nd, stride, pad, dil, grouping, mode, bias = case
    sizes, kernels = shapes
    c, f, groups = channels(grouping)
    kw = dict(
        stride=stride,
        padding=padding_value(pad, nd),
        dilation=dil,
        groups=groups,
        bias=bias,
        padding_mode=mode,
        dtype=dtype,
    )
    torch.manual_seed(seed)
    ours = OURS[nd](c, f, kernels[nd], **kw, method=method)
    native = NATIVE[nd](c, f, kernels[nd], **kw)
    native.load_state_dict(ours.state_dict())
    x = torch.randn(2, c, *sizes[nd], dtype=dtype)
    return ours, native, x


def _explicit(padding, kernel, dilation) -> list[tuple[int, int]]:
    """(low, high) zero padding per axis, as ``nn.ConvNd`` pads for a non-'zeros' mode."""
    if padding == "same":
        totals = [dilation * (k - 1) for k in kernel]
        return [(t // 2, t - t // 2) for t in totals]
    if padding == "valid":
        padding = 0
    if isinstance(padding, int):
        padding = (padding,) * len(kernel)
    return [(p, p) for p in padding]


def planned_routes(case, dtype, shapes) -> tuple[str, ...]:
    """What ``method="auto"`` computes each pass of the module with ("fft", "direct" or
    "torch"): the module's plan is fftbp.plan(native=True) of the input it hands to fftbp, which
    for padding modes other than 'zeros' is the input already padded (and padding 0)."""
    nd, stride, pad, dil, grouping, mode, _ = case
    sizes, kernels = shapes
    c, f, groups = channels(grouping)
    size, padding = sizes[nd], padding_value(pad, nd)
    if mode != "zeros":
        pairs = _explicit(padding, kernels[nd], dil)
        size, padding = tuple(n + lo + hi for n, (lo, hi) in zip(size, pairs)), 0
    p = fftbp.plan(
        (2, c, *size),
        (f, c // groups, *kernels[nd]),
        stride,
        padding,
        dil,
        groups,
        str(dtype).removeprefix("torch."),
        native=True,
    )
    return tuple(p.choice(q).route.base for q in PASSES)


def _by_fftbp(routes) -> bool:
    return any(r != "torch" for r in routes)


#: (id, case, dtype id) of the LARGE option product that "auto" gives fftbp at least one pass of
AUTO_CASES = [
    (f"auto-{d}-{cid}", case, d)
    for d, dtype in DTYPES.items()
    for cid, case in CASES
    if _by_fftbp(planned_routes(case, dtype, LARGE))
]
#: every 24th SMALL case (both dtypes) that "auto" plans entirely to torch
ALL_TORCH_CASES = [
    (f"{d}-{cid}", case, d)
    for d, dtype in DTYPES.items()
    for cid, case in CASES
    if not _by_fftbp(planned_routes(case, dtype, SMALL))
][::24]


def step(module, x, g=None, seed=1):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    if g is None:
        g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(seed))
    y.backward(g)
    grads = [x.grad] + [p.grad for p in module.parameters()]
    return y.detach(), grads, g


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / max(b.norm(), 1e-300))


def assert_matches(ours, native, x, dtype):
    """One forward and backward of each module: output, input and parameter gradients."""
    y, grads, g = step(ours, x)
    y_ref, grads_ref, _ = step(native, x, g)
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert rel(y, y_ref) <= tol
    assert len(grads) == len(grads_ref)
    for a, b in zip(grads, grads_ref):
        assert rel(a, b) <= tol


# -- correctness against torch --------------------------------------------------------------------
def _native_params():
    for method in ("fft", "direct"):
        for d in DTYPES:
            for cid, case in CASES:
                yield pytest.param(case, d, method, id=f"{method}-{d}-{cid}")
    for pid, case, d in AUTO_CASES:
        yield pytest.param(case, d, "auto", id=pid)


@pytest.mark.parametrize(("case", "dtype", "method"), list(_native_params()))
def test_matches_native_module(case, dtype, method):
    """fft and direct on the option product; auto on LARGE layers where fftbp computes some
    pass (AUTO_CASES), so that every case compares fftbp with torch."""
    dtype = DTYPES[dtype]
    shapes = LARGE if method == "auto" else SMALL
    ours, native, x = make_pair(case, dtype, method, shapes=shapes)
    assert_matches(ours, native, x, dtype)


def test_auto_cases_are_computed_by_fftbp():
    """A substantial share of the auto option product has a pass computed by fftbp, in both
    dtypes, every dimension, padding mode and stride (114 of 336 when written)."""
    assert len(AUTO_CASES) >= len(CASES) * len(DTYPES) // 4
    seen = {(d, case[0], case[5], case[1]) for _, case, d in AUTO_CASES}
    assert seen >= set(itertools.product(DTYPES, (1, 2, 3), MODES, (1, 2)))


@pytest.mark.parametrize(
    ("case", "dtype"), [c[1:] for c in ALL_TORCH_CASES], ids=[c[0] for c in ALL_TORCH_CASES]
)
def test_auto_all_torch_layers_match_native(case, dtype):
    """Layers whose every pass "auto" plans to torch still give torch's results."""
    dtype = DTYPES[dtype]
    assert not _by_fftbp(planned_routes(case, dtype, SMALL))
    ours, native, x = make_pair(case, dtype, "auto")
    assert_matches(ours, native, x, dtype)


@pytest.mark.parametrize(
    ("c", "f", "groups", "kernel", "size"),
    [(8, 8, 1, (31, 29), (32, 32)), (16, 16, 2, (31, 31), (32, 32))],
    ids=["dense", "grouped"],
)
def test_auto_dense_and_grouped_layers(c, f, groups, kernel, size):
    """Dense and grouped layers large enough for "auto" to give fftbp a pass (float64)."""
    dtype = torch.float64
    p = fftbp.plan(
        (2, c, *size), (f, c // groups, *kernel), 1, "same", 1, groups, "float64", native=True
    )
    assert _by_fftbp(p.choice(q).route.base for q in PASSES), str(p)
    torch.manual_seed(0)
    ours = Conv2d(c, f, kernel, padding="same", groups=groups, dtype=dtype)
    native = torch.nn.Conv2d(c, f, kernel, padding="same", groups=groups, dtype=dtype)
    native.load_state_dict(ours.state_dict())
    assert_matches(ours, native, torch.randn(2, c, *size, dtype=dtype), dtype)


TILED_SIZES = {1: (40,), 2: (24, 22), 3: (16, 15, 16)}  # several tiles per axis


def _gradcheck(module, x, **kw):
    """gradcheck of the module's autograd function."""
    w = module.weight.detach().clone().requires_grad_()
    b = None if module.bias is None else module.bias.detach().clone().requires_grad_()
    args = (x.detach().requires_grad_(), w) + ((b,) if b is not None else ())
    return torch.autograd.gradcheck(lambda x, w, b=None: module._conv_forward(x, w, b), args, **kw)


@pytest.mark.parametrize("method", ["fft", "direct", "fft_tiled"])
@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_gradcheck_fast(case, method):
    """gradcheck (float64, random projections) of the autograd Function: x, weight, bias."""
    ours, _, x = make_pair(case, torch.float64, method)
    if method == "fft_tiled":
        x = torch.randn(2, ours.in_channels, *TILED_SIZES[case[0]], dtype=torch.float64)
    assert _gradcheck(ours, x, fast_mode=True)


AUTO_F64 = [(pid, case) for pid, case, d in AUTO_CASES if d == "f64"]


@pytest.mark.parametrize("case", [c for _, c in AUTO_F64], ids=[i for i, _ in AUTO_F64])
def test_gradcheck_fast_auto(case):
    """gradcheck of "auto" where fftbp computes some pass (the float64 AUTO_CASES)."""
    ours, _, x = make_pair(case, torch.float64, "auto", shapes=LARGE)
    assert _gradcheck(ours, x, fast_mode=True)


@pytest.mark.parametrize("method", ["fft", "direct"])
@pytest.mark.parametrize("case", [c for _, c in CASES][::11], ids=[i for i, _ in CASES][::11])
def test_gradcheck_full(case, method):
    """Full (every-entry) gradcheck on a sample of the product."""
    ours, _, x = make_pair(case, torch.float64, method)
    assert _gradcheck(ours, x[:1])


@pytest.mark.parametrize("k", [15, 31])
def test_large_kernel_float32(k):
    """A RepLKNet-style depthwise layer and a dense one in float32 vs torch in float64."""
    for groups, c in ((16, 16), (1, 6)):
        ours = Conv2d(c, c if groups > 1 else 5, k, padding=k // 2, groups=groups)
        native = copy.deepcopy(
            torch.nn.Conv2d(c, ours.out_channels, k, padding=k // 2, groups=groups)
        ).double()
        native.load_state_dict({n: p.double() for n, p in ours.state_dict().items()})
        x = torch.randn(2, c, 40, 36)
        y, grads, g = step(ours, x)
        y_ref, grads_ref, _ = step(native, x.double(), g.double())
        assert rel(y.double(), y_ref) <= 1e-5
        for a, b in zip(grads, grads_ref):
            assert rel(a.double(), b) <= 1e-5


# -- module behaviour -----------------------------------------------------------------------------
def test_state_dict_round_trip():
    ours = Conv2d(4, 8, 5, padding=2, groups=2)
    native = torch.nn.Conv2d(4, 8, 5, padding=2, groups=2)
    assert ours.state_dict().keys() == native.state_dict().keys()
    native.load_state_dict(ours.state_dict())
    back = Conv2d(4, 8, 5, padding=2, groups=2)
    back.load_state_dict(native.state_dict())
    for k, v in ours.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    assert isinstance(ours, torch.nn.Conv2d)
    x = torch.randn(1, 4, 12, 12)
    assert torch.allclose(back(x), native(x), atol=1e-5)


def test_pickle_and_deepcopy_keep_working():
    layer = Conv2d(2, 3, 7, padding=3, method="fft")
    x = torch.randn(1, 2, 16, 16)
    y = layer(x)
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert torch.allclose(clone(x), y, atol=1e-6)
        assert clone.method == "fft"


def test_weight_updates_are_seen():
    """An optimizer step and a write through .data both change the next forward pass."""
    layer = Conv2d(3, 4, 9, padding=4, method="fft").double()
    native = torch.nn.Conv2d(3, 4, 9, padding=4).double()
    native.load_state_dict(layer.state_dict())
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    opt_n = torch.optim.SGD(native.parameters(), lr=0.1)
    x = torch.randn(2, 3, 20, 20, dtype=torch.float64)
    for _ in range(3):
        for m, o in ((layer, opt), (native, opt_n)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    assert rel(layer(x), native(x)) <= 1e-11
    with torch.no_grad():
        layer.weight.data.mul_(2)
        native.weight.data.mul_(2)
    assert rel(layer(x), native(x)) <= 1e-11


def test_inplace_weight_change_between_forward_and_backward_raises():
    layer = Conv2d(2, 2, 5, padding=2, method="fft")
    y = layer(torch.randn(1, 2, 10, 10))
    with torch.no_grad():
        layer.weight.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_two_pending_forwards_and_retain_graph():
    """The same layer applied twice before backward, and backward run twice."""
    layer = Conv2d(3, 3, 9, padding=4, groups=3, method="fft").double()
    native = torch.nn.Conv2d(3, 3, 9, padding=4, groups=3).double()
    native.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    results = []
    for m in (layer, native):
        x.grad = None
        m.zero_grad()
        loss = (m(m(x)) * torch.linspace(0, 1, 16, dtype=torch.float64)).sum()
        loss.backward(retain_graph=True)
        loss.backward()
        results.append((x.grad.clone(), m.weight.grad.clone()))
    for a, b in zip(*results):
        assert rel(a, b) <= 1e-11


def test_no_input_grad_when_nobody_asks():
    layer = Conv2d(2, 2, 7, padding=3, method="fft")
    with OpLog() as log:
        layer(torch.randn(1, 2, 12, 12)).sum().backward()  # first layer: x needs no grad
    assert log.calls == ["conv_forward", "conv_weight_grad"]
    layer.weight.requires_grad_(False)
    x = torch.randn(1, 2, 12, 12, requires_grad=True)
    with OpLog() as log:
        layer(x).sum().backward()
    assert log.calls == ["conv_forward", "conv_input_grad"]
    assert layer.bias.grad is not None
    layer.weight.requires_grad_(True)
    with OpLog() as log:  # both: one call transforms grad_output once for the two
        layer(x).sum().backward()
    assert log.calls == ["conv_forward", "conv_backward"]


def test_unbatched_input_and_no_grad():
    layer = Conv1d(2, 3, 31, padding="same", method="fft")
    native = torch.nn.Conv1d(2, 3, 31, padding="same")
    native.load_state_dict(layer.state_dict())
    x = torch.randn(2, 100)
    with torch.no_grad():
        assert torch.allclose(layer(x), native(x), atol=1e-5)
    assert layer(x).shape == (3, 100)


def test_unsupported_inputs_are_routed_to_torch():
    """Half precision and meta tensors are computed by torch unchanged (documented)."""
    layer = Conv2d(2, 3, 3, padding=1, method="fft")
    x = torch.randn(1, 2, 8, 8, device="meta")
    assert layer.to("meta")(x).device.type == "meta"
    layer = Conv2d(2, 3, 3, padding=1, method="fft").to(torch.bfloat16)
    native = torch.nn.Conv2d(2, 3, 3, padding=1).to(torch.bfloat16)
    native.load_state_dict(layer.state_dict())
    xb = torch.randn(1, 2, 8, 8, dtype=torch.bfloat16)
    assert torch.equal(layer(xb), native(xb))


def test_bad_method_names_the_argument():
    with pytest.raises(ValueError, match="method: expected one of"):
        Conv2d(2, 2, 3, method="winograd")


# -- convert --------------------------------------------------------------------------------------
class Mixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.large = torch.nn.Conv2d(32, 32, 31, padding=15, groups=32)
        self.mix = torch.nn.Conv2d(32, 32, 1)
        self.unused = torch.nn.Conv2d(32, 32, 3)

    def forward(self, x):
        return self.mix(torch.relu(self.large(torch.relu(self.stem(x)))))


def test_convert_swaps_large_kernels_and_keeps_small_ones():
    torch.manual_seed(0)
    model = Mixed()
    x = torch.randn(4, 3, 48, 48)
    converted, report = convert(model, x)
    assert type(model.large) is torch.nn.Conv2d  # not in place: the original is untouched
    assert type(converted.large) is Conv2d
    assert type(converted.stem) is torch.nn.Conv2d
    assert type(converted.mix) is torch.nn.Conv2d
    assert report.converted == ["large"]
    by_name = {r.name: r for r in report.layers}
    assert by_name["large"].predicted_speedup > 10
    assert by_name["stem"].passes["input_grad"] == "torch" or not by_name["stem"].converted
    assert by_name["unused"].reason == "not run by example_input"
    text = str(report)
    assert "large" in text and "1 of 4 convolutions converted" in text
    y, y_ref = converted(x), model(x)
    assert rel(y.detach(), y_ref.detach()) <= 1e-5


def test_convert_inplace_and_measured():
    model = Mixed()
    params = list(model.parameters())
    x = torch.randn(1, 3, 40, 40)
    same, report = convert(model, x, inplace=True, measure=True, min_speedup=1.0)
    assert same is model and list(model.parameters()) == params
    large = next(r for r in report.layers if r.name == "large")
    assert large.measured_speedup is not None and large.converted
    assert type(model.large) is Conv2d


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(min_speedup=0), "min_speedup: expected a number > 0, got 0"),
        (dict(min_speedup="2"), "min_speedup: expected a number > 0"),
    ],
)
def test_convert_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        convert(Mixed(), torch.randn(1, 3, 8, 8), **kwargs)


def test_convert_bad_model_and_input():
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        convert("resnet", torch.randn(1, 3, 8, 8))
    with pytest.raises(TypeError, match="example_input: expected a Tensor"):
        convert(Mixed(), np.zeros((1, 3, 8, 8)))


# -- DistributedDataParallel ----------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process_on_the_whole_batch(tmp_path):
    """DDP (gloo, loopback) all-reduces fftbp's gradients like any others: 3 steps on two
    halves of a batch give the parameters of 3 steps on the whole batch in one process."""
    import torch.multiprocessing as mp

    from tests import _ddp

    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp.worker, args=(2, _free_port(), out, 3), nprocs=2, join=True)
    ddp_state = torch.load(out)
    model = _ddp.make_model()
    x, t = _ddp.make_data()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _ddp.train(model, x, t, 3)
    for k, v in model.state_dict().items():
        assert not torch.equal(v, start[k])  # the steps moved every parameter
        assert rel(ddp_state[k], v) <= 1e-12, k


@pytest.mark.parametrize(
    "routes", list(itertools.product(("torch", "fft", "direct"), repeat=3)), ids="-".join
)
def test_every_mix_of_pass_routes(routes):
    """A plan may compute each pass differently (torch's kernel for one, fftbp for another):
    what forward keeps must serve whichever gradient routes follow."""
    from fftbp._params import ConvSpec
    from fftbp.planning import Choice, Plan, Route

    torch.manual_seed(0)
    x = torch.randn(2, 4, 13, 12, dtype=torch.float64)
    spec = ConvSpec.from_shapes(x.shape, (6, 2, 5, 4), 1, "same", 1, 2, "float64")
    plan = Plan(spec, "test", *(Choice(Route(r), 0.0, 0) for r in routes))
    ours = Conv2d(4, 6, (5, 4), padding="same", groups=2, dtype=torch.float64, method=plan)
    native = torch.nn.Conv2d(4, 6, (5, 4), padding="same", groups=2, dtype=torch.float64)
    native.load_state_dict(ours.state_dict())
    y, grads, g = step(ours, x)
    y_ref, grads_ref, _ = step(native, x, g)
    assert rel(y, y_ref) <= 1e-12
    for a, b in zip(grads, grads_ref):
        assert rel(a, b) <= 1e-12


def test_plan_with_native_candidate_explains_itself():
    import fftbp

    small = fftbp.plan((8, 64, 28, 28), (64, 64, 3, 3), padding=1, native=True)
    large = fftbp.plan((4, 32, 56, 56), (32, 1, 31, 31), padding=15, groups=32, native=True)
    assert all(small.choice(p).route.base == "torch" for p in ("forward", "weight_grad"))
    assert large.choice("forward").route.algorithm == "fft"
    assert "torch" in str(small) and "fft" in str(large)
    with pytest.raises(ValueError, match="native: expected True or False, got 'yes'"):
        fftbp.plan((1, 1, 8, 8), (1, 1, 3, 3), native="yes")


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_two_weights_in_one_graph(method):
    """functional_call with two weights, one backward: each input gradient uses the weight its
    own forward ran with (the layer's engine was bound to the second one by then)."""
    from torch.func import functional_call

    torch.manual_seed(0)
    mods = [Conv2d(4, 6, 3, padding=1, method=method), torch.nn.Conv2d(4, 6, 3, padding=1)]
    w1, w2 = torch.randn(6, 4, 3, 3), torch.randn(6, 4, 3, 3)
    x1, x2 = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    grads = []
    for mod in mods:
        ts = [t.clone().requires_grad_() for t in (w1, w2, x1, x2)]
        y1 = functional_call(mod, {"weight": ts[0], "bias": torch.zeros(6)}, (ts[2],))
        y2 = functional_call(mod, {"weight": ts[1], "bias": torch.zeros(6)}, (ts[3],))
        (y1.square().sum() + 3 * y2.sum()).backward()
        grads.append([t.grad for t in ts])
    for a, b in zip(*grads):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("method", ["fft", "auto"])
def test_empty_batch_gives_empty_output_and_gradients(method):
    m = Conv2d(4, 4, 7, padding=3, method=method)
    x = torch.randn(0, 4, 16, 16, requires_grad=True)
    y = m(x)
    y.sum().backward()
    assert y.shape == (0, 4, 16, 16) and x.grad.shape == x.shape
    assert m.weight.grad is not None and float(m.weight.grad.abs().sum()) == 0.0


def test_channels_last_after_an_optimizer_step():
    """A channels_last weight updated in place by the optimizer is seen (the engine's weight
    view is keyed on torch's version counter), and channels_last in gives channels_last out."""
    torch.manual_seed(0)
    ours = Conv2d(8, 8, 31, padding=15, method="fft").to(memory_format=torch.channels_last)
    native = torch.nn.Conv2d(8, 8, 31, padding=15).to(memory_format=torch.channels_last)
    native.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 32, 32).to(memory_format=torch.channels_last)
    for mod in (ours, native):
        opt = torch.optim.SGD(mod.parameters(), lr=0.1)
        mod(x).square().sum().backward()
        opt.step()
    y, ref = ours(x), native(x)
    assert rel(y, ref) < 1e-5
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_one_module_from_four_threads():
    torch.manual_seed(0)
    ours = Conv2d(8, 8, 31, padding=15, method="fft")
    native = torch.nn.Conv2d(8, 8, 31, padding=15)
    native.load_state_dict(ours.state_dict())
    xs = [torch.randn(2, 8, 32, 32, requires_grad=True) for _ in range(12)]
    refs = [torch.autograd.grad(native(x).square().sum(), x)[0] for x in xs]
    got: list = [None] * len(xs)

    def work(t: int) -> None:
        for i in range(t, len(xs), 4):
            got[i] = torch.autograd.grad(ours(xs[i]).square().sum(), xs[i])[0]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(rel(g, r) < 1e-5 for g, r in zip(got, refs))


def test_convert_leaves_the_model_state_and_the_rng_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 4, 31, padding=15, groups=4),
        torch.nn.BatchNorm2d(4),
        torch.nn.Dropout(0.5),
    ).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.randn(2, 4, 32, 32)
    torch.manual_seed(1)
    expected_draw = torch.rand(3)
    torch.manual_seed(1)
    convert(model, example, inplace=True)
    assert torch.equal(torch.rand(3), expected_draw)  # the global RNG did not advance
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training


DATALOADER_SCRIPT = """
import torch
from torch.utils.data import DataLoader, Dataset
from fftbp.torch import Conv2d
torch.manual_seed(0)
layer = Conv2d(4, 4, 15, padding=7, method="fft")
native = torch.nn.Conv2d(4, 4, 15, padding=7)
native.load_state_dict(layer.state_dict())
x = torch.randn(8, 4, 24, 24)
with torch.no_grad():
    layer(x)  # the parent uses the layer (and fftbp's worker pool) first
class DS(Dataset):
    def __len__(self):
        return 4
    def __getitem__(self, i):
        with torch.no_grad():
            return layer(x[i : i + 1])[0] - native(x[i : i + 1])[0]
diffs = torch.stack(list(DataLoader(DS(), batch_size=None, num_workers=2)))
print(float(diffs.abs().max()))
"""


def test_dataloader_workers_forked_after_the_parent_used_the_layer():
    """DataLoader's default fork start on Linux: the workers compute (they used to hang on the
    parent's worker pool, whose threads a forked child does not have)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", DATALOADER_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-4
