"""Building blocks of AFiLM / TFiLM: SubPixel1d, the transformer encoder, the two modulation layers.

Shapes are channels-first (B, C, T) between layers; the normalisers (transformer, LSTM) work on token
sequences (B, n, C) where n = T / block. Module and attribute names follow the semantic keys of
the Keras weight list (afilm_cli/keras_io.py) (``enc_layers.i.att.query_dense`` ...) so that a
Keras import is a mechanical renaming; see afilm_cli/models/unet.py for the full mapping.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from afilm_cli.errors import AfilmError

if not hasattr(kernels, "KernelChoiceError"):  # another distribution's top-level "kernels" (Hugging Face's)
    raise AfilmError(f"the Python package 'kernels' at {getattr(kernels, '__file__', None) or kernels} is "
                     "not afilm's: another distribution (Hugging Face's 'kernels'?) installs the same name; "
                     "install afilm in an environment without it")


def subpixel1d(x: torch.Tensor, r: int = 2) -> torch.Tensor:
    """The reference's channels-last SubPixel1D, written channels-first.

    (B, C, W) -> (B, C/r, r*W) with ``out[:, c, w*r + j] = in[:, j*(C/r) + c, w]``: the r channel
    groups are interleaved in time. This is NOT ``pixel_shuffle``'s order (which would read channel
    ``c*r + j``); the order matters for loading Keras weights.
    """
    b, c, w = x.shape
    if c % r:
        raise ValueError(f"SubPixel1d: {c} channels are not divisible by r={r}")
    # view (B, r, C/r, W) -> (B, C/r, W, r) -> (B, C/r, W*r)
    return x.view(b, r, c // r, w).permute(0, 2, 3, 1).reshape(b, c // r, w * r)


def sinusoidal_positions(n: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """(n, dim) sinusoidal table: sin on even channels, cos on odd ones, base 10000 (the reference's
    ``positional_encoding``). Computed for the actual token count, so any valid length works; in
    float64 like the reference's numpy table, then cast (plain torch ops: torch.compile traces it).
    Built on ``device``: a CPU table copied to the GPU would break CUDA graph capture."""
    pos = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    i = torch.arange(dim, device=device)[None, :]
    angles = pos / torch.pow(10000.0, (2 * (i // 2)).to(torch.float64) / dim)
    table = torch.where(i % 2 == 0, torch.sin(angles), torch.cos(angles))
    return table.to(device=device, dtype=dtype or torch.float32)


class MultiHeadSelfAttention(nn.Module):
    """Q/K/V/O Linear(C, C) with bias, ``heads`` heads of C/heads, softmax(QK^T/sqrt(d))V, no mask,
    no dropout on the attention weights (the reference has none)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dimension {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query_dense = nn.Linear(dim, dim)
        self.key_dense = nn.Linear(dim, dim)
        self.value_dense = nn.Linear(dim, dim)
        self.combine_heads = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, n, C) -> (B, heads, n, C/heads)
            return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.query_dense(x)), split(self.key_dense(x)), split(self.value_dense(x))
        out = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(head_dim), as the reference
        return self.combine_heads(out.transpose(1, 2).reshape(b, n, c))


class EncoderLayer(nn.Module):
    """Post-norm encoder layer: ``h = LN(x + Drop(MHSA(x)))``, ``y = LN(h + Drop(FF(h)))``."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float, eps: float = 1e-6):
        super().__init__()
        self.att = MultiHeadSelfAttention(dim, heads)
        self.dense1 = nn.Linear(dim, ff_dim)
        self.dense2 = nn.Linear(ff_dim, dim)
        self.layernorm1 = nn.LayerNorm(dim, eps=eps)
        self.layernorm2 = nn.LayerNorm(dim, eps=eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layernorm1(x + self.dropout1(self.att(x)))
        return self.layernorm2(h + self.dropout2(self.dense2(F.relu(self.dense1(h)))))


class Transformer(nn.Module):
    """The reference TransformerBlock: x*sqrt(C) + sinusoidal positions -> dropout -> encoder layers.

    Dropout follows the module's train/eval mode. The reference calls it with ``training=True``
    hard-coded, so its predictions are random even at inference; afilm deliberately fixes that
    (``model.eval()`` gives deterministic output).
    """

    def __init__(self, dim: int, layers: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.dim = dim
        self.enc_layers = nn.ModuleList(EncoderLayer(dim, heads, ff_dim, dropout) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * math.sqrt(self.dim) + sinusoidal_positions(x.shape[1], self.dim, x.device, x.dtype)
        x = self.dropout(x)
        for layer in self.enc_layers:
            x = layer(x)
        return x


class Modulation(nn.Module):
    """Block FiLM: scale (and optionally shift) each block of ``block`` samples by a vector computed
    from the block-max-pooled sequence. Subclasses define ``normalise(tokens (B, n, C)) -> (B, n, C)``.

    ``forward`` takes the activation and its block max (the fused kernels produce both in one pass)
    and returns the modulated activation; ``skip`` fuses the up path's concat ``[y, skip]``.
    """

    kind = "base"

    def __init__(self, dim: int, block: int, use_shift: bool):
        super().__init__()
        self.dim = dim
        self.block = block
        # shift (beta) head: not in the reference (scale only); zero-initialised so it starts as scale-only
        self.shift = nn.Linear(dim, dim) if use_shift else None

    def normalise(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, x_down: torch.Tensor | None = None,
                skip: torch.Tensor | None = None) -> torch.Tensor:
        """Modulate x by blocks; ``x_down``: its block max when the caller has it (the down path's
        fused pooling), else pooled here; ``skip``: concatenated after the modulated channels."""
        if x_down is None:
            return kernels.pool_film(x, self.block, self.scale_shift, skip)
        scale, shift = self.scale_shift(x_down)
        if skip is None:
            return kernels.block_film(x, scale, shift, self.block)
        return kernels.block_film_concat(x, scale, shift, self.block, skip)

    def scale_shift(self, x_down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, n) block maxima -> per-block scale (and shift, with use_shift), in x_down's dtype."""
        g = self.normalise(x_down.transpose(1, 2))  # (B, n, C): the reference's scale, no activation
        # under autocast LayerNorm/LSTM may return another dtype than x: give the kernels one dtype
        scale = g.transpose(1, 2).to(x_down.dtype).contiguous()
        if self.shift is None:
            return scale, None
        return scale, self.shift(g).transpose(1, 2).to(x_down.dtype).contiguous()


class AFiLM(Modulation):
    """AFiLM: the normaliser is a transformer encoder over the block tokens."""

    kind = "afilm"

    def __init__(self, dim: int, block: int, use_shift: bool, layers: int, heads: int, ff_dim: int,
                 dropout: float):
        super().__init__(dim, block, use_shift)
        self.transformer = Transformer(dim, layers, heads, ff_dim, dropout)

    def normalise(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(tokens)


class TFiLM(Modulation):
    """TFiLM: the normaliser is a unidirectional LSTM(C -> C); its output (in -1..1) is the scale.

    ``nn.LSTM`` has two bias vectors (bias_ih, bias_hh) where Keras has one, so each TFiLM layer has
    4C more parameters than the reference (8C^2 + 8C instead of 8C^2 + 4C). A Keras bias loads into
    bias_ih with bias_hh = 0.
    """

    kind = "tfilm"

    def __init__(self, dim: int, block: int, use_shift: bool):
        super().__init__(dim, block, use_shift)
        self.rnn = nn.LSTM(dim, dim, batch_first=True)

    def normalise(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.rnn(tokens)[0]
