"""Review by use of the kernels package: what a user or model author gets on odd input, on both paths.

Tiny shapes only: on CPU the Triton path runs through the interpreter (tests/conftest.py).
"""

from __future__ import annotations

import importlib

import pytest
import torch

pytest.importorskip("triton")

from kernels import reference as R  # noqa: E402

K = importlib.import_module("kernels.block_film")  # the Triton module, not the dispatched op

pytestmark = pytest.mark.kernels

def _film_leaves():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 16, generator=gen).requires_grad_()
    scale = torch.randn(1, 2, 2, generator=gen).requires_grad_()
    shift = torch.randn(1, 2, 2, generator=gen).requires_grad_()
    return x, scale, shift


@pytest.mark.parametrize("op", ["block_film", "block_max_pool", "pool_film", "pool_act_film",
                                "pool_act_block_max", "block_film_concat"])
def test_triton_double_backward_fails_with_a_clear_message(op):
    # Before: the kernels' gradients were constants under create_graph=True, so a gradient penalty
    # (d/d(x, scale) of |dL/dx|^2 + |scale|^2) lost its second-order terms without a word.
    x, scale, shift = _film_leaves()
    if op == "block_film":
        y = K.block_film(x, scale, shift, 8)
    elif op == "block_max_pool":
        y = K.block_max_pool(x, 8) ** 2
    elif op == "pool_film":
        y = K.pool_film(x, 8, lambda p: (torch.sigmoid(p), None))
    elif op == "pool_act_film":
        y = K.pool_act_film(x, 4, 0.2, lambda p: (torch.sigmoid(p), None))
    elif op == "pool_act_block_max":
        a, a_down = K.pool_act_block_max(x, 4)
        y = a ** 2
    else:
        y = K.block_film_concat(x, scale, shift, 8, x * 2)
    with pytest.raises(RuntimeError, match="no double backward.*AFILM_KERNEL=torch"):
        torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    # the reference differentiates twice
    (gx,) = torch.autograd.grad((R.block_film(x, scale, shift, 8) ** 2).sum(), x, create_graph=True)
    assert torch.autograd.grad((gx ** 2).sum(), scale)[0].abs().sum() > 0
