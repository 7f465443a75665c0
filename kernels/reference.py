"""Pure-PyTorch block pooling and FiLM modulation: ground truth, CPU path and benchmark baseline.

Shapes are channels-first: x (B, C, T). Blocks are ``block`` consecutive samples along T; there are
``ceil(T / block)`` of them and the last one may be partial (the model always uses full blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def n_blocks(t: int, block: int) -> int:
    return -(-t // block)


def _check(x: torch.Tensor, block: int) -> None:
    if x.dim() != 3:
        raise ValueError(f"expected x of shape (B, C, T), got {tuple(x.shape)}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")


def block_max_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, C, T) -> (B, C, ceil(T/block)): the max of each block."""
    _check(x, block)
    return F.max_pool1d(x, block, block, ceil_mode=True)


def expand_blocks(v: torch.Tensor, block: int, t: int) -> torch.Tensor:
    """(B, C, nb) -> (B, C, t): each block value repeated over its samples."""
    return v.repeat_interleave(block, dim=-1)[..., :t]


def block_film(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None, block: int) -> torch.Tensor:
    """y[b, c, t] = x[b, c, t] * scale[b, c, t // block] (+ shift[b, c, t // block])."""
    _check(x, block)
    nb = n_blocks(x.shape[-1], block)
    if scale.shape != (*x.shape[:2], nb):
        raise ValueError(f"scale must be {(*x.shape[:2], nb)} for x {tuple(x.shape)}, block {block}; "
                         f"got {tuple(scale.shape)}")
    y = x * expand_blocks(scale, block, x.shape[-1])
    if shift is not None:
        y = y + expand_blocks(shift, block, x.shape[-1])
    return y


def pool_act_block_max(h: torch.Tensor, block: int, slope: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Down-path prologue: MaxPool(2) -> LeakyReLU(slope), and the block max of the result.

    Returns (a, a_down): a (B, C, T//2) the activation, a_down (B, C, ceil(T/2/block)) its block max.
    """
    a = F.leaky_relu(F.max_pool1d(h, 2, 2), slope)
    return a, block_max_pool(a, block)


def block_film_concat(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None, block: int,
                      skip: torch.Tensor) -> torch.Tensor:
    """Up-path epilogue: cat([block_film(x, scale, shift), skip], dim=1)."""
    return torch.cat([block_film(x, scale, shift, block), skip], dim=1)
