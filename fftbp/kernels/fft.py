"""Whole-map FFT kernels: forward, input gradient and weight gradient from shared spectra.

The index algebra (``docs/algebra.md``, written once)
-----------------------------------------------------
Per spatial axis, with input length ``H``, padding ``(lo, hi)``, stride ``s``, dilation ``d``,
kernel ``K`` (extent ``E = d(K-1)+1``), output length ``O`` and transform length ``M``
(:func:`fftbp.fft.sizes.min_transform_len`), the three passes are::

    y[o]  = sum_k  x[o*s + k*d - lo] * w[k]                     forward
    dx[j] = sum_{o,k: o*s + k*d = j + lo} g[o] * w[k]            input gradient
    dw[k] = sum_o  g[o] * x[o*s + k*d - lo]                      weight gradient

Three spectra are formed, each by one batched real FFT of a zero-padded buffer of length M:

    Xf = rfft(x placed *reversed* at [0, H))     (u[i] = x[H-1-i])
    Wf = rfft(w placed at 0, d, 2d, ...)          (the dilated kernel)
    Gf = rfft(g placed at 0, s, 2s, ...)          (grad_output upsampled by the stride)

Reversing x turns each cross-correlation into a plain product, so no pass needs a conjugate:

    forward:       y[o]  = irfft(Xf . Wf)[(lo + H - 1 - o*s) mod M]
    input grad:    dx[j] = irfft(Gf . Wf)[j + lo]
    weight grad:   dw[k] = irfft(Xf . Gf)[(lo + H - 1 - k*d) mod M]

where ``.`` is, at each frequency, the channel contraction: forward sums over C, the input
gradient over F and the weight gradient over N (a block-diagonal product per group, an
elementwise product when ``groups == C``). Xf serves the forward and the weight gradient, Wf the
forward and the input gradient, Gf both gradients: each spectrum is computed once per step.

Normalisation (1/prod(M)) is folded into the read-out copy that every pass makes anyway.

NaN and Inf
-----------
A NaN or Inf anywhere in a map spreads through its whole transform: every output that shares a
transform with it becomes NaN, not only those whose window contains it (direct convolution
confines it to those). Non-finite inputs therefore give non-finite outputs on both paths, but the
FFT path marks more of them.
"""

from __future__ import annotations

import numpy as np

from fftbp._config import get_num_threads, parallel_for, timed
from fftbp._params import Pass
from fftbp.fft import irfft_batch, rfft_batch
from fftbp.fft.plans import prepare_irfft, prunes
from fftbp.kernels.layout import (
    FFTLayout,
    Index,
    SpectrumPool,
    flip_maps,
    layout,
    place_maps,
    read_maps,
)

__all__ = [
    "FFTLayout",
    "SpectrumPool",
    "forward",
    "forward_from_spectra",
    "grad_spectrum",
    "input_grad",
    "input_grad_from_spectra",
    "input_spectrum",
    "layout",
    "weight_grad",
    "weight_grad_from_spectra",
    "weight_spectrum",
]


