"""Read and write the original Keras AFiLM / TFiLM weights (.h5) with h5py only, no TensorFlow.

The original models (ncarraz/AFILM ``codes/models``, tf.keras 2.x) are one fixed architecture each:
n_layers 4, 8192-sample input. ``keras_weight_list(config)`` generates their ordered weight list
(semantic key, Keras layer, Keras variable, shape) from a UNetConfig; for the paper configs it equals
the list read off the original code built with TensorFlow 2.16.2 + tf-keras 2.16.0 (a test checks all
596 AFiLM and 47 TFiLM rows). The semantic keys map to this package's state_dict keys and layouts
through afilm_cli/models/keras_layout.py.

Two Keras HDF5 layouts are read, both written by tf.keras' legacy h5 code:

- full model (``model.save("m.h5")``): weights under the ``model_weights`` group;
- weights only (``model.save_weights("w.h5")``): weights at the root.

Either way the group has an attribute ``layer_names`` and each layer group an attribute
``weight_names``; array j of layer L is at ``<group>/L/<weight_names[j]>``. The arrays are matched
to the expected list **by their order in the file** (as Keras' own ``load_weights`` does), not by
name: Keras numbers its layers per session (``conv1d_12`` if other models were built first), so
names are only checked for their kind (kernel / bias / gamma / beta / recurrent_kernel). Each shape is
checked and a mismatch names the array and the expected shape.

The upscaling ratio r is not stored in Keras files. ``resolve_r`` takes it from, in order, an
``afilm_r`` attribute (written by ``write_keras_h5``), a hint in the file name (``r4``, ``x4``,
``scale4``), else the user's ``--r``; a contradiction is an error, and the checkpoint records where
r came from (``keras_source.r_from``): with ``user``, r is the user's claim, not verified.

Measured fidelity (benchmarks/keras_parity.py; benchmarks/results/keras-parity-2026-11-26.json): the
original Keras models (ncarraz/AFILM code, TensorFlow 2.16.2 + tf-keras 2.16.0, CPU, float32) with
random weights, saved in both layouts and converted here, match afilm's output on the same two
8192-sample inputs to a max abs difference of 1.8e-6 (AFiLM) and 3.0e-7 (TFiLM), on outputs of
magnitude ~0.5 (dropout off in both: the reference's hard-coded ``training=True`` patched out). The
export (``write_keras_h5``) reproduces every array bit for bit, and the original code's
``load_weights`` on it gives exactly the original output (difference 0.0).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afilm_cli.atomic import atomic_path
from afilm_cli.errors import AfilmError
from afilm_cli.models.keras_layout import torch_key, torch_value

KERAS_INPUT_LENGTH = 8192  # the original models' fixed input (keras.Input(shape=[8192, 1]))
KERAS_MODELS = ("afilm", "tfilm")
# fields that define the architecture; the Keras code builds exactly the paper values
_STRUCTURE = ("modulation", "n_layers", "channels", "kernel_sizes", "bottleneck_channels",
              "bottleneck_kernel", "final_kernel", "down_blocks", "bottleneck_block", "up_blocks", "dilation",
              "slope", "up_slope", "use_shift", "transformer_layers", "heads", "ff_dim")


@dataclass(frozen=True)
class KerasWeight:
    key: str  # semantic key, e.g. down0.film.transformer.enc_layers.0.att.query_dense.kernel
    layer: str  # Keras layer name, e.g. a_fi_lm
    name: str  # Keras variable name, e.g. a_fi_lm/transformer_block/.../dense/kernel:0
    shape: tuple[int, ...]

    def row(self, index: int) -> str:
        """The line of the original Keras weight list for this weight."""
        return f"w{index:04d} | {self.key} | {self.layer} | {self.name} | {self.shape}"


def _numbered(base: str, i: int) -> str:
    # Keras' automatic names: the first instance is bare, the next ones get _1, _2, ...
    return base if i == 0 else f"{base}_{i}"


def _film_weights(cfg, stage: str, layer: str, dim: int) -> Iterator[KerasWeight]:
    if cfg.modulation == "tfilm":
        lstm = (("kernel", (dim, 4 * dim)), ("recurrent_kernel", (dim, 4 * dim)), ("bias", (4 * dim,)))
        for var, shape in lstm:
            yield KerasWeight(f"{stage}.film.rnn.cell.{var}", layer, f"{layer}/lstm_cell/{var}:0", shape)
        return
    ff = cfg.ff_dim
    # inside each modulation layer Keras numbers its sublayers afresh: 6 Dense and 2 LayerNorm per encoder
    for i in range(cfg.transformer_layers):
        enc = f"{layer}/transformer_block/{_numbered('encoder_layer', i)}"
        att = f"{enc}/{_numbered('multi_head_self_attention', i)}"
        projections = ("query_dense", "key_dense", "value_dense", "combine_heads")
        dense = [(f"att.{n}", att, dim, dim) for n in projections]
        dense += [("dense1", enc, dim, ff), ("dense2", enc, ff, dim)]
        prefix = f"{stage}.film.transformer.enc_layers.{i}"
        for j, (name, scope, d_in, d_out) in enumerate(dense):
            var = f"{scope}/{_numbered('dense', 6 * i + j)}"
            yield KerasWeight(f"{prefix}.{name}.kernel", layer, f"{var}/kernel:0", (d_in, d_out))
            yield KerasWeight(f"{prefix}.{name}.bias", layer, f"{var}/bias:0", (d_out,))
        for j in range(2):
            var = f"{enc}/{_numbered('layer_normalization', 2 * i + j)}"
            for p in ("gamma", "beta"):
                yield KerasWeight(f"{prefix}.layernorm{j + 1}.{p}", layer, f"{var}/{p}:0", (dim,))


def keras_weight_list(cfg) -> list[KerasWeight]:
    """The ordered weights of the Keras model with UNetConfig ``cfg`` (model.get_weights() order)."""
    n, ch, ks = cfg.n_layers, cfg.channels, cfg.kernel_sizes
    cb = cfg.bottleneck_channels
    stages = [(f"down{lv}", ks[lv], 1 if lv == 0 else ch[lv - 1], ch[lv], ch[lv]) for lv in range(n)]
    stages.append(("bottleneck", cfg.bottleneck_kernel, ch[n - 1], cb, cb))
    stages += [(f"up{lv}", ks[lv], cb if lv == n - 1 else 2 * ch[lv + 1], 2 * ch[lv], ch[lv])
               for lv in reversed(range(n))]
    film_base = "a_fi_lm" if cfg.modulation == "afilm" else "t_fi_lm"
    out: list[KerasWeight] = []
    for i, (stage, k, c_in, c_out, dim) in enumerate(stages):
        conv = _numbered("conv1d", i)
        out.append(KerasWeight(f"{stage}.conv.kernel", conv, f"{conv}/kernel:0", (k, c_in, c_out)))
        out.append(KerasWeight(f"{stage}.conv.bias", conv, f"{conv}/bias:0", (c_out,)))
        out.extend(_film_weights(cfg, stage, _numbered(film_base, i), dim))
    conv = _numbered("conv1d", len(stages))
    out.append(KerasWeight("final.conv.kernel", conv, f"{conv}/kernel:0", (cfg.final_kernel, 2 * ch[0], 2)))
    out.append(KerasWeight("final.conv.bias", conv, f"{conv}/bias:0", (2,)))
    return out


def paper_config(model: str):
    """The UNetConfig of the original Keras ``model`` ('afilm' or 'tfilm')."""
    from afilm_cli.models.afilm import AFILM
    from afilm_cli.models.tfilm import TFILM

    if model not in KERAS_MODELS:
        raise AfilmError(f"unknown Keras model {model!r}; the original code has {', '.join(KERAS_MODELS)}")
    return AFILM if model == "afilm" else TFILM


# ---------------------------------------------------------------- reading


@dataclass
class KerasFile:
    path: Path
    layout: str  # "full model" | "weights only"
    entries: list[tuple[str, str, tuple[int, ...], np.dtype]]  # (layer, variable, shape, dtype), file order
    attrs: dict[str, Any]  # afilm_* attributes (files written by write_keras_h5)
    model_config: dict | None  # the full-model file's architecture JSON, when present
    group: str = ""  # where the layers are: "" (weights only) or "model_weights"
    values: list[np.ndarray] | None = None  # read by load(): checks run on shapes first, cheaply

    def load(self) -> KerasFile:
        import h5py

        if self.values is None:
            with h5py.File(self.path, "r") as f:
                g = f[self.group] if self.group else f
                self.values = [np.asarray(g[layer][name][()]) for layer, name, _, _ in self.entries]
        return self

    @property
    def arrays(self) -> list[tuple[str, str, np.ndarray]]:
        """(layer, variable, array) in file order, read on first use."""
        self.load()
        return [(layer, name, v) for (layer, name, _, _), v in zip(self.entries, self.values, strict=True)]


def _text(v: Any) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def looks_like_keras(f: Any) -> bool:
    """Whether an open HDF5 file is a Keras model or weights file: Keras 2 (either layout) or Keras 3
    ('.weights.h5', which 'afilm convert keras' names as unsupported)."""
    return "layer_names" in f.attrs or "model_weights" in f or "layers" in f


def read_keras_h5(path: str | os.PathLike, values: bool = True) -> KerasFile:
    """The weight arrays of a Keras .h5 (either layout), in the file's order; with ``values=False``
    only their names, shapes and dtypes (``KerasFile.load()`` reads the arrays later)."""
    import h5py

    path = Path(path)
    if path.is_dir():
        raise AfilmError(f"{path} is a folder, not a file; give the Keras .h5 file")
    if not path.is_file():
        raise AfilmError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        cut = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", str(exc))
        if cut:  # an HDF5 file cut short (an interrupted download or copy), not another kind of file
            have, want = int(cut.group(1)), int(cut.group(2))
            raise AfilmError(f"{path}: a truncated HDF5 file ({have:,} of its {want:,} bytes; an interrupted "
                             "download or copy?)") from None
        hint = " (an afilm checkpoint? see 'afilm convert to-keras')" if path.suffix == ".pt" else ""
        raise AfilmError(f"{path}: not an HDF5 file{hint}") from None
    with f:
        if "layer_names" in f.attrs:
            group, layout = f, "weights only"
        elif "model_weights" in f and "layer_names" in f["model_weights"].attrs:
            group, layout = f["model_weights"], "full model"
        elif "data" in f and "label" in f:  # not Keras at all: Keras 3 advice would mislead
            raise AfilmError(f"{path}: a split of patches written by 'afilm prepare' (datasets 'data' and "
                             "'label'), not a Keras model or weights file")
        elif not looks_like_keras(f):
            names = sorted(f.keys())
            held = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
            raise AfilmError(f"{path}: not a Keras model or weights file (an HDF5 file holding "
                             f"{held or 'nothing'}, without Keras' 'layer_names' attribute)")
        else:
            raise AfilmError(f"{path}: not a Keras 2 HDF5 model or weights file (no 'layer_names' attribute; "
                             "Keras 3 '.weights.h5' and SavedModel folders are not supported: re-save with "
                             "tf.keras 2 as model.save_weights('w.h5'))")
        entries = []
        for layer in (_text(n) for n in group.attrs["layer_names"]):
            if layer not in group:
                raise AfilmError(f"{path}: layer {layer!r} is listed in 'layer_names' but missing")
            for name in (_text(n) for n in group[layer].attrs.get("weight_names", [])):
                if name not in group[layer]:
                    raise AfilmError(f"{path}: array {layer}/{name} is listed in 'weight_names' but missing")
                ds = group[layer][name]
                entries.append((layer, name, tuple(ds.shape), ds.dtype))
        attrs = {k: f.attrs[k] for k in f.attrs if str(k).startswith("afilm_")}
        model_config = None
        if "model_config" in f.attrs:
            try:
                model_config = json.loads(_text(f.attrs["model_config"]))
            except ValueError:
                model_config = None
    kf = KerasFile(path, layout, entries, attrs, model_config, "" if group is f else "model_weights")
    return kf.load() if values else kf


def _kind(name: str) -> str:
    """kernel / recurrent_kernel / bias / gamma / beta from a Keras variable name (``.../kernel:0``)."""
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def detect_model(kf: KerasFile) -> str | None:
    """'afilm' or 'tfilm' when the file clearly holds one of them, else None."""
    names = " ".join(e[1] for e in kf.entries)
    counts = {m: len(keras_weight_list(paper_config(m))) for m in KERAS_MODELS}
    if "lstm_cell" in names or len(kf.entries) == counts["tfilm"]:
        return "tfilm"
    if "transformer_block" in names or len(kf.entries) == counts["afilm"]:
        return "afilm"
    return None


def match_weights(kf: KerasFile, model: str) -> list[KerasWeight]:
    """Check the file's arrays against the expected list of ``model``, in order (names, shapes and
    dtypes only, nothing read yet); one clear error otherwise. Returns the expected list."""
    expected = keras_weight_list(paper_config(model))
    found = detect_model(kf)
    if found is not None and found != model:
        raise AfilmError(f"{kf.path}: holds a Keras {found.upper()} model ({len(kf.entries)} arrays), "
                         f"not {model.upper()}; use --model {found}")
    if len(kf.entries) != len(expected):
        raise AfilmError(f"{kf.path}: {len(kf.entries)} weight arrays, but the original {model.upper()} "
                         f"(n_layers 4, 8192-sample input) has {len(expected)}")
    for i, (want, (layer, name, shape, dtype)) in enumerate(zip(expected, kf.entries, strict=True)):
        if shape != want.shape or _kind(name) != _kind(want.name):
            raise AfilmError(f"{kf.path}: array #{i} {layer}/{name} has shape {shape}, expected "
                             f"{_kind(want.name)} {want.shape} for {want.key} ({want.name})")
        if not np.issubdtype(dtype, np.floating):
            raise AfilmError(f"{kf.path}: array #{i} {layer}/{name} has dtype {dtype}, expected floats")
    return expected


_R_NAME = re.compile(r"(?:^|[^a-z0-9])(?:r|x|scale)[_=-]?([1-9]\d?)(?![0-9])", re.IGNORECASE)


def resolve_r(kf: KerasFile, r: int | None) -> tuple[int, str]:
    """The upscaling ratio and where it came from: 'file attribute', 'file name' or 'user'."""
    if "afilm_r" in kf.attrs:
        stored = int(kf.attrs["afilm_r"])
        if r is not None and r != stored:
            raise AfilmError(f"{kf.path}: the file records r={stored}, but --r {r} was given")
        return stored, "file attribute"
    hints = {int(m) for m in _R_NAME.findall(kf.path.stem)} & set(range(2, 17))  # plausible ratios only
    if len(hints) == 1:
        (hint,) = hints
        if r is not None and r != hint:
            raise AfilmError(f"{kf.path}: the file name says r={hint}, but --r {r} was given (Keras files "
                             f"do not store r: drop --r, or if the name is wrong, rename the file)")
        return hint, "file name"
    if r is None:
        raise AfilmError(f"{kf.path}: Keras files do not store the upscaling ratio; pass --r "
                         "(the r the model was trained for, e.g. --r 4)")
    return r, "user"


def resolve_recipe(kf: KerasFile, r: int | None, sr: int | None = None, degrade: str | None = None
                   ) -> tuple[dict[str, Any], str]:
    """The checkpoint recipe (r, sr, degrade, patch) of a Keras file and where r came from: r as
    :func:`resolve_r`; sr and degrade as given, else as the file records (a file afilm exported), else
    16000 and subsample (the published VCTK-Multi models); patch as the file records, else 8192. The
    recipe must be one 'afilm prepare' accepts (r dividing sr, so the low rate is a whole number of Hz):
    checked before any array is read."""
    from afilm_cli.data.recipe import Recipe

    r_value, r_from = resolve_r(kf, r)
    recorded = {k: kf.attrs[f"afilm_{k}"] for k in ("sr", "degrade", "patch") if f"afilm_{k}" in kf.attrs}
    recorded = {k: _text(v) if k == "degrade" else int(v) for k, v in recorded.items()}
    for key, given in (("sr", sr), ("degrade", degrade)):
        if given is not None and key in recorded and given != recorded[key]:
            raise AfilmError(f"{kf.path}: the file records {key}={recorded[key]}, but --{key} {given} "
                             "was given")
    # the training patch of a file afilm exported (upsample's default window), else the Keras input's
    recipe = Recipe(r=r_value, sr=sr or recorded.get("sr", 16000),
                    patch=recorded.get("patch", KERAS_INPUT_LENGTH),
                    degrade=degrade or recorded.get("degrade", "subsample"))
    try:
        recipe.validate()  # prepare's own rules, so a converted checkpoint is one afilm could have trained
    except AfilmError as exc:
        origin = "" if r_from == "user" else f" (from the {r_from})"
        # prepare's advice to change --patch does not apply: convert has no --patch, the Keras input is fixed
        fixed = f"; the Keras input is fixed at {KERAS_INPUT_LENGTH} samples"
        why = str(exc).replace(" or change --patch", fixed)
        raise AfilmError(f"{kf.path}: cannot import with r={r_value}{origin}, sr={recipe.sr}, as "
                         f"'afilm prepare' would refuse that recipe: {why}") from None
    return {"r": recipe.r, "sr": recipe.sr, "degrade": recipe.degrade, "patch": recipe.patch}, r_from


def keras_state_dict(pairs: list[tuple[KerasWeight, np.ndarray]], model: torch.nn.Module) -> dict:
    """The state_dict of ``model`` holding the Keras arrays (transposed to PyTorch layouts)."""
    target = model.state_dict()
    sd = {}
    for want, arr in pairs:
        key = torch_key(want.key)
        if key not in target:
            raise RuntimeError(f"keras layout: {want.key} maps to {key}, which {model.model_name} lacks")
        sd[key] = torch_value(want.key, arr.astype(np.float32, copy=False))
        if tuple(sd[key].shape) != tuple(target[key].shape):
            raise RuntimeError(f"keras layout: {want.key} -> {key} gives {tuple(sd[key].shape)}, "
                               f"the model has {tuple(target[key].shape)}")
    for key in set(target) - set(sd):
        if not key.endswith("bias_hh_l0"):  # PyTorch's second LSTM bias: Keras has one, this one is zero
            raise RuntimeError(f"keras layout: {model.model_name} parameter {key} has no Keras weight")
        sd[key] = torch.zeros(target[key].shape)
    return sd


def check_keras_import(path: str | os.PathLike, model: str | None = None, r: int | None = None,
                       sr: int | None = None, degrade: str | None = None):
    """Everything an import checks before it reads an array (the file, the model, every shape, the
    recipe): (KerasFile without values, model, expected weights, recipe, r_from)."""
    kf = read_keras_h5(path, values=False)
    if model is None:
        model = detect_model(kf)
        if model is None:  # detected by count too: no --model can fit (it said "pass --model")
            n_af, n_tf = (len(keras_weight_list(paper_config(m))) for m in KERAS_MODELS)
            raise AfilmError(f"{kf.path}: {len(kf.entries)} weight arrays: another model than the original "
                             f"AFILM ({n_af} arrays) and TFILM ({n_tf}), n_layers 4, 8192-sample input")
    expected = match_weights(kf, model)
    recipe, r_from = resolve_recipe(kf, r, sr, degrade)
    return kf, model, expected, recipe, r_from


def load_keras_model(path: str | os.PathLike, model: str | None = None, r: int | None = None,
                     sr: int | None = None, degrade: str | None = None):
    """Read a Keras .h5 and return (afilm model, info) with info = {format, file, model, r, r_from,
    recipe}; ``recipe`` is :func:`resolve_recipe`'s, checked before the arrays are read."""
    from afilm_cli.models import create_model

    kf, model, expected, recipe, r_from = check_keras_import(path, model, r, sr, degrade)
    pairs = list(zip(expected, kf.load().values, strict=True))
    with torch.device("meta"):  # no init: the weights come from the file
        net = create_model(model)
    net.load_state_dict(keras_state_dict(pairs, net), strict=True, assign=True)
    info = {"format": f"keras h5 ({kf.layout})", "file": kf.path.name, "model": model, "r": recipe["r"],
            "r_from": r_from, "recipe": recipe}
    return net.eval(), info


