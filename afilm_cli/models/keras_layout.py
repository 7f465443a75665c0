"""Keras -> PyTorch names and layouts for the original AFiLM / TFiLM weights.

The semantic keys of the Keras weight list (afilm_cli/keras_io.py) (``down0.film.transformer.enc_layers.0.att.
query_dense.kernel``) map onto this package's state_dict keys by a fixed renaming, because the modules
are named after them (see afilm_cli/models/unet.py):

- ``downL.`` / ``upL.`` -> ``down.L.`` / ``up.L.``; ``bottleneck.`` and ``final.`` unchanged;
- ``*.kernel`` -> ``*.weight``: Conv1D (k, in, out) -> (out, in, k); Dense (in, out) -> (out, in);
- LayerNormalization ``gamma`` / ``beta`` -> ``weight`` / ``bias``;
- LSTM ``rnn.cell.kernel`` (in, 4u) -> ``rnn.weight_ih_l0`` (4u, in), ``rnn.cell.recurrent_kernel`` ->
  ``rnn.weight_hh_l0``, ``rnn.cell.bias`` -> ``rnn.bias_ih_l0``; PyTorch's extra ``rnn.bias_hh_l0``
  has no Keras counterpart and must be zero. Gate order is i, f, c(g), o in both.
"""

from __future__ import annotations

import re

import torch

_SUFFIXES = (
    (".cell.recurrent_kernel", ".weight_hh_l0"),
    (".cell.kernel", ".weight_ih_l0"),
    (".cell.bias", ".bias_ih_l0"),
    (".kernel", ".weight"),
    (".gamma", ".weight"),
    (".beta", ".bias"),
)


def torch_key(keras_key: str) -> str:
    """The state_dict key of a semantic Keras key."""
    key = re.sub(r"^(down|up)(\d+)\.", r"\1.\2.", keras_key)
    for old, new in _SUFFIXES:
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def torch_value(keras_key: str, array) -> torch.Tensor:
    """A Keras array in PyTorch layout: conv kernels (k, in, out) -> (out, in, k), 2-D kernels transposed."""
    t = torch.as_tensor(array)
    if keras_key.endswith("kernel"):
        t = t.permute(2, 1, 0) if t.dim() == 3 else t.T
    return t.contiguous()