def _spectrum(
    lay: FFTLayout,
    src: np.ndarray,
    place: tuple[slice, ...],
    flip: bool,
    pool: SpectrumPool | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """rfft of every map of ``src`` (shape ``(B, *size)``) placed at ``place`` in a zero buffer
    (written into ``out``, shape ``(*half, B)``, when given)."""
    spec_arr = lay.spectrum(src.shape[0], pool) if out is None else out
    if flip:
        src = flip_maps(src)

    def fill(scratch: np.ndarray, b0: int, b1: int) -> None:
        place_maps(scratch, src[b0:b1], place)

    rows = place[0].stop
    rfft_batch(spec_arr, lay.shape, fill, rows if pruned(lay, rows) else 0)
    return spec_arr


def pruned(lay: FFTLayout, rows: int) -> bool:
    """Whether a transform of maps with ``rows`` rows of data (or read) is pruned."""
    return prunes(rows, lay.shape)


def input_spectrum(
    lay: FFTLayout,
    x: np.ndarray,
    pool: SpectrumPool | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Xf: spectrum of each input map placed reversed at the buffer's start; ``(*half, n*C)``
    (written into ``out`` when given)."""
    flat = x.reshape(-1, *lay.spec.in_size)
    want = (*lay.half_shape, flat.shape[0])
    if out is not None and (out.shape != want or out.dtype != lay.complex_dtype):
        raise ValueError(f"out: expected {want} {lay.complex_dtype}, got {out.shape} {out.dtype}")
    return _spectrum(lay, flat, lay.x_place, True, pool, out)


def weight_spectrum(lay: FFTLayout, w: np.ndarray) -> np.ndarray:
    """Wf: spectrum of each dilated kernel; ``(*half, F*C/groups)``."""
    flat = w.reshape(-1, *lay.spec.kernel)
    return _spectrum(lay, flat, lay.w_place, flip=False)


def grad_spectrum(lay: FFTLayout, g: np.ndarray, pool: SpectrumPool | None = None) -> np.ndarray:
    """Gf: spectrum of each grad_output map upsampled by the stride; ``(*half, n*F)``."""
    flat = g.reshape(-1, *lay.spec.out_size)
    return _spectrum(lay, flat, lay.g_place, False, pool)


# -- channel products at each frequency ----------------------------------------------------------


#: Products of matrices under this many flops each run on one worker: numpy calls BLAS once
#: per matrix, and OpenBLAS serialises part of each call, so two threads calling it on tiny
#: matrices run slower than one (measured here, stacked complex64 matmuls: 2x8x8 0.38-0.81x,
#: 8x8x8 0.64-0.77x, 4x16x16 0.79-0.94x; 8x16x16 and larger 1.2-1.7x faster on two threads).
ONE_WORKER_BELOW = 8192


def product_flops(n: int, cg: int, fg: int) -> int:
    """Real flops of one frequency's channel product of one group (``n`` x ``cg`` x ``fg``
    complex multiply-adds, any of the three passes)."""
    return 8 * n * cg * fg


def product_workers(n: int, cg: int, fg: int) -> int:
    """Workers the channel products of a dense layer run on (see :data:`ONE_WORKER_BELOW`)."""
    return 1 if product_flops(n, cg, fg) < ONE_WORKER_BELOW else get_num_threads()


def _block_len(bytes_per_freq: int) -> int:
    """Frequencies per inner block so that the block's operands stay in L2 (~256 KiB)."""
    return max(1, (256 << 10) // max(bytes_per_freq, 1))


def _view(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Reshape that must not copy (a copy would silently drop writes into ``out``)."""
    return np.reshape(arr, shape, copy=False)


def _product(
    lay: FFTLayout,
    kind: Pass,
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
    accumulate: bool = False,
) -> None:
    """Per-frequency channel contraction of one pass; see the table in the module docstring.

    Shapes (Q frequencies, n batch, g groups, Cg/Fg channels per group), all frequency-major:
    forward:      a=Xf (Q,n,g,Cg), b=Wf (Q,g,Fg,Cg) -> out (Q,n,g,Fg), sum over Cg
    input grad:   a=Gf (Q,n,g,Fg), b=Wf (Q,g,Fg,Cg) -> out (Q,n,g,Cg), sum over Fg
    weight grad:  a=Xf (Q,n,g,Cg), b=Gf (Q,n,g,Fg) -> out (Q,g,Fg,Cg), sum over n
    """
    spec = lay.spec
    q, g = lay.nfreq, spec.groups
    cg, fg = spec.in_channels // g, spec.out_channels // g
    if kind == Pass.WEIGHT_GRAD:
        n = a.shape[-1] // spec.in_channels
        a4 = _view(a, (q, n, g, cg))
        b4 = _view(b, (q, n, g, fg))
        o4 = _view(out, (q, g, fg, cg))
    else:
        n = a.shape[-1] // (spec.in_channels if kind == Pass.FORWARD else spec.out_channels)
        a4 = _view(a, (q, n, g, cg if kind == Pass.FORWARD else fg))
        b4 = _view(b, (q, g, fg, cg))
        o4 = _view(out, (q, n, g, fg if kind == Pass.FORWARD else cg))
    per_freq = (a4[0].size + b4[0].size + o4[0].size) * a.itemsize
    step = _block_len(per_freq)
    depthwise = cg == 1

    def block(q0: int, q1: int) -> None:
        A, B, O = a4[q0:q1], b4[q0:q1], o4[q0:q1]
        if not depthwise:  # one stacked matmul per block, straight into O unless accumulating
            if kind == Pass.FORWARD:
                lhs, rhs, dst = (
                    A.transpose(0, 2, 1, 3),
                    B.transpose(0, 1, 3, 2),
                    O.transpose(0, 2, 1, 3),
                )
            elif kind == Pass.INPUT_GRAD:
                lhs, rhs, dst = A.transpose(0, 2, 1, 3), B, O.transpose(0, 2, 1, 3)
            else:
                lhs, rhs, dst = B.transpose(0, 2, 3, 1), A.transpose(0, 2, 1, 3), O
            # a weight gradient of one sample is an outer product: a broadcast multiply, 1.8x
            # faster than a GEMM with inner dimension 1 at 64x64 channels (both write-bound)
            op = np.multiply if kind == Pass.WEIGHT_GRAD and n == 1 else np.matmul
            if accumulate:
                dst += op(lhs, rhs)
            else:
                op(lhs, rhs, out=dst)
            return
        if kind == Pass.FORWARD:  # out[q,n,g,f] = x[q,n,g] * w[q,g,f]
            r = np.multiply(A, B[:, None, :, :, 0])
        elif kind == Pass.INPUT_GRAD:  # out[q,n,g,0] = sum_f gy[q,n,g,f] * w[q,g,f]
            r = np.multiply(A, B[:, None, :, :, 0])
            r = r if fg == 1 else r.sum(axis=-1, keepdims=True)
        else:  # out[q,g,f,0] = sum_n gy[q,n,g,f] * x[q,n,g]
            r = np.multiply(B, A).sum(axis=1)[..., None]
        if accumulate:
            O += r
        else:
            O[...] = r

    pieces, inner = max(step, -(-q // (8 * get_num_threads()))), q
    if not depthwise and product_workers(n, cg, fg) == 1:
        pieces, inner = q, step  # one worker, block by block: see ONE_WORKER_BELOW

    def work(_slot: int, q0: int, q1: int) -> None:
        with timed("products"):
            for b0 in range(q0, q1, inner):
                block(b0, min(b0 + inner, q1))

    parallel_for(work, q, pieces)


# -- read-out ------------------------------------------------------------------------------------
def _inverse(
    lay: FFTLayout,
    spectrum: np.ndarray,
    out_flat: np.ndarray,
    index: tuple[Index, ...],
    bias_rows: np.ndarray | None = None,
) -> None:
    """irfft each map of ``spectrum`` and write ``scale * map[index] (+ bias)`` to ``out_flat``."""
    scale = lay.scale
    first = _read_rows(lay, index)[0]
    if first is not None:  # the pruned inverse hands over the rows read, in order
        index = (slice(None), *index[1:])

    def read(scratch: np.ndarray, b0: int, b1: int) -> None:
        rows = None if bias_rows is None else bias_rows[b0:b1]
        read_maps(out_flat[b0:b1], scratch[: b1 - b0], index, scale, rows)

    irfft_batch(spectrum, lay.shape, read, first)


def _read_rows(lay: FFTLayout, index: tuple[Index, ...]) -> tuple[Index | None, int]:
    """The rows of the first axis a read-out at ``index`` takes and their number, if its
    inverse is pruned (else ``(None, 0)``)."""
    rows = index[0]
    count = np.arange(lay.shape[0])[rows].size
    return (rows, count) if pruned(lay, count) else (None, 0)


def _prepare(lay: FFTLayout, spectrum: np.ndarray, index: tuple[Index, ...]) -> None:
    """:func:`prepare_irfft` for a read-out at ``index``."""
    prepare_irfft(spectrum, lay.shape, _read_rows(lay, index)[1])


def forward_from_spectra(
    lay: FFTLayout,
    xf: np.ndarray,
    wf: np.ndarray,
    bias: np.ndarray | None = None,
    pool: SpectrumPool | None = None,
) -> np.ndarray:
    """y from Xf (``(*half, n*C)``) and Wf; returns ``(n, F, *out)``."""
    spec = lay.spec
    n = xf.shape[-1] // spec.in_channels
    prod = lay.spectrum(n * spec.out_channels, pool)
    _prepare(lay, prod, lay.out_index)
    _product(lay, Pass.FORWARD, xf, wf, prod)
    y = np.empty((n, spec.out_channels, *spec.out_size), dtype=spec.dtype)
    rows = None if bias is None else np.tile(bias, n)
    _inverse(lay, prod, y.reshape(n * spec.out_channels, *spec.out_size), lay.out_index, rows)
    if pool is not None:
        pool.give_spectrum(prod)
    return y


def input_grad_from_spectra(
    lay: FFTLayout, gf: np.ndarray, wf: np.ndarray, pool: SpectrumPool | None = None
) -> np.ndarray:
    """dx from Gf (``(*half, n*F)``) and Wf; returns ``(n, C, *in)``."""
    spec = lay.spec
    n = gf.shape[-1] // spec.out_channels
    prod = lay.spectrum(n * spec.in_channels, pool)
    _prepare(lay, prod, lay.dx_index)
    _product(lay, Pass.INPUT_GRAD, gf, wf, prod)
    dx = np.empty((n, spec.in_channels, *spec.in_size), dtype=spec.dtype)
    _inverse(lay, prod, dx.reshape(n * spec.in_channels, *spec.in_size), lay.dx_index)
    if pool is not None:
        pool.give_spectrum(prod)
    return dx


def weight_grad_spectrum(
    lay: FFTLayout,
    xf: np.ndarray,
    gf: np.ndarray,
    out: np.ndarray | None = None,
    pool: SpectrumPool | None = None,
) -> np.ndarray:
    """The weight gradient's spectrum ``sum_n Xf . Gf``, accumulated into ``out`` if given."""
    spec = lay.spec
    maps = spec.out_channels * (spec.in_channels // spec.groups)
    if out is None:
        out = lay.spectrum(maps, pool)
        _prepare(lay, out, lay.dw_index)
        _product(lay, Pass.WEIGHT_GRAD, xf, gf, out)
    else:
        _product(lay, Pass.WEIGHT_GRAD, xf, gf, out, accumulate=True)
    return out


def weight_grad_from_spectra(
    lay: FFTLayout, dwf: np.ndarray, pool: SpectrumPool | None = None
) -> np.ndarray:
    """dw from its spectrum (see :func:`weight_grad_spectrum`, which ``dwf`` is destroyed by);
    returns ``(F, C/groups, *k)``."""
    spec = lay.spec
    dw = np.empty(spec.weight_shape, dtype=spec.dtype)
    _inverse(lay, dwf, dw.reshape(-1, *spec.kernel), lay.dw_index)
    if pool is not None:
        pool.give_spectrum(dwf)
    return dw


# -- whole passes over a batch chunk: the engine (fftbp.engine) chunks the batch ---------------
def forward(
    lay: FFTLayout,
    x: np.ndarray,
    wf: np.ndarray,
    bias: np.ndarray | None = None,
    pool: SpectrumPool | None = None,
) -> np.ndarray:
    """Forward pass of the samples of ``x`` by FFT, from the weight spectrum ``wf``."""
    xf = input_spectrum(lay, x, pool)
    y = forward_from_spectra(lay, xf, wf, bias, pool)
    if pool is not None:
        pool.give_spectrum(xf)
    return y


def input_grad(
    lay: FFTLayout, wf: np.ndarray, g: np.ndarray, pool: SpectrumPool | None = None
) -> np.ndarray:
    """Input gradient of the samples of ``g`` by FFT, from the weight spectrum ``wf``."""
    gf = grad_spectrum(lay, g, pool)
    dx = input_grad_from_spectra(lay, gf, wf, pool)
    if pool is not None:
        pool.give_spectrum(gf)
    return dx


def weight_grad(
    lay: FFTLayout, x: np.ndarray, g: np.ndarray, chunk: int, pool: SpectrumPool | None = None
) -> np.ndarray:
    """Weight gradient by FFT over ``chunk`` samples at a time; the batch sum is accumulated in
    the frequency domain (one inverse transform in all)."""
    spec = lay.spec
    pool = pool or SpectrumPool()  # the chunks reuse one set of buffers
    dwf = None
    for n0 in range(0, spec.batch, chunk):
        xf = input_spectrum(lay, x[n0 : n0 + chunk], pool)
        gf = grad_spectrum(lay, g[n0 : n0 + chunk], pool)
        dwf = weight_grad_spectrum(lay, xf, gf, dwf, pool)
        pool.give_spectrum(xf)
        pool.give_spectrum(gf)
    assert dwf is not None
    return weight_grad_from_spectra(lay, dwf, pool)
