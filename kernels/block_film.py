"""Triton kernels for block max-pooling and block FiLM modulation, forward and backward.

Same ops and signatures as ``kernels/reference.py`` (the ground truth). Layout: a channels-first
(B, C, T) tensor is seen as B*C rows of T samples; each row is cut into ``nb = ceil(T / block)``
blocks, the last possibly partial. Every kernel walks a 1-D grid over the *global* blocks
(row-major over rows, then blocks), ``NBT`` blocks per program, a (NBT, CHUNK) tile at a time with
``CHUNK = next_pow2(block)`` (capped; longer blocks loop over chunks). A whole block therefore
lives in one program, so per-block reductions (max, argmax, d(scale), d(shift)) need no atomics.

``pool_film`` (block max -> the caller's normaliser -> modulation, the model's up-path stage) links
two Functions so that x's two gradients are written in one pass: the modulation's backward computes
d(scale)/d(shift) and hands its output gradient on unscaled (a view, no data moved) as x's gradient;
the pooling's backward, which autograd runs after the normaliser's, then writes dx = g * scale + the
block max's gradient at its argmax. Without that autograd would add a dense pooling gradient to the
modulation's dx (3 more passes over x's size). ``pool_act_film`` does the same on the down path: the
fused MaxPool(2) + LeakyReLU backward scales the modulation's output gradient as it reads it, so the
activation's gradient is never stored.

Numerics: loads are upcast to fp32 right away, sums accumulate in fp32, stores cast to the output
dtype. fp32, fp16 and bf16 inputs (mixed dtypes promote like torch); a float64 tensor is refused in
one line (its result would be float64 computed in fp32), except the scale / shift a ``scale_fn`` of
pool_film / pool_act_film returns: that modulation is the reference's, in float64, as torch promotes.
The dispatch (kernels/__init__.py) sends float64 calls to the reference. Tensors without data (on
the ``meta`` device, or fake tensors) get the reference's result: shapes and dtypes.
Ties: the argmax of a block (and of each MaxPool(2) pair) is the *first* maximum, as in torch, so
gradients go where torch sends them. NaN inputs are not special-cased (their gradient is dropped).
First order only: a backward under create_graph=True (double backward) raises; the reference has it.

On a machine without CUDA the module switches the Triton interpreter on (TRITON_INTERPRET=1) before
triton is first imported (``triton.jit`` reads it at decoration time, triton's own helpers included),
so the same code runs on CPU tensors: slowly, for tests only. If triton was imported earlier the
import fails with a message saying to set the variable in the environment.
"""

from __future__ import annotations

import functools
import os
import sys

import torch

if not torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET"):
    if "triton" in sys.modules:
        # triton's own helpers were already built for the compiler, not the interpreter
        raise ImportError("triton was imported before the kernels could switch its interpreter on; "
                          "set TRITON_INTERPRET=1 in the environment to run the Triton kernels on CPU")
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from kernels import reference  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on")  # triton's rule
MAX_CHUNK = 1024  # longest block slice held in registers; longer blocks loop

# AFILM_TRITON_TUNE=0: one launch config, no autotuning (5x fewer compiles: the CUDA tests use it)
TUNE = os.environ.get("AFILM_TRITON_TUNE", "1").strip() != "0"

if INTERPRET or not TUNE:
    # the interpreter pays a fixed cost per program: few, large programs, and nothing to tune
    _CONFIGS = [triton.Config({"TILE": 4096}, num_warps=4)]
else:
    # elements per program x warps; tuned once per (blocks, T, block) key, i.e. once per layer shape
    _CONFIGS = [triton.Config({"TILE": tile}, num_warps=w)
                for tile, w in ((2048, 4), (4096, 4), (4096, 8), (8192, 8), (16384, 16))]
_KEY = ["n_total", "T", "BLOCK_LEN"]


@triton.jit
def _block_coords(pid, n_total, T, nb, BLOCK_LEN: tl.constexpr, EVEN: tl.constexpr, NBT: tl.constexpr):
    """This program's global block ids, their mask, row, first sample (flat) and end of their row.

    Block ids and rows are int32 (the host checks the block count), sample offsets int64."""
    g = pid * NBT + tl.arange(0, NBT)
    gmask = g < n_total
    row = g // nb
    row_start = row.to(tl.int64) * T
    if EVEN:
        start = g.to(tl.int64) * BLOCK_LEN  # T % block == 0: blocks tile the flat tensor (vectorises)
    else:
        start = row_start + (g - row * nb) * BLOCK_LEN
    return g, gmask, row, start, row_start + T


