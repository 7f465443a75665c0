"""Conv1d with a faster backward on CPU.

On CPU, oneDNN computes the input gradient of these long dilated kernels (65 and 33 taps, dilation 2)
with its backward-data kernel, which measured 2.1-3.4x slower than its forward kernel doing the same
arithmetic (afilm_small's two widest up-path convolutions, one thread). The input gradient of a
stride-1 convolution *is* a forward convolution: of the output gradient, with the kernel flipped in
time and its in/out channels swapped. So on CPU, when a gradient is needed, :class:`Conv1d` runs
that instead (``afilm bench --train`` times both; ``AFILM_CPU_CONV_GRAD=aten`` restores PyTorch's
own backward). The weight gradient and everything on CUDA stay PyTorch's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from afilm_cli.errors import AfilmError

BACKWARDS = ("conv", "aten")


_override: str | None = None


def cpu_conv_backward() -> str:
    """"conv" (default: the input gradient as a forward convolution) or "aten" (PyTorch's): set by
    :func:`conv_backward`, else by $AFILM_CPU_CONV_GRAD."""
    value = _override or os.environ.get("AFILM_CPU_CONV_GRAD", "conv").strip().lower() or "conv"
    if value not in BACKWARDS:
        raise AfilmError(f"AFILM_CPU_CONV_GRAD={value!r}: use one of {', '.join(BACKWARDS)}")
    return value


@contextlib.contextmanager
def conv_backward(mode: str | None) -> Iterator[None]:
    """Use ``mode`` (see :func:`cpu_conv_backward`; None: leave it as it is) inside the block."""
    global _override
    if mode is not None and mode not in BACKWARDS:
        raise AfilmError(f"conv backward {mode!r}: use one of {', '.join(BACKWARDS)}")
    old, _override = _override, mode or _override
    try:
        yield
    finally:
        _override = old


class _ConvInputGradAsConv(torch.autograd.Function):
    """y = conv1d(x, w, b; stride 1, padding p, dilation d), with dx = conv1d(dy, flip(w)^T) on the
    way back: y[t] = sum_j w[j] x[t + d j - p] gives dx[s] = sum_j w[k-1-j]^T dy[s + d j - (d(k-1) - p)]."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, dilation: int):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None
        return F.conv1d(x, weight, bias, padding=padding, dilation=dilation)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        p, d = ctx.padding, ctx.dilation
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            back = d * (weight.shape[-1] - 1) - p
            dx = F.conv1d(dy, weight.flip(-1).transpose(0, 1), padding=back, dilation=d)
        if ctx.needs_input_grad[1]:
            dw = torch.ops.aten.convolution_backward(dy, x, weight, None, [1], [p], [d], False, [0], 1,
                                                     [False, True, False])[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum((0, 2))
        return dx, dw, db, None, None


class Conv1d(nn.Conv1d):
    """``nn.Conv1d`` (same parameters and state-dict keys) whose CPU backward is
    :class:`_ConvInputGradAsConv` for stride-1, ungrouped, zero-padded, symmetric-padding layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the fast path's conditions; anything else ('same' padding, unbatched input, CPU autocast,
        # whose backward would mix dtypes) is nn.Conv1d's own
        if (x.device.type == "cpu" and torch.is_grad_enabled() and x.dim() == 3 and self.stride == (1,)
                and isinstance(self.padding, tuple) and self.groups == 1 and self.padding_mode == "zeros"
                and not torch.is_autocast_enabled("cpu") and cpu_conv_backward() == "conv"):
            (p,), (d,) = self.padding, self.dilation
            if d * (self.kernel_size[0] - 1) >= p:
                return _ConvInputGradAsConv.apply(x, self.weight, self.bias, p, d)
        return super().forward(x)
