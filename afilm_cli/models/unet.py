"""The AFiLM / TFiLM U-Net backbone (the original Keras code, ncarraz/AFILM), channels-first.

Per stage (paper config, 8192-sample input):

    down.l      Conv(k, dilation 2) -> MaxPool(2) -> LeakyReLU(0.2) -> mod(block 128/2**l)
    bottleneck  Conv(k9, d2) -> MaxPool(2) -> Dropout(0.5) -> LeakyReLU(0.2) -> mod(block 8)
    up.l        Conv(-> 2*C_l, d2) -> Dropout(0.5) -> ReLU -> SubPixel(2) -> mod(block 8) -> cat[x, down.l]
                (ReLU: LeakyReLU(up_slope) when up_slope > 0, an afilm option: see afilm_cli/diagnostics.py)
    final       Conv(-> 2, k9, no dilation) -> SubPixel(2) -> + input

``up.l`` runs for l = L-1 ... 0 (``up.3`` first), mirroring ``down.l``; the skip is the *modulated*
down output. Every up block is 8, as in the reference (a stale variable there); it is a config field.

Valid input lengths (``length_multiple``): a stage at level l sees T / 2**(l+1) samples (down.l
after its pool, up.l after its SubPixel; the bottleneck T / 2**(L+1)) and cuts them into blocks, so
T must be a multiple of 2**(l+1) * block for every stage; ``length_multiple`` is the lcm of those
(and of 2**(L+1) for the pools). Paper config: 256. The issue's bound 2**(L+1) * max(block) = 4096 is
a multiple of it, not the minimum.

Module names follow the semantic keys of the Keras weight list (afilm_cli/keras_io.py) (``down.L.conv``,
``down.L.film.transformer.enc_layers.i.att.query_dense``, ``up.L.film.rnn``, ``final.conv`` ...), so
Keras weights load by a mechanical renaming: afilm_cli/models/keras_layout.py.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from afilm_cli.errors import AfilmError
from afilm_cli.models.conv import Conv1d
from afilm_cli.models.layers import AFiLM, Modulation, TFiLM, subpixel1d

_REF_CHANNELS = (128, 256, 512, 512, 512, 512, 512, 512)
_REF_KERNELS = (65, 33, 17, 9, 9, 9, 9, 9)
# afilm's alone: a tfilm config carries them unused (its preset's values), so --model-arg refuses them there
TRANSFORMER_FIELDS = ("transformer_layers", "heads", "ff_dim", "transformer_dropout")


@dataclass
class UNetConfig:
    """Everything that defines the architecture. Defaults are the paper's AFiLM; tuple fields left
    empty are derived from ``n_layers`` as in the reference. Every value is checked against its
    field's type and range on construction (:func:`_check_fields`), so ``create_model(name, **overrides)``
    and ``--model-arg`` fail with one line naming the field."""

    modulation: str = "afilm"  # "afilm" (transformer) | "tfilm" (LSTM)
    n_layers: int = 4
    channels: tuple[int, ...] = ()  # per down level; reference 128, 256, 512, 512
    kernel_sizes: tuple[int, ...] = ()  # per level, shared by down.l and up.l; reference 65, 33, 17, 9
    bottleneck_channels: int = 512
    bottleneck_kernel: int = 9
    final_kernel: int = 9
    down_blocks: tuple[int, ...] = ()  # reference 128 / 2**l
    bottleneck_block: int = 0  # 0: as the reference, 128 / 2**n_layers (8 for the paper's 4 layers)
    up_blocks: tuple[int, ...] = ()  # per level; reference: all 8 (the stale variable)
    dilation: int = 2
    slope: float = 0.2
    up_slope: float = 0.0             # up stages: 0 = ReLU (reference); > 0 = LeakyReLU (cannot close)
    dropout: float = 0.5
    use_shift: bool = False
    transformer_layers: int = 4
    heads: int = 8
    ff_dim: int = 2048
    transformer_dropout: float = 0.1
    final_init_std: float = 0.05

    def __post_init__(self) -> None:
        _check_fields(self)
        n = self.n_layers
        self.channels = tuple(self.channels) or _REF_CHANNELS[:n]
        self.kernel_sizes = tuple(self.kernel_sizes) or _REF_KERNELS[:n]
        self.down_blocks = tuple(self.down_blocks) or tuple(max(1, 128 // 2**level) for level in range(n))
        self.bottleneck_block = self.bottleneck_block or max(1, 128 // 2**n)
        self.up_blocks = tuple(self.up_blocks) or (self.bottleneck_block,) * n
        for name in ("channels", "kernel_sizes", "down_blocks", "up_blocks"):
            if len(getattr(self, name)) != n:
                raise AfilmError(f"model config: {name} has {len(getattr(self, name))} entries, "
                                 f"n_layers is {n}")
        if self.modulation not in ("afilm", "tfilm"):
            raise AfilmError(f"model config: modulation must be 'afilm' or 'tfilm', got {self.modulation!r}")
        if self.modulation == "afilm":
            dims = (*self.channels, self.bottleneck_channels)
            bad = [d for d in dims if d % self.heads]
            if bad:
                raise AfilmError(f"model config: channels {bad} are not divisible by heads={self.heads}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def length_multiple(self) -> int:
        n = self.n_layers
        parts = [2 ** (n + 1), 2 ** (n + 1) * self.bottleneck_block]
        parts += [2 ** (level + 1) * self.down_blocks[level] for level in range(n)]
        parts += [2 ** (level + 1) * self.up_blocks[level] for level in range(n)]
        return math.lcm(*parts)


_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
# Ranges the network needs (checked after the type). Tuple fields hold sizes: each entry >= 1.
_AT_LEAST = {"n_layers": 1, "bottleneck_channels": 1, "bottleneck_kernel": 1, "final_kernel": 1,
             "dilation": 1, "heads": 1, "ff_dim": 1, "transformer_layers": 0,
             "bottleneck_block": 0}  # 0: derived from n_layers
_PROBABILITIES = ("dropout", "transformer_dropout")  # in [0, 1): p = 1 would zero everything


def _check_fields(cfg: UNetConfig) -> None:
    """Convert each field to its declared type or raise one AfilmError line naming it.

    Values come from --model-arg (parsed as Python literals, or left as words), from checkpoint JSON
    (tuples as lists) or from Python. Accepted: int fields take integers only (not 4.0, not True);
    float fields take any finite real number; tuple[int, ...] fields take a list or tuple of
    integers; bool fields take True/False, 1/0, or the words true/false/yes/no (any case), since a
    word such as 'no' would otherwise be stored as a truthy string."""
    hints = typing.get_type_hints(UNetConfig)
    for f in dataclasses.fields(cfg):
        kind, value = hints[f.name], getattr(cfg, f.name)
        if kind is bool:
            out = _as_bool(value)
            expected = "true or false (also yes/no, 1/0)"
        elif kind is int:
            out = int(value) if _is_int(value) else None
            expected = "an integer"
        elif kind is float:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            out = float(value) if ok else None
            expected = "a finite number"
        elif kind is str:
            out = value if isinstance(value, str) else None
            expected = "a string"
        elif kind == tuple[int, ...]:
            ok = isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)
            out = tuple(int(v) for v in value) if ok else None
            expected = "a list of integers, e.g. [16, 32, 64, 64]"
        else:  # a field added with a type this check does not know yet
            raise TypeError(f"UNetConfig.{f.name}: no check for type {kind!r}")
        if out is None:
            raise AfilmError(f"model config: {f.name} must be {expected}, got {value!r}")
        setattr(cfg, f.name, out)
    for name, low in _AT_LEAST.items():
        if getattr(cfg, name) < low:
            raise AfilmError(f"model config: {name} must be an integer >= {low}, got {getattr(cfg, name)}")
    for name in ("channels", "kernel_sizes", "down_blocks", "up_blocks"):
        values = list(getattr(cfg, name))
        if any(v < 1 for v in values):
            raise AfilmError(f"model config: {name} entries must be integers >= 1, got {values}")
    for name in _PROBABILITIES:
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise AfilmError(f"model config: {name} must be a number in [0, 1), got {getattr(cfg, name)}")
    if cfg.final_init_std < 0:
        raise AfilmError(f"model config: final_init_std must be a number >= 0, got {cfg.final_init_std}")


def _is_int(value: Any) -> bool:
    # numbers.Integral admits numpy integers; bool is an int subclass but never a size
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if _is_int(value) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        return _BOOL_WORDS.get(value.strip().lower())
    return None


def _conv(c_in: int, c_out: int, k: int, dilation: int) -> nn.Conv1d:
    # 'same' padding for odd k: (k-1)*dilation/2 on each side, as Keras' padding='same'
    if k % 2 == 0:
        raise AfilmError(f"model config: kernel sizes must be odd for symmetric 'same' padding, got {k}")
    return Conv1d(c_in, c_out, k, dilation=dilation, padding=(k - 1) * dilation // 2)


class DownStage(nn.Module):
    """Conv -> MaxPool(2) -> [Dropout] -> LeakyReLU -> mod. Pool + activation + block max are one fused op,
    and (without dropout in training) one with the modulation: kernels.pool_act_film."""

    def __init__(self, conv: nn.Conv1d, film: Modulation, slope: float, dropout: float):
        super().__init__()
        self.conv = conv
        self.film = film
        self.slope = slope
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is None or not self.training:
            return kernels.pool_act_film(self.conv(x), self.film.block, self.slope, self.film.scale_shift)
        # The bottleneck's order is pool -> dropout -> LeakyReLU. LeakyReLU is positively homogeneous
        # (f(s*x) = s*f(x) for s >= 0) and a dropout mask is s in {0, 1/(1-p)}, so dropout after the
        # activation is the same function. The block max must then be taken of the dropped-out
        # activation, so it is recomputed (in eval mode dropout is the identity: the fused path above).
        a, _ = kernels.pool_act_block_max(self.conv(x), self.film.block, self.slope)
        a = self.dropout(a)
        return self.film(a, kernels.block_max_pool(a, self.film.block))


class UpStage(nn.Module):
    """Conv -> Dropout -> ReLU -> SubPixel(2) -> mod -> cat[x, skip] (modulation and concat fused)."""

    def __init__(self, conv: nn.Conv1d, film: Modulation, dropout: float, slope: float = 0.0):
        super().__init__()
        self.conv = conv
        self.film = film
        self.dropout = nn.Dropout(dropout)
        self.slope = slope

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.conv(x))
        h = F.leaky_relu(h, self.slope) if self.slope else F.relu(h)
        h = subpixel1d(h, 2)
        return self.film(h, skip=skip)


class FinalStage(nn.Module):
    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return subpixel1d(self.conv(x), 2)


class UNet(nn.Module):
    """AFiLM / TFiLM network: (B, 1, T) -> (B, 1, T), T a multiple of ``length_multiple``.

    Parameter counts (paper configs): AFiLM 134,723,842 (exactly the Keras model); TFiLM 68,234,498,
    i.e. the Keras 68,221,186 plus PyTorch's second LSTM bias (4C per TFiLM layer, 13,312 in all).
    """

    def __init__(self, config: UNetConfig, model_name: str = "afilm"):
        super().__init__()
        self.config = config
        self.model_name = model_name
        cfg = config
        n = cfg.n_layers

        def film(dim: int, block: int) -> Modulation:
            if cfg.modulation == "afilm":
                return AFiLM(dim, block, cfg.use_shift, cfg.transformer_layers, cfg.heads, cfg.ff_dim,
                             cfg.transformer_dropout)
            return TFiLM(dim, block, cfg.use_shift)

        self.down = nn.ModuleList()
        c_in = 1
        for level in range(n):
            c, k = cfg.channels[level], cfg.kernel_sizes[level]
            self.down.append(DownStage(_conv(c_in, c, k, cfg.dilation), film(c, cfg.down_blocks[level]),
                                       cfg.slope, 0.0))
            c_in = c
        cb = cfg.bottleneck_channels
        self.bottleneck = DownStage(_conv(c_in, cb, cfg.bottleneck_kernel, cfg.dilation),
                                    film(cb, cfg.bottleneck_block), cfg.slope, cfg.dropout)
        # up.l is built for every level but runs from the deepest: its input is the bottleneck
        # (level L-1) or the concat of up.(l+1) (2 * channels[l+1])
        self.up = nn.ModuleList()
        for level in range(n):
            c, k = cfg.channels[level], cfg.kernel_sizes[level]
            c_prev = cb if level == n - 1 else 2 * cfg.channels[level + 1]
            self.up.append(UpStage(_conv(c_prev, 2 * c, k, cfg.dilation), film(c, cfg.up_blocks[level]),
                                   cfg.dropout, cfg.up_slope))
        self.final = FinalStage(_conv(2 * cfg.channels[0], 2, cfg.final_kernel, 1))
        self.reset_parameters()

    # --- the contract shared with training / inference ---
    @property
    def length_multiple(self) -> int:
        return self.config.length_multiple

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def check_length(self, t: int) -> None:
        check_length(t, self.length_multiple, self.model_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != 1:
            raise AfilmError(f"model {self.model_name}: expected input (batch, 1, samples), "
                             f"got {tuple(x.shape)}")
        self.check_length(x.shape[-1])
        skips = []
        h = x
        for stage in self.down:
            h = stage(h)
            skips.append(h)
        h = self.bottleneck(h)
        for level in reversed(range(self.config.n_layers)):
            h = self.up[level](h, skips[level])
        return self.final(h) + x

    # --- init ---
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Keras init: conv kernels orthogonal (gain 1) over the (out, in*k) matrix, biases zero; final
        conv N(0, final_init_std); Dense Glorot-uniform, zero biases; LayerNorm 1/0; LSTM as Keras
        (input kernel Glorot-uniform, recurrent kernel orthogonal, forget-gate bias 1). Skipped on the
        meta device (used to count parameters without allocating)."""
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Conv1d) and not mod.weight.is_meta:
                if name == "final.conv":
                    nn.init.normal_(mod.weight, 0.0, self.config.final_init_std)
                else:
                    _orthogonal_(mod.weight)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Linear) and not mod.weight.is_meta:
                if name.endswith("film.shift"):
                    nn.init.zeros_(mod.weight)  # scale-only at start
                else:
                    nn.init.xavier_uniform_(mod.weight)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.LSTM) and not mod.weight_ih_l0.is_meta:
                h = mod.hidden_size
                nn.init.xavier_uniform_(mod.weight_ih_l0)
                _orthogonal_(mod.weight_hh_l0)
                nn.init.zeros_(mod.bias_ih_l0)
                nn.init.zeros_(mod.bias_hh_l0)
                mod.bias_ih_l0[h:2 * h] = 1.0  # Keras unit_forget_bias

    # --- introspection ---
    def relu_gates(self) -> dict[str, nn.Module]:
        """The modules whose output goes through a ReLU (each up stage's conv), for diagnostics; none
        with up_slope > 0 (a LeakyReLU always passes a gradient)."""
        if self.config.up_slope:
            return {}
        return {f"up.{level}": stage.conv for level, stage in enumerate(self.up)}

    def modulation_plan(self, t: int = 8192) -> list[dict[str, Any]]:
        """For an input of ``t`` samples: each modulation layer's name, samples, channels, block, tokens."""
        cfg, n = self.config, self.config.n_layers
        rows = [(f"down.{lv}", t // 2 ** (lv + 1), cfg.channels[lv], cfg.down_blocks[lv]) for lv in range(n)]
        rows.append(("bottleneck", t // 2 ** (n + 1), cfg.bottleneck_channels, cfg.bottleneck_block))
        rows += [(f"up.{lv}", t // 2 ** (lv + 1), cfg.channels[lv], cfg.up_blocks[lv])
                 for lv in reversed(range(n))]
        return [{"stage": s, "samples": ts, "channels": c, "block": b, "tokens": ts // b}
                for s, ts, c, b in rows]


def _orthogonal_(w: torch.Tensor) -> None:
    """Orthogonal init of the flattened (rows, prod(rest)) matrix via QR of a Gaussian (as
    nn.init.orthogonal_, whose flattening this is), but a reduced QR in float32 keeps the 134 M model's
    build fast."""
    rows = w.shape[0]
    cols = w.numel() // rows
    a = torch.randn(max(rows, cols), min(rows, cols))
    q, r = torch.linalg.qr(a)  # reduced: q (max, min)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique (Haar) decomposition
    if rows < cols:
        q = q.T
    w.copy_(q.reshape(w.shape))


def check_length(t: int, multiple: int, model_name: str) -> None:
    """AfilmError naming the two nearest valid lengths when t is not a positive multiple."""
    if t > 0 and t % multiple == 0:
        return
    lower, upper = (t // multiple) * multiple, (t // multiple + 1) * multiple
    near = f"{lower} or {upper}" if lower > 0 else f"{multiple} (the shortest valid length)"  # t <= 0 too
    raise AfilmError(f"model {model_name}: input length {t} is not a multiple of {multiple}; "
                     f"nearest valid lengths: {near}")


def make_builder(name: str, base: UNetConfig):
    """A registry builder: ``builder(**overrides)`` -> UNet with ``base`` updated by ``overrides``."""

    def builder(**overrides: Any) -> UNet:
        known = {f.name for f in dataclasses.fields(UNetConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise AfilmError(f"model {name}: unknown config option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return UNet(dataclasses.replace(base, **overrides), model_name=name)

    builder.__name__ = name
    builder.__doc__ = f"Build {name!r} (UNetConfig overrides accepted)."
    return builder