@triton.jit
def _tile_mask(gmask, j, offs, end, BLOCK_LEN: tl.constexpr, EVEN: tl.constexpr, CHUNK: tl.constexpr):
    """Mask of a (NBT, CHUNK) tile. Terms that are statically true are left out, so that in the
    model's case (T % block == 0, power-of-two block) the mask is constant along a block and the
    loads and stores can be vectorised."""
    m = gmask[:, None]
    if BLOCK_LEN % CHUNK != 0:
        m = m & (j[None, :] < BLOCK_LEN)
    if not EVEN:
        m = m & (offs < end[:, None])
    return m


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _block_max_pool_fwd_kernel(X, Y, Arg, n_total, T, nb,
                               BLOCK_LEN: tl.constexpr, EVEN: tl.constexpr,
                               TILE: tl.constexpr, CHUNK: tl.constexpr):
    NBT: tl.constexpr = TILE // CHUNK
    g, gmask, row, start, end = _block_coords(tl.program_id(0), n_total, T, nb, BLOCK_LEN, EVEN, NBT)
    best = tl.full((NBT,), float("-inf"), tl.float32)
    arg = tl.zeros((NBT,), tl.int32)
    for k0 in range(0, BLOCK_LEN, CHUNK):
        j = k0 + tl.arange(0, CHUNK)
        offs = start[:, None] + j[None, :]
        m = _tile_mask(gmask, j, offs, end, BLOCK_LEN, EVEN, CHUNK)
        x = tl.load(X + offs, mask=m, other=float("-inf")).to(tl.float32)
        cmax = tl.max(x, axis=1)
        carg = tl.min(tl.where(x == cmax[:, None], j[None, :], 2147483647), axis=1)
        arg = tl.where(cmax > best, carg, arg)  # strict: an equal max in a later chunk loses
        best = tl.maximum(best, cmax)
    tl.store(Y + g, best, mask=gmask)
    tl.store(Arg + g, arg, mask=gmask)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _block_max_pool_bwd_kernel(DY, Arg, DX, n_total, T, nb,
                               BLOCK_LEN: tl.constexpr, EVEN: tl.constexpr,
                               TILE: tl.constexpr, CHUNK: tl.constexpr):
    NBT: tl.constexpr = TILE // CHUNK
    g, gmask, row, start, end = _block_coords(tl.program_id(0), n_total, T, nb, BLOCK_LEN, EVEN, NBT)
    dy = tl.load(DY + g, mask=gmask, other=0.0).to(tl.float32)
    arg = tl.load(Arg + g, mask=gmask, other=-1)
    for k0 in range(0, BLOCK_LEN, CHUNK):
        j = k0 + tl.arange(0, CHUNK)
        offs = start[:, None] + j[None, :]
        m = _tile_mask(gmask, j, offs, end, BLOCK_LEN, EVEN, CHUNK)
        # every sample is written (zero or the block's gradient): no zero-fill pass needed
        dx = tl.where(j[None, :] == arg[:, None], dy[:, None], 0.0)
        tl.store(DX + offs, dx, mask=m)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _block_film_fwd_kernel(X, Scale, Shift, Y, n_total, T, nb, C, y_batch_stride,
                           BLOCK_LEN: tl.constexpr, EVEN: tl.constexpr, HAS_SHIFT: tl.constexpr,
                           TILE: tl.constexpr, CHUNK: tl.constexpr):
    NBT: tl.constexpr = TILE // CHUNK
    g, gmask, row, start, end = _block_coords(tl.program_id(0), n_total, T, nb, BLOCK_LEN, EVEN, NBT)
    # Y may be a wider buffer (the concatenation): row (b, c) of x lands at b * y_batch_stride + c * T
    y_shift = (row // C).to(tl.int64) * (y_batch_stride - C * T)
    s = tl.load(Scale + g, mask=gmask, other=0.0).to(tl.float32)
    if HAS_SHIFT:
        b = tl.load(Shift + g, mask=gmask, other=0.0).to(tl.float32)
    for k0 in range(0, BLOCK_LEN, CHUNK):
        j = k0 + tl.arange(0, CHUNK)
        offs = start[:, None] + j[None, :]
        m = _tile_mask(gmask, j, offs, end, BLOCK_LEN, EVEN, CHUNK)
        x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
        y = x * s[:, None]
        if HAS_SHIFT:
            y += b[:, None]
        tl.store(Y + y_shift[:, None] + offs, y, mask=m)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _block_film_bwd_kernel(X, Scale, DY, DX, DScale, DShift, n_total, T, nb, C, dy_batch_stride,
                           BLOCK_LEN: tl.constexpr, EVEN: tl.constexpr, HAS_SHIFT: tl.constexpr,
                           STORE_DX: tl.constexpr, TILE: tl.constexpr, CHUNK: tl.constexpr):
    NBT: tl.constexpr = TILE // CHUNK
    g, gmask, row, start, end = _block_coords(tl.program_id(0), n_total, T, nb, BLOCK_LEN, EVEN, NBT)
    dy_shift = (row // C).to(tl.int64) * (dy_batch_stride - C * T)
    s = tl.load(Scale + g, mask=gmask, other=0.0).to(tl.float32)
    ds = tl.zeros((NBT,), tl.float32)
    db = tl.zeros((NBT,), tl.float32)
    for k0 in range(0, BLOCK_LEN, CHUNK):
        j = k0 + tl.arange(0, CHUNK)
        offs = start[:, None] + j[None, :]
        m = _tile_mask(gmask, j, offs, end, BLOCK_LEN, EVEN, CHUNK)
        dy = tl.load(DY + dy_shift[:, None] + offs, mask=m, other=0.0).to(tl.float32)
        x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
        if STORE_DX:  # else the pooling's backward computes dx (pool_film)
            tl.store(DX + offs, dy * s[:, None], mask=m)
        ds += tl.sum(dy * x, axis=1)  # one pass: dx and the per-block reductions together
        if HAS_SHIFT:
            db += tl.sum(dy, axis=1)
    tl.store(DScale + g, ds, mask=gmask)
    if HAS_SHIFT:
        tl.store(DShift + g, db, mask=gmask)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _pool_film_dx_kernel(G, Scale, DPool, Arg, DX, n_total, T, nb, C, g_batch_stride,
                         BLOCK_LEN: tl.constexpr, EVEN: tl.constexpr,
                         TILE: tl.constexpr, CHUNK: tl.constexpr):
    """dx = g * scale + the block max's gradient at its argmax: x's two gradients in one pass (g: the
    modulation's output gradient, in a concatenation buffer of batch stride g_batch_stride)."""
    NBT: tl.constexpr = TILE // CHUNK
    g, gmask, row, start, end = _block_coords(tl.program_id(0), n_total, T, nb, BLOCK_LEN, EVEN, NBT)
    g_shift = (row // C).to(tl.int64) * (g_batch_stride - C * T)
    s = tl.load(Scale + g, mask=gmask, other=0.0).to(tl.float32)
    dp = tl.load(DPool + g, mask=gmask, other=0.0).to(tl.float32)
    arg = tl.load(Arg + g, mask=gmask, other=-1)
    for k0 in range(0, BLOCK_LEN, CHUNK):
        j = k0 + tl.arange(0, CHUNK)
        offs = start[:, None] + j[None, :]
        m = _tile_mask(gmask, j, offs, end, BLOCK_LEN, EVEN, CHUNK)
        gv = tl.load(G + g_shift[:, None] + offs, mask=m, other=0.0).to(tl.float32)
        dx = gv * s[:, None] + tl.where(j[None, :] == arg[:, None], dp[:, None], 0.0)
        tl.store(DX + offs, dx, mask=m)


@triton.jit
def _pair_tile(gmask, row, start, end, k0, T, T_in, BLOCK_LEN: tl.constexpr, EVEN: tl.constexpr,
               CHUNK: tl.constexpr):
    """Offsets into h (rows of T_in) and mask of the 2 * CHUNK samples pooled into a CHUNK tile."""
    k = tl.arange(0, 2 * CHUNK)
    row = row.to(tl.int64)
    hoff = (row * T_in + 2 * (start - row * T) + 2 * k0)[:, None] + k[None, :]
    j = k0 + k // 2
    return hoff, _tile_mask(gmask, j, start[:, None] + j[None, :], end, BLOCK_LEN, EVEN, CHUNK)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _pool_act_block_max_fwd_kernel(H, A, Code, ADown, Arg, n_total, T, nb, T_in, slope,
                                   BLOCK_LEN: tl.constexpr, EVEN: tl.constexpr,
                                   TILE: tl.constexpr, CHUNK: tl.constexpr):
    """a = leaky_relu(maxpool2(h)), a_down = block max of a, in one read of h (T_in = 2T or 2T+1)."""
    NBT: tl.constexpr = TILE // CHUNK
    g, gmask, row, start, end = _block_coords(tl.program_id(0), n_total, T, nb, BLOCK_LEN, EVEN, NBT)
    best = tl.full((NBT,), float("-inf"), tl.float32)
    arg = tl.zeros((NBT,), tl.int32)
    for k0 in range(0, BLOCK_LEN, CHUNK):
        j = k0 + tl.arange(0, CHUNK)
        offs = start[:, None] + j[None, :]
        m = _tile_mask(gmask, j, offs, end, BLOCK_LEN, EVEN, CHUNK)
        # the pairs (h[2t], h[2t+1]) as one contiguous (NBT, 2 * CHUNK) load, then split
        hoff, hmask = _pair_tile(gmask, row, start, end, k0, T, T_in, BLOCK_LEN, EVEN, CHUNK)
        h = tl.load(H + hoff, mask=hmask, other=0.0).to(tl.float32)
        h0, h1 = tl.split(tl.reshape(h, (NBT, CHUNK, 2)))
        second = h1 > h0  # a tie keeps the first sample, like torch
        pre = tl.where(second, h1, h0)
        pos = pre > 0
        a = tl.where(pos, pre, pre * slope)
        a = a.to(A.dtype.element_ty)
        tl.store(A + offs, a, mask=m)
        # code bit 0: which sample of the pair won; bit 1: the activation's positive branch
        tl.store(Code + offs, second.to(tl.int8) + 2 * pos.to(tl.int8), mask=m)
        a = tl.where(m, a.to(tl.float32), float("-inf"))  # max of the rounded values, as torch sees them
        cmax = tl.max(a, axis=1)
        carg = tl.min(tl.where(a == cmax[:, None], j[None, :], 2147483647), axis=1)
        arg = tl.where(cmax > best, carg, arg)
        best = tl.maximum(best, cmax)
    tl.store(ADown + g, best, mask=gmask)
    tl.store(Arg + g, arg, mask=gmask)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _pool_act_block_max_bwd_kernel(DA, DADown, Code, Arg, DH, Scale, n_total, T, nb, T_in, slope,
                                   BLOCK_LEN: tl.constexpr, EVEN: tl.constexpr, SCALED: tl.constexpr,
                                   TILE: tl.constexpr, CHUNK: tl.constexpr):
    """dh: the pair winner gets (da + the block max's gradient) * leaky'(pre), the loser 0. SCALED: DA
    is the modulation's output gradient, da = DA * scale per block (pool_act_film)."""
    NBT: tl.constexpr = TILE // CHUNK
    g, gmask, row, start, end = _block_coords(tl.program_id(0), n_total, T, nb, BLOCK_LEN, EVEN, NBT)
    dd = tl.load(DADown + g, mask=gmask, other=0.0).to(tl.float32)
    if SCALED:
        s = tl.load(Scale + g, mask=gmask, other=0.0).to(tl.float32)
    arg = tl.load(Arg + g, mask=gmask, other=-1)
    for k0 in range(0, BLOCK_LEN, CHUNK):
        j = k0 + tl.arange(0, CHUNK)
        offs = start[:, None] + j[None, :]
        m = _tile_mask(gmask, j, offs, end, BLOCK_LEN, EVEN, CHUNK)
        da = tl.load(DA + offs, mask=m, other=0.0).to(tl.float32)
        if SCALED:
            da = da * s[:, None]
        code = tl.load(Code + offs, mask=m, other=0)
        grad = da + tl.where(j[None, :] == arg[:, None], dd[:, None], 0.0)
        grad = tl.where((code & 2) != 0, grad, grad * slope)
        second = (code & 1) != 0
        dh = tl.join(tl.where(second, 0.0, grad), tl.where(second, grad, 0.0))
        hoff, hmask = _pair_tile(gmask, row, start, end, k0, T, T_in, BLOCK_LEN, EVEN, CHUNK)
        tl.store(DH + hoff, tl.reshape(dh, (NBT, 2 * CHUNK)), mask=hmask)


# ---------------------------------------------------------------------------------------------------
# host launchers: validate, make 2-D row views, pick the tile, launch


DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_dtype(t, name: str) -> None:
    if isinstance(t, torch.Tensor) and t.dtype not in DTYPES:
        # the kernels compute in fp32: a float64 output from them would hold fp32 digits
        raise ValueError(f"{name} must be float32, float16 or bfloat16 for the Triton kernels, got "
                         f"{t.dtype} (kernels.reference takes any floating dtype)")


def _check(x: torch.Tensor, block: int, name: str = "x") -> None:
    _check_dtype(x, name)
    reference._check(x, block, name)
    if not (x.is_cuda or INTERPRET or reference.no_data(x)):
        raise ValueError(f"the Triton kernels need CUDA tensors (got {name} on {x.device}); "
                         "use kernels.reference or TRITON_INTERPRET=1")


def _layout(t: int, block: int, rows: int) -> dict:
    nb = triton.cdiv(t, block)
    if rows * nb >= 2**31:
        raise ValueError(f"too many blocks for one launch ({rows} rows x {nb} blocks); split the batch")
    return dict(n_total=rows * nb, T=t, nb=nb, BLOCK_LEN=block, EVEN=t % block == 0,
                CHUNK=min(triton.next_power_of_2(block), MAX_CHUNK))


def _grid(lay: dict):
    # From the launcher's Python int, not meta["n_total"]: Triton 3.6's interpreter hands the grid
    # function its scalar arguments as tensors, which range() cannot take.
    return lambda meta: (triton.cdiv(lay["n_total"], meta["TILE"] // meta["CHUNK"]),)


def _contiguous(*ts: torch.Tensor) -> None:
    for t in ts:
        if t is not None and not t.is_contiguous():
            raise ValueError("internal: Triton launchers need contiguous tensors")


def block_max_pool_fwd(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, T) -> max (B, C, nb) and the in-block argmax (int32, first max)."""
    _contiguous(x)
    B, C, T = x.shape
    lay = _layout(T, block, B * C)
    y = torch.empty((B, C, lay["nb"]), dtype=x.dtype, device=x.device)
    arg = torch.empty((B, C, lay["nb"]), dtype=torch.int32, device=x.device)
    if lay["n_total"]:
        _block_max_pool_fwd_kernel[_grid(lay)](x, y, arg, **lay)
    return y, arg


def block_max_pool_bwd(dy: torch.Tensor, arg: torch.Tensor, t: int, dtype: torch.dtype, block: int):
    _contiguous(dy, arg)
    B, C, _ = dy.shape
    lay = _layout(t, block, B * C)
    dx = torch.empty((B, C, t), dtype=dtype, device=dy.device)
    if lay["n_total"]:
        _block_max_pool_bwd_kernel[_grid(lay)](dy, arg, dx, **lay)
    return dx


def block_film_fwd(x, scale, shift, block: int, skip=None) -> torch.Tensor:
    """x * scale (+ shift) per block; with ``skip``, written into cat([., skip], 1) directly."""
    _contiguous(x, scale, shift)
    B, C, T = x.shape
    lay = _layout(T, block, B * C)
    dtype = torch.promote_types(x.dtype, scale.dtype)
    if shift is not None:
        dtype = torch.promote_types(dtype, shift.dtype)
    c_out = C
    if skip is not None:
        dtype = torch.promote_types(dtype, skip.dtype)
        c_out += skip.shape[1]
    y = torch.empty((B, c_out, T), dtype=dtype, device=x.device)
    if lay["n_total"]:
        _block_film_fwd_kernel[_grid(lay)](x, scale, scale if shift is None else shift, y, C=max(C, 1),
                                      y_batch_stride=c_out * T, HAS_SHIFT=shift is not None, **lay)
    if skip is not None:
        y[:, C:].copy_(skip)  # the only other traffic of the concatenation
    return y


def block_film_bwd(dy, x, scale, has_shift: bool, block: int, shift_dtype=None, store_dx: bool = True):
    """dy (B, C_out >= C, T) -> dx, d(scale), d(shift) (None without shift), in one pass over dy and x.
    ``store_dx=False``: dx is None (pool_film's pooling backward computes it)."""
    _contiguous(dy, x, scale)
    B, C, T = x.shape
    lay = _layout(T, block, B * C)
    dx = torch.empty_like(x) if store_dx else None
    dscale = torch.empty_like(scale)
    dshift = None
    if has_shift:
        dshift = torch.empty(scale.shape, dtype=shift_dtype or scale.dtype, device=x.device)
    if lay["n_total"]:
        _block_film_bwd_kernel[_grid(lay)](x, scale, dy, x if dx is None else dx, dscale,
                                      dscale if dshift is None else dshift, C=max(C, 1),
                                      dy_batch_stride=dy.shape[1] * T, HAS_SHIFT=has_shift,
                                      STORE_DX=store_dx, **lay)
    return dx, dscale, dshift


def pool_act_block_max_fwd(h: torch.Tensor, block: int, slope: float):
    """-> a (B, C, T_in//2), a_down (B, C, nb), code (int8: pair argmax | positive << 1), block argmax."""
    _contiguous(h)
    B, C, t_in = h.shape
    t = t_in // 2
    lay = _layout(t, block, B * C)
    a = torch.empty((B, C, t), dtype=h.dtype, device=h.device)
    code = torch.empty((B, C, t), dtype=torch.int8, device=h.device)
    a_down = torch.empty((B, C, lay["nb"]), dtype=h.dtype, device=h.device)
    arg = torch.empty((B, C, lay["nb"]), dtype=torch.int32, device=h.device)
    if lay["n_total"]:
        _pool_act_block_max_fwd_kernel[_grid(lay)](h, a, code, a_down, arg, T_in=t_in, slope=slope, **lay)
    return a, a_down, code, arg


def pool_act_block_max_bwd(da, da_down, code, arg, t_in: int, dtype: torch.dtype, block: int, slope: float,
                           scale: torch.Tensor | None = None):
    """dh from a's gradient ``da`` (with ``scale``: the modulation's output gradient, scaled here) and
    a_down's gradient."""
    _contiguous(da, da_down, code, arg, scale)
    B, C, t = da.shape
    lay = _layout(t, block, B * C)
    dh = torch.empty((B, C, t_in), dtype=dtype, device=da.device)
    if t_in % 2:
        dh[..., -1] = 0  # MaxPool(2) drops the odd last sample
    if lay["n_total"]:
        _pool_act_block_max_bwd_kernel[_grid(lay)](da, da_down, code, arg, dh,
                                                   da_down if scale is None else scale, T_in=t_in,
                                                   slope=slope, SCALED=scale is not None, **lay)
    return dh


def pool_film_dx(g: torch.Tensor, scale: torch.Tensor, dpool: torch.Tensor, arg: torch.Tensor, block: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """g (B, C, T), a view into a (B, C_out >= C, T) buffer or contiguous -> dx = g * scale + the
    pooling's gradient ``dpool`` at ``arg``."""
    B, C, T = g.shape
    if g.stride()[1:] != (T, 1):
        g = g.contiguous()
    _contiguous(scale, dpool, arg)
    lay = _layout(T, block, B * C)
    dx = torch.empty((B, C, T), dtype=dtype, device=g.device)
    if lay["n_total"]:
        _pool_film_dx_kernel[_grid(lay)](g, scale, dpool, arg, dx, C=max(C, 1),
                                         g_batch_stride=g.stride(0) if B > 1 else C * T, **lay)
    return dx


# ---------------------------------------------------------------------------------------------------
# autograd

_NO_DOUBLE_BACKWARD = ("the Triton kernels (AFILM_KERNEL=triton) have no double backward: their gradients "
                       "cannot be differentiated again (create_graph=True); use AFILM_KERNEL=torch for that")


def _first_order(backward):
    """A Function's backward that refuses create_graph=True in one line: its gradients are computed
    by kernels autograd cannot see, so a graph of them would hold constants and a gradient penalty
    would lose its second-order terms without a word."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled() and any(ctx.needs_input_grad):  # backward under create_graph=True
            raise RuntimeError(_NO_DOUBLE_BACKWARD)
        return backward(ctx, *grads)

    return wrapper


class BlockMaxPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, block):
        y, arg = block_max_pool_fwd(x.contiguous(), block)
        ctx.save_for_backward(arg)
        ctx.block, ctx.t, ctx.dtype = block, x.shape[-1], x.dtype
        return y

    @staticmethod
    @_first_order
    def backward(ctx, dy):
        (arg,) = ctx.saved_tensors
        return block_max_pool_bwd(dy.contiguous(), arg, ctx.t, ctx.dtype, ctx.block), None


class BlockFiLMFunction(torch.autograd.Function):
    """y = x * scale (+ shift) per block; with ``skip``, y = cat([that, skip], dim=1)."""

    @staticmethod
    def forward(ctx, x, scale, shift, block, skip):
        x, scale = x.contiguous(), scale.contiguous()
        shift = None if shift is None else shift.contiguous()
        y = block_film_fwd(x, scale, shift, block, skip)
        ctx.save_for_backward(x, scale)
        ctx.block, ctx.has_shift = block, shift is not None
        ctx.shift_dtype = None if shift is None else shift.dtype
        ctx.c = x.shape[1]
        ctx.skip_dtype = None if skip is None else skip.dtype
        return y

    @staticmethod
    @_first_order
    def backward(ctx, dy):
        x, scale = ctx.saved_tensors
        dy = dy.contiguous()
        dx = dscale = dshift = dskip = None
        if any(ctx.needs_input_grad[:3]):
            dx, dscale, dshift = block_film_bwd(dy, x, scale, ctx.has_shift, ctx.block, ctx.shift_dtype)
        if ctx.skip_dtype is not None and ctx.needs_input_grad[4]:
            dskip = dy[:, ctx.c:].to(ctx.skip_dtype)  # a view: the concat's backward moves no data
        return dx, dscale, dshift, None, dskip


class PoolActBlockMaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, block, slope):
        a, a_down, code, arg = pool_act_block_max_fwd(h.contiguous(), block, slope)
        ctx.save_for_backward(code, arg)
        ctx.block, ctx.slope, ctx.t_in, ctx.dtype = block, slope, h.shape[-1], h.dtype
        return a, a_down

    @staticmethod
    @_first_order
    def backward(ctx, da, da_down):
        code, arg = ctx.saved_tensors
        dh = pool_act_block_max_bwd(da.contiguous(), da_down.contiguous(), code, arg, ctx.t_in, ctx.dtype,
                                    ctx.block, ctx.slope)
        return dh, None, None


class _FiLMLink:
    """What pool_film's (pool_act_film's) modulation hands to its pooling's backward: the scale, set
    when the modulation's backward passed on its output gradient unscaled."""

    def __init__(self):
        self.scale = None


class PoolForFiLMFunction(torch.autograd.Function):
    """x -> (x itself, for the modulation only, and its block max). The backward gets both gradients
    of x in one call and writes dx in one pass (no dense pooling gradient for autograd to add)."""

    @staticmethod
    def forward(ctx, x, block, link):
        y, arg = block_max_pool_fwd(x, block)
        ctx.save_for_backward(arg)
        ctx.block, ctx.t, ctx.dtype, ctx.link = block, x.shape[-1], x.dtype, link
        return x.view_as(x), y

    @staticmethod
    @_first_order
    def backward(ctx, g, dpool):
        (arg,) = ctx.saved_tensors
        scale, ctx.link.scale = ctx.link.scale, None
        if scale is None:  # the modulation's gradient came already scaled (or never came: zeros)
            return g + block_max_pool_bwd(dpool.contiguous(), arg, ctx.t, ctx.dtype, ctx.block), None, None
        return pool_film_dx(g, scale, dpool.contiguous(), arg, ctx.block, ctx.dtype), None, None


class PoolActForFiLMFunction(torch.autograd.Function):
    """PoolActBlockMaxFunction for pool_act_film: a goes to the modulation only, whose backward leaves
    its gradient unscaled; the scale is applied here, in the pass that writes dh (da is never stored)."""

    @staticmethod
    def forward(ctx, h, block, slope, link):
        a, a_down, code, arg = pool_act_block_max_fwd(h, block, slope)
        ctx.save_for_backward(code, arg)
        ctx.block, ctx.slope, ctx.t_in, ctx.dtype, ctx.link = block, slope, h.shape[-1], h.dtype, link
        return a, a_down

    @staticmethod
    @_first_order
    def backward(ctx, g, da_down):
        code, arg = ctx.saved_tensors
        scale, ctx.link.scale = ctx.link.scale, None
        dh = pool_act_block_max_bwd(g.contiguous(), da_down.contiguous(), code, arg, ctx.t_in, ctx.dtype,
                                    ctx.block, ctx.slope, scale)
        return dh, None, None, None


class FiLMForPoolFunction(torch.autograd.Function):
    """BlockFiLMFunction whose backward leaves x's gradient unscaled for PoolForFiLMFunction: one pass
    over dy and x for d(scale) / d(shift), no dx written here."""

    @staticmethod
    def forward(ctx, x, scale, shift, block, skip, link):
        y = block_film_fwd(x, scale, shift, block, skip)
        ctx.save_for_backward(x, scale)
        ctx.block, ctx.has_shift, ctx.c, ctx.link = block, shift is not None, x.shape[1], link
        ctx.with_skip = skip is not None
        return y

    @staticmethod
    @_first_order
    def backward(ctx, dy):
        x, scale = ctx.saved_tensors
        dy = dy.contiguous()
        _, dscale, dshift = block_film_bwd(dy, x, scale, ctx.has_shift, ctx.block, scale.dtype,
                                           store_dx=False)
        ctx.link.scale = scale
        g = dy[:, :ctx.c] if ctx.with_skip else dy  # a view: the pooling's backward applies the scale
        dskip = dy[:, ctx.c:] if ctx.with_skip and ctx.needs_input_grad[4] else None
        return g, dscale, dshift, None, dskip, None


# ---------------------------------------------------------------------------------------------------
# public ops: the names and signatures of kernels/reference.py


def block_max_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, C, T) -> (B, C, ceil(T/block)): the max of each block."""
    _check(x, block)
    if reference.no_data(x):
        return reference.block_max_pool(x, block)
    return BlockMaxPoolFunction.apply(x, int(block))


def _check_film(x, scale, shift, block, skip=None):
    _check(x, block)
    reference.check_film_args(x, scale, shift, block, skip)
    for name, t in (("scale", scale), ("shift", shift), ("skip", skip)):
        _check_dtype(t, name)


def _float64(*ts) -> bool:
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in ts)


def _film(x, scale, shift, block: int, skip) -> torch.Tensor:
    """The modulation of a scale_fn's (scale, shift): the reference's for float64 ones (the output is
    float64: computed in float64, as torch does), else the kernels'."""
    ops = reference if _float64(scale, shift) else sys.modules[__name__]
    if skip is None:
        return ops.block_film(x, scale, shift, block)
    return ops.block_film_concat(x, scale, shift, block, skip)


def block_film(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None, block: int) -> torch.Tensor:
    """y[b, c, t] = x[b, c, t] * scale[b, c, t // block] (+ shift[b, c, t // block])."""
    _check_film(x, scale, shift, block)
    if reference.no_data(x):
        return reference.block_film(x, scale, shift, block)
    return BlockFiLMFunction.apply(x, scale, shift, int(block), None)


def pool_act_block_max(h: torch.Tensor, block: int, slope: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """MaxPool(2) -> LeakyReLU(slope) -> (a, block max of a), reading h once."""
    _check(h, block, "h")
    if h.shape[-1] < 2:
        raise ValueError(f"h needs at least 2 samples for MaxPool(2), got shape {tuple(h.shape)}")
    if reference.no_data(h):
        return reference.pool_act_block_max(h, block, slope)
    return PoolActBlockMaxFunction.apply(h, int(block), float(slope))


def block_film_concat(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None, block: int,
                      skip: torch.Tensor) -> torch.Tensor:
    """cat([block_film(x, scale, shift, block), skip], dim=1), the modulation written in place."""
    if skip is None:
        raise ValueError("block_film_concat needs a skip tensor")
    _check_film(x, scale, shift, block, skip)
    if reference.no_data(x):
        return reference.block_film_concat(x, scale, shift, block, skip)
    return BlockFiLMFunction.apply(x, scale, shift, int(block), skip)



def _linked_film(x, scale, shift, block: int, skip, link) -> torch.Tensor:
    """The modulation of pool_film / pool_act_film, after their pooling Function made ``link``."""
    if _float64(scale, shift):  # the reference's (its gradient comes scaled; the link sees no scale)
        return _film(x, scale, shift, block, skip)
    _check_film(x, scale, shift, block, skip)
    scale, shift = scale.contiguous(), None if shift is None else shift.contiguous()
    if any(t is not None and t.dtype != x.dtype for t in (scale, shift, skip)):
        # promoted output: the plain modulation (its gradient comes scaled; the link sees no scale)
        return BlockFiLMFunction.apply(x, scale, shift, int(block), skip)
    return FiLMForPoolFunction.apply(x, scale, shift, int(block), skip, link)


def pool_film(x: torch.Tensor, block: int, scale_fn, skip: torch.Tensor | None = None) -> torch.Tensor:
    """block_max_pool -> scale_fn -> block_film (block_film_concat with ``skip``), as the reference's
    pool_film. When x needs a gradient, x's two gradients (the modulation's and the pooling's) are
    written in one pass by the pooling's backward, which the modulation's backward leaves dx to."""
    _check(x, block)
    if reference.no_data(x):
        return reference.pool_film(x, block, scale_fn, skip)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _film(x, *reference.scale_shift(scale_fn(block_max_pool(x, block))), block, skip)
    link = _FiLMLink()
    x_link, pooled = PoolForFiLMFunction.apply(x.contiguous(), int(block), link)
    return _linked_film(x_link, *reference.scale_shift(scale_fn(pooled)), block, skip, link)


def pool_act_film(h: torch.Tensor, block: int, slope: float, scale_fn) -> torch.Tensor:
    """pool_act_block_max -> scale_fn(a_down) -> block_film(a, ...), as the reference's pool_act_film.
    When h needs a gradient, a's gradient is never stored: the modulation's backward passes its output
    gradient on unscaled and the fused pooling backward scales it while writing dh."""
    _check(h, block, "h")
    if h.shape[-1] < 2:
        raise ValueError(f"h needs at least 2 samples for MaxPool(2), got shape {tuple(h.shape)}")
    if reference.no_data(h):
        return reference.pool_act_film(h, block, slope, scale_fn)
    if not (torch.is_grad_enabled() and h.requires_grad):
        a, a_down = pool_act_block_max(h, block, slope)
        return _film(a, *reference.scale_shift(scale_fn(a_down)), block, None)
    link = _FiLMLink()
    a, a_down = PoolActForFiLMFunction.apply(h.contiguous(), int(block), float(slope), link)
    return _linked_film(a, *reference.scale_shift(scale_fn(a_down)), block, None, link)
