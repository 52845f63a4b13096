"""Layer cases shared by the test modules: the full option product on tiny shapes."""

from __future__ import annotations

import itertools

from fftbp._params import ConvSpec

SIZES = {1: (11,), 2: (9, 8), 3: (6, 5, 7)}
KERNELS = {1: (4,), 2: (3, 2), 3: (2, 3, 2)}
PADDINGS = ["int", "tuple", "pairs", "same", "valid"]
GROUPINGS = ["dense", "grouped", "depthwise", "depthwise_x2"]


def padding_value(kind: str, nd: int):
    return {
        "int": 1,
        "tuple": tuple(range(nd)),
        "pairs": tuple((i % 3, (2 * i + 1) % 4) for i in range(nd)),
        "same": "same",
        "valid": "valid",
    }[kind]


def channels(kind: str) -> tuple[int, int, int]:
    """(C, F, groups)"""
    return {
        "dense": (3, 2, 1),
        "grouped": (4, 6, 2),
        "depthwise": (3, 3, 3),
        "depthwise_x2": (2, 4, 2),
    }[kind]


def option_product():
    for nd, stride, pad, dil, grouping in itertools.product(
        (1, 2, 3), (1, 2), PADDINGS, (1, 2), GROUPINGS
    ):
        if pad == "same" and stride != 1:
            continue
        yield pytest_id(nd, stride, pad, dil, grouping), (nd, stride, pad, dil, grouping)


def pytest_id(*parts) -> str:
    return "-".join(str(p) for p in parts)


def make_case(nd, stride, pad, dil, grouping, dtype, rng, batch=2):
    c, f, groups = channels(grouping)
    x = rng.standard_normal((batch, c, *SIZES[nd])).astype(dtype)
    w = rng.standard_normal((f, c // groups, *KERNELS[nd])).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    kw = dict(stride=stride, padding=padding_value(pad, nd), dilation=dil, groups=groups)
    spec = ConvSpec.from_shapes(x.shape, w.shape, dtype=dtype, **kw)
    g = rng.standard_normal(spec.output_shape).astype(dtype)
    return x, w, b, g, kw
