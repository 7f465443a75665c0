"""afilm_cli/models/conv.py: Conv1d's CPU backward (the input gradient as a forward convolution)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from afilm_cli.errors import AfilmError
from afilm_cli.models import create_model
from afilm_cli.models.conv import Conv1d, conv_backward, cpu_conv_backward


def used_custom_backward(y: torch.Tensor) -> bool:
    return y.grad_fn is not None and "ConvInputGradAsConv" in type(y.grad_fn).__name__


def custom_backward_nodes(y: torch.Tensor) -> int:
    """How many nodes of y's autograd graph are the custom convolution backward."""
    seen, stack, n = set(), [y.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        n += "ConvInputGradAsConv" in type(node).__name__
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return n


@pytest.mark.parametrize(("c_in", "c_out", "k", "d", "pad", "bias", "t"), [
    (3, 5, 9, 2, 8, True, 40),     # the models' case: odd kernel, dilation 2, 'same' padding
    (4, 2, 65, 2, 64, False, 150),  # the widest kernel of the presets, no bias
    (2, 3, 9, 1, 4, True, 17),     # the final layer: dilation 1, odd length
    (2, 3, 5, 3, 2, True, 23),     # asymmetric: less padding than 'same'
])
def test_gradients_match_pytorch_and_gradcheck(c_in, c_out, k, d, pad, bias, t):
    torch.manual_seed(0)
    conv = Conv1d(c_in, c_out, k, dilation=d, padding=pad, bias=bias).double()
    x = torch.randn(2, c_in, t, dtype=torch.float64, requires_grad=True)
    with conv_backward("conv"):
        y = conv(x)
        assert used_custom_backward(y)
        assert torch.autograd.gradcheck(conv, (x,), eps=1e-6, atol=1e-8)
    ref = F.conv1d(x, conv.weight, conv.bias, padding=pad, dilation=d)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    dy = torch.randn_like(y)
    mine = torch.autograd.grad(y, [x, conv.weight] + ([conv.bias] if bias else []), dy)
    theirs = torch.autograd.grad(ref, [x, conv.weight] + ([conv.bias] if bias else []), dy)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_falls_back_where_it_does_not_apply():
    x = torch.randn(1, 2, 32, requires_grad=True)
    plain = Conv1d(2, 2, 3, padding=1)
    with conv_backward("conv"):
        assert used_custom_backward(plain(x))
        with torch.no_grad():
            assert plain(x).grad_fn is None  # inference: the plain op, nothing saved
        assert not used_custom_backward(Conv1d(2, 2, 3, stride=2, padding=1)(x))
        assert not used_custom_backward(Conv1d(2, 2, 3, padding=1, groups=2)(x))
        assert not used_custom_backward(Conv1d(2, 2, 3, padding=1, padding_mode="reflect")(x))
        # nn.Conv1d's other inputs keep working: 'same' padding, unbatched input, CPU autocast
        same = Conv1d(2, 2, 5, padding="same")
        assert not used_custom_backward(same(x)) and same(x).shape == x.shape
        y = plain(x[0])
        y.sum().backward()
        assert not used_custom_backward(y) and y.shape == (2, 32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = plain(x)
        z.float().sum().backward()
        assert not used_custom_backward(z) and z.dtype == torch.bfloat16
    with conv_backward("aten"):
        assert not used_custom_backward(plain(x))


@pytest.mark.parametrize("name", ["afilm_tiny", "tfilm_tiny"])
def test_model_gradients_are_the_same_either_way(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    x = torch.randn(2, 1, model.length_multiple * 2) * 0.1
    grads, custom = {}, {}
    for mode in ("aten", "conv"):
        torch.manual_seed(1)  # the same dropout masks
        model.zero_grad()
        with conv_backward(mode):
            loss = (model(x) ** 2).mean()
            custom[mode] = custom_backward_nodes(loss)
            loss.backward()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    # "either way" holds only if the model's convolutions do take the custom backward in "conv" mode
    n_convs = sum(isinstance(m, Conv1d) for m in model.modules())
    assert custom == {"aten": 0, "conv": n_convs} and n_convs >= 10, (custom, n_convs)
    assert grads["aten"].keys() == grads["conv"].keys() and len(grads["conv"]) > 10
    for n in grads["conv"]:
        torch.testing.assert_close(grads["conv"][n], grads["aten"][n], rtol=1e-4, atol=1e-7, msg=n)


def test_state_dict_keys_are_nn_conv1d_keys():
    assert isinstance(Conv1d(1, 1, 3), torch.nn.Conv1d)
    assert set(Conv1d(2, 3, 5).state_dict()) == set(torch.nn.Conv1d(2, 3, 5).state_dict())


def test_setting_and_bad_values(monkeypatch):
    monkeypatch.delenv("AFILM_CPU_CONV_GRAD", raising=False)
    assert cpu_conv_backward() == "conv"
    monkeypatch.setenv("AFILM_CPU_CONV_GRAD", "aten")
    assert cpu_conv_backward() == "aten"
    with conv_backward("conv"):
        assert cpu_conv_backward() == "conv"  # the explicit setting wins over the environment
    assert cpu_conv_backward() == "aten"
    with pytest.raises(AfilmError, match="use one of conv, aten"):
        with conv_backward("fast"):
            pass
    monkeypatch.setenv("AFILM_CPU_CONV_GRAD", "fast")
    with pytest.raises(AfilmError, match="AFILM_CPU_CONV_GRAD='fast'"):
        cpu_conv_backward()

