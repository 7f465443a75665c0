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

BOTH = pytest.mark.parametrize("impl", [K, R], ids=["triton", "reference"])


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


@BOTH
def test_non_float_inputs_are_refused_in_one_line(impl):
    # Before, on the reference (the default path): int/bool x -> NotImplementedError from
    # max_pool1d_impl; int scale accepted there but refused by the Triton path.
    x = torch.randn(1, 2, 16)
    for dtype in (torch.int64, torch.bool):
        with pytest.raises(ValueError, match="x must be"):
            impl.block_max_pool(torch.ones(1, 2, 16, dtype=dtype), 8)
        with pytest.raises(ValueError, match="x must be"):
            impl.block_film(torch.ones(1, 2, 16, dtype=dtype), torch.ones(1, 2, 2), None, 8)
        with pytest.raises(ValueError, match="scale must be a floating-point tensor"):
            impl.block_film(x, torch.ones(1, 2, 2, dtype=dtype), None, 8)
        with pytest.raises(ValueError, match="shift must be a floating-point tensor"):
            impl.block_film(x, torch.ones(1, 2, 2), torch.ones(1, 2, 2, dtype=dtype), 8)
        with pytest.raises(ValueError, match="skip must be a floating-point tensor"):
            impl.block_film_concat(x, torch.ones(1, 2, 2), None, 8, torch.ones(1, 1, 16, dtype=dtype))


@BOTH
def test_zero_channels_and_zero_samples(impl):
    # Before, on the reference: C = 0 and T = 0 -> max_pool1d's "Expected 2D or 3D (batch mode)
    # tensor" RuntimeError; the Triton path returned (B, 0, nb) and refused T = 0 in words.
    x = torch.randn(2, 0, 40, requires_grad=True)
    assert impl.block_max_pool(x, 8).shape == (2, 0, 5)
    a, a_down = impl.pool_act_block_max(x, 8)
    assert a.shape == (2, 0, 20) and a_down.shape == (2, 0, 3)
    assert impl.block_film(x, torch.randn(2, 0, 5), None, 8).shape == (2, 0, 40)
    with pytest.raises(ValueError, match=r"no samples \(T = 0\)"):
        impl.block_max_pool(torch.randn(2, 3, 0), 8)
    with pytest.raises(ValueError, match=r"no samples \(T = 0\)"):
        impl.block_film(torch.randn(2, 3, 0), torch.randn(2, 3, 0), None, 8)


@BOTH
def test_concat_without_skip_and_other_device(impl):
    # Before, on the reference: skip=None -> torch.cat's "expected Tensor as element 1" TypeError;
    # a scale on another device -> "Tensor on device meta is not on the expected device cpu!".
    x = torch.randn(1, 2, 16)
    with pytest.raises(ValueError, match="needs a skip tensor"):
        impl.block_film_concat(x, torch.ones(1, 2, 2), None, 8, None)
    with pytest.raises(ValueError, match="scale is on meta but x is on cpu"):
        impl.block_film(x, torch.ones(1, 2, 2, device="meta"), None, 8)


@BOTH
def test_accepted_odd_inputs_match(impl):
    """Documented behaviour that works: a partial last block, block > T, numpy ints, strided inputs."""
    import numpy as np

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 41, generator=gen)
    assert impl.block_max_pool(x, 8).shape == (2, 3, 6)
    assert impl.block_max_pool(x, 100).shape == (2, 3, 1)
    torch.testing.assert_close(impl.block_max_pool(x, np.int64(8)), R.block_max_pool(x, 8))
    xt = torch.randn(2, 41, 3, generator=gen).transpose(1, 2)  # channels-last memory, (B, C, T) view
    s = torch.randn(2, 3, 6, generator=gen)
    torch.testing.assert_close(impl.block_film(xt, s, None, 8), R.block_film(xt.contiguous(), s, None, 8))
    for bad in (0, -1, True, 8.0, None):
        with pytest.raises(ValueError, match="block must be an int >= 1"):
            impl.block_max_pool(x, bad)


@BOTH
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_scale_fn_must_return_a_pair(impl, grad):
    # Before, on the Triton path: "_linked_film() missing 1 required positional argument: 'link'";
    # on the reference: "not enough values to unpack (expected 2, got 1)".
    x = torch.randn(1, 2, 16, requires_grad=grad)
    h = torch.randn(1, 2, 32, requires_grad=grad)
    for bad in (lambda p: p.sigmoid(), lambda p: (p, p, p)):
        with pytest.raises(ValueError, match=r"scale_fn must return a pair \(scale, shift\)"):
            impl.pool_film(x, 8, bad)
        with pytest.raises(ValueError, match=r"scale_fn must return a pair \(scale, shift\)"):
            impl.pool_act_film(h, 8, 0.2, bad)
    assert impl.pool_film(x, 8, lambda p: [p.sigmoid(), None]).shape == (1, 2, 16)
