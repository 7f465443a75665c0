"""Pure-PyTorch block pooling and FiLM modulation: ground truth, CPU path and benchmark baseline.

Shapes are channels-first: x (B, C, T). Blocks are ``block`` consecutive samples along T; there are
``ceil(T / block)`` of them and the last one may be partial (the model always uses full blocks).
"""

from __future__ import annotations

import numbers
import sys

import torch
import torch.nn.functional as F

try:
    from torch._subclasses.fake_tensor import is_fake as _is_fake
except ImportError:  # a private module: without it, meta tensors alone are seen as data-less
    def _is_fake(t) -> bool:
        return False


def no_data(t) -> bool:
    """A tensor with no data for a kernel to read: on the meta device, or fake (shape inference:
    FakeTensorMode, torch.export); the ops of this module give its result (shapes and dtypes)."""
    return isinstance(t, torch.Tensor) and (t.is_meta or _is_fake(t))


def n_blocks(t: int, block: int) -> int:
    return -(-t // block)


def _check(x: torch.Tensor, block: int, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected {name} of shape (B, C, T), got {shape}")
    if isinstance(block, bool) or not isinstance(block, numbers.Integral) or block < 1:
        raise ValueError(f"block must be an int >= 1, got {block!r}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[-1] < 1:
        raise ValueError(f"{name} has no samples (T = 0)")


def check_film_args(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None, block: int,
                    skip: torch.Tensor | None = None) -> None:
    """Shape, dtype and device checks shared by the reference and the Triton ops (same messages)."""
    _check(x, block)
    want = (*x.shape[:2], n_blocks(x.shape[-1], block))
    for name, p in (("scale", scale), ("shift", shift)):
        if p is None and name == "shift":
            continue
        if not isinstance(p, torch.Tensor) or p.shape != want:
            got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(f"{name} must be {want} for x {tuple(x.shape)}, block {block}; got {got}")
    if skip is not None and (not isinstance(skip, torch.Tensor) or skip.dim() != 3
                             or skip.shape[0] != x.shape[0] or skip.shape[2] != x.shape[2]):
        got = tuple(skip.shape) if isinstance(skip, torch.Tensor) else type(skip).__name__
        raise ValueError(f"skip must be (B, C_skip, T) = ({x.shape[0]}, *, {x.shape[2]}) to concatenate "
                         f"with x {tuple(x.shape)}; got {got}")
    for name, t in (("scale", scale), ("shift", shift), ("skip", skip)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")


def block_max_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, C, T) -> (B, C, ceil(T/block)): the max of each block (gradient to the first max, on ties)."""
    _check(x, block)
    return _max_pool1d(x, block, ceil_mode=True)


def _max_pool1d(x: torch.Tensor, k: int, ceil_mode: bool = False) -> torch.Tensor:
    if x.shape[1] == 0:  # F.max_pool1d refuses C = 0, not an empty batch: pool (B*C, 1, T)
        y = F.max_pool1d(x.reshape(-1, 1, x.shape[-1]), k, k, ceil_mode=ceil_mode)
        return y.reshape(*x.shape[:2], y.shape[-1])
    return F.max_pool1d(x, k, k, ceil_mode=ceil_mode)


def expand_blocks(v: torch.Tensor, block: int, t: int) -> torch.Tensor:
    """(B, C, nb) -> (B, C, t): each block value repeated over its samples."""
    return v.repeat_interleave(block, dim=-1)[..., :t]


def block_film(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None, block: int) -> torch.Tensor:
    """y[b, c, t] = x[b, c, t] * scale[b, c, t // block] (+ shift[b, c, t // block])."""
    check_film_args(x, scale, shift, block)
    y = x * expand_blocks(scale, block, x.shape[-1])
    if shift is not None:
        y = y + expand_blocks(shift, block, x.shape[-1])
    return y


def pool_act_block_max(h: torch.Tensor, block: int, slope: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Down-path prologue: MaxPool(2) -> LeakyReLU(slope), and the block max of the result.

    Returns (a, a_down): a (B, C, T//2) the activation, a_down (B, C, ceil(T/2/block)) its block max.
    """
    _check(h, block, "h")
    if h.shape[-1] < 2:
        raise ValueError(f"h needs at least 2 samples for MaxPool(2), got shape {tuple(h.shape)}")
    a = F.leaky_relu(_max_pool1d(h, 2), slope)
    return a, block_max_pool(a, block)


def block_film_concat(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None, block: int,
                      skip: torch.Tensor) -> torch.Tensor:
    """Up-path epilogue: cat([block_film(x, scale, shift), skip], dim=1)."""
    if skip is None:
        raise ValueError("block_film_concat needs a skip tensor")
    check_film_args(x, scale, shift, block, skip)
    return torch.cat([block_film(x, scale, shift, block), skip], dim=1)



def scale_shift(out) -> tuple:
    """A ``scale_fn``'s result, checked: the pair (scale, shift), shift may be None."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        got = f"{type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
        raise ValueError(f"scale_fn must return a pair (scale, shift), shift may be None; got a {got}")
    return tuple(out)


def compose_pool_film(ops, x, block: int, scale_fn, skip=None):
    """block max -> ``scale, shift = scale_fn(pooled)`` -> modulation (concatenated with ``skip``),
    written against an ops namespace (this module, the Triton module, or an unfused variant)."""
    scale, shift = scale_shift(scale_fn(ops.block_max_pool(x, block)))
    if skip is None:
        return ops.block_film(x, scale, shift, block)
    return ops.block_film_concat(x, scale, shift, block, skip)


def compose_pool_act_film(ops, h, block: int, slope: float, scale_fn):
    """pool_act_block_max -> ``scale, shift = scale_fn(a_down)`` -> a modulated, against ``ops``."""
    a, a_down = ops.pool_act_block_max(h, block, slope)
    scale, shift = scale_shift(scale_fn(a_down))
    return ops.block_film(a, scale, shift, block)


def pool_film(x: torch.Tensor, block: int, scale_fn, skip: torch.Tensor | None = None) -> torch.Tensor:
    """A modulation layer's memory-bound work around its normaliser: the block max of x, then
    ``scale, shift = scale_fn(pooled)`` (the attention or LSTM over the blocks; shift may be None),
    then x modulated per block, concatenated with ``skip`` when given."""
    return compose_pool_film(sys.modules[__name__], x, block, scale_fn, skip)


def pool_act_film(h: torch.Tensor, block: int, slope: float, scale_fn) -> torch.Tensor:
    """The down path's stage: pool_act_block_max, ``scale, shift = scale_fn(a_down)``, then a modulated."""
    return compose_pool_act_film(sys.modules[__name__], h, block, slope, scale_fn)