# ---------------------------------------------------------------- writing


def keras_value(key: str, t: torch.Tensor) -> np.ndarray:
    """Inverse of keras_layout.torch_value: a PyTorch tensor in the Keras layout."""
    t = t.detach().cpu().float()
    if key.endswith("kernel"):
        t = t.permute(2, 1, 0) if t.dim() == 3 else t.T
    return np.ascontiguousarray(t.numpy())


def model_from_checkpoint_fast(ckpt: dict[str, Any]) -> torch.nn.Module:
    """checkpoint.model_from_checkpoint without the random init (built on the meta device, then the
    checkpoint's tensors assigned): the 134 M-parameter AFiLM is ready at once."""
    from afilm_cli.checkpoint import load_weights
    from afilm_cli.models import create_model

    with torch.device("meta"):
        model = create_model(ckpt["model_name"], **ckpt["model_config"])
    # assign=True keeps the tensors' dtype: a bundled (fp16) checkpoint becomes fp32 as on a normal load
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    load_weights(model, state, ckpt["model_name"], assign=True)
    return model.eval()


def keras_config(model: torch.nn.Module) -> Any:
    """The model's config where the original Keras code builds the same network (the AFiLM / TFiLM
    paper configs); one clear line otherwise."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "modulation", None) not in KERAS_MODELS:
        raise AfilmError(f"model {model.model_name}: only AFiLM / TFiLM U-Nets have a Keras counterpart")
    kind = cfg.modulation
    paper = paper_config(kind)
    diff = [f for f in _STRUCTURE if getattr(cfg, f) != getattr(paper, f)]
    if diff:
        raise AfilmError(f"model {model.model_name}: the original Keras code builds only the paper "
                         f"{kind.upper()}; this model differs in {', '.join(diff)}")
    return cfg


def keras_arrays(model: torch.nn.Module) -> list[tuple[KerasWeight, np.ndarray]]:
    """The model's weights as the original Keras model's ordered arrays (AFiLM / TFiLM paper configs)."""
    cfg = keras_config(model)
    sd = model.state_dict()
    out = []
    for want in keras_weight_list(cfg):
        key = torch_key(want.key)
        t = sd[key]
        if key.endswith("bias_ih_l0"):  # both LSTM biases add to the gates: Keras' one bias is their sum
            t = t + sd[key.replace("bias_ih_l0", "bias_hh_l0")]
        arr = keras_value(want.key, t)
        assert arr.shape == want.shape, (want.key, arr.shape, want.shape)
        out.append((want, arr))
    return out


def write_keras_h5(path: str | os.PathLike, model: torch.nn.Module, r: int | None = None,
                   sr: int | None = None, degrade: str | None = None, patch: int | None = None) -> Path:
    """Write ``model`` as a Keras weights-only .h5 (save_weights layout): the original code loads it
    with ``get_afilm().load_weights(path)`` (or get_tfilm). Records ``afilm_r``, ``afilm_sr``,
    ``afilm_degrade`` and ``afilm_patch`` (the training patch, where upsample's windows default to it;
    the Keras model's input stays 8192) when given, which an import reads back."""
    import h5py

    arrays = keras_arrays(model)
    layers: dict[str, list[tuple[KerasWeight, np.ndarray]]] = {}
    for want, arr in arrays:
        layers.setdefault(want.layer, []).append((want, arr))
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["layer_names"] = [name.encode("utf8") for name in layers]
        # without keras_version Keras assumes a Keras 1 file and converts (transposes) conv kernels
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.16.0"
        if r is not None:
            f.attrs["afilm_r"] = int(r)
        if sr is not None:
            f.attrs["afilm_sr"] = int(sr)
        if degrade is not None:
            f.attrs["afilm_degrade"] = str(degrade)
        if patch is not None:
            f.attrs["afilm_patch"] = int(patch)
        f.attrs["afilm_model"] = model.config.modulation
        for name, items in layers.items():
            g = f.create_group(name)
            g.attrs["weight_names"] = [w.name.encode("utf8") for w, _ in items]
            for w, arr in items:
                g.create_dataset(w.name, data=arr)
    return path
