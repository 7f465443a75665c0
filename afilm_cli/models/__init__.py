"""Models: builders registered in MODELS; ``create_model(name, **overrides)`` builds one.

Every model has ``model_name``, ``config_dict()`` (``create_model(model_name, **config_dict())``
rebuilds the same architecture), ``length_multiple`` and ``check_length(T)``; forward maps
(B, 1, T) float32 to (B, 1, T). Built-ins: afilm, tfilm (paper size), their _small and _tiny CPU
presets, and spline (output = input).

A model from a plugin is checked where afilm relies on it: ``create_model`` refuses one without the
interface, with a ``model_name`` checkpoints could not rebuild it from, or with a ``config_dict()``
that is not plain data, and turns an exception of its builder into one :class:`ModelContractError`
line; :func:`check_length` does the same for its ``check_length``, and :func:`check_output` (called
where a forward's output is first used: the training step and validation, the inference windows,
``eval --data``) refuses an output of another shape than the input.
"""

from __future__ import annotations

from typing import Any

import torch

from afilm_cli.errors import AfilmError
from afilm_cli.registry import MODELS

INTERFACE = ("model_name", "config_dict", "length_multiple", "check_length")  # what every command relies on
PLAIN = (str, int, float, bool, type(None))  # exact types: np.float64 is a float, but not plain data
CONTRACT = "an afilm model maps (B, 1, T) to (B, 1, T)"


class ModelContractError(AfilmError):
    """A model breaks the contract above, or its own code (a plugin's builder, config_dict or
    check_length) raised: one line naming the model, its module and what is wrong. ``reason`` says
    what is wrong alone (a plugin's "needs CUDA"), for the cell of a listing that names the model."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _own(module: str | None) -> bool:
    """Whether code of this module is afilm's own (its exceptions are afilm bugs: tracebacks)."""
    return module is not None and (module == "afilm_cli" or module.startswith("afilm_cli."))


def _plugin_error(name: str, module: str | None, doing: str, exc: Exception) -> ModelContractError:
    text = str(exc).splitlines()[0] if str(exc).strip() else ""
    reason = text or type(exc).__name__
    return ModelContractError(f"model {name!r} ({module or '?'}) {doing}: {type(exc).__name__}"
                            f"{': ' + text if text else ''}", reason)


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _not_plain(value: Any, where: str) -> tuple[str, Any] | None:
    """(path, value) of the first part of ``value`` that is not plain JSON-like data, else None."""
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"{where} key {key!r}", key
            found = _not_plain(item, f"{where}[{key!r}]" if where else repr(key))
            if found:
                return found
        return None
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            found = _not_plain(item, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if type(value) in PLAIN else (where, value)


def _on_meta(model: torch.nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def create_model(name: str, **overrides: Any) -> torch.nn.Module:
    """Build a registered model. Overrides left at None are dropped, so CLI defaults never
    override a preset's own values (as timm's create_model); the rest are checked by the model's
    config (UNetConfig: each field's type and range, one AfilmError line naming the field). A
    builder (a plugin's, say) whose model lacks the interface above is refused here, in one line,
    as is one whose ``model_name`` is not the name it is registered under (a pretrained entry's
    model may carry the registered name of the architecture its checkpoint rebuilds) or whose
    ``config_dict()`` is not plain data (checkpoints store it; they load nothing else). An exception
    of a builder that is not afilm's own is one :class:`ModelContractError` line."""
    builder = MODELS.get(name)
    module = getattr(builder, "__module__", None)
    try:
        model = builder(**{k: v for k, v in overrides.items() if v is not None})
    except AfilmError:
        raise
    except Exception as exc:  # a plugin's TypeError for an unknown --model-arg, its "needs CUDA"...
        if _own(module):
            raise  # afilm's own builder: a bug, with its traceback
        raise _plugin_error(name, module, "could not be built", exc) from exc
    missing = [a for a in INTERFACE if not hasattr(model, a)]
    if not isinstance(model, torch.nn.Module) or missing:
        what = ", ".join(missing) if isinstance(model, torch.nn.Module) else "torch.nn.Module"
        reason = f"builds a {type(model).__name__} without {what}"
        raise ModelContractError(f"model {name!r} ({module or '?'}) {reason}: an afilm model is a "
                                 "torch.nn.Module with model_name, config_dict(), length_multiple and "
                                 "check_length(T) (README: Plugins)", reason)
    _check_model_name(name, module, model.model_name)
    _check_config(name, module, model)
    return model


def _check_model_name(name: str, module: str | None, model_name: Any) -> None:
    """Checkpoints store ``model_name`` and rebuild the model with ``create_model(model_name, ...)``:
    it must be the name the model is registered under. A pretrained entry (registered with
    ``pretrained=True``) loads a checkpoint and builds that checkpoint's architecture, whose registered
    name its model carries (afilm_speech_r4 builds an 'afilm_small')."""
    if model_name == name:
        return
    if isinstance(model_name, str) and MODELS.meta(name).get("pretrained") and model_name in MODELS:
        return
    reason = f"its model_name is {model_name!r}"
    raise ModelContractError(f"model {name!r} ({module or '?'}): {reason}: checkpoints rebuild a model "
                             f"from its model_name, so it must be {name!r}, the name it is registered under",
                             reason)


def _check_config(name: str, module: str | None, model: torch.nn.Module) -> None:
    """``config_dict()`` is stored in every checkpoint, which loads plain data alone: refuse anything
    else now, not after a run has written checkpoints nothing can load."""
    try:
        config = model.config_dict()
    except Exception as exc:
        if _on_meta(model):
            return  # it reads its weights (a gain's value): checked when the model is built for real
        if _own(type(model).__module__):
            raise
        raise _plugin_error(name, module, "config_dict() failed", exc) from exc
    if type(config) is not dict:
        reason = f"config_dict() returned a {_type_name(config)}"
        raise ModelContractError(f"model {name!r} ({module or '?'}): {reason}, not a dict of its keyword "
                                 "arguments", reason)
    found = _not_plain(config, "")
    if found is not None:
        where, value = found
        reason = f"config_dict() holds {where} = {value!r}, of type {_type_name(value)}"
        raise ModelContractError(f"model {name!r} ({module or '?'}): {reason}: checkpoints store the "
                                 "config and load plain data alone (str, int, float, bool, None, lists and "
                                 "dicts with str keys); convert it, as int(...)", reason)


def model_name_of(model: torch.nn.Module) -> str:
    """The model_name of ``model``, or of the model inside a wrapper (torch.compile, DDP, a CUDA graph)."""
    for _ in range(8):
        name = getattr(model, "model_name", None)
        if isinstance(name, str):
            return name
        inner = (getattr(model, attr, None) for attr in ("_orig_mod", "module", "model"))
        model = next((m for m in inner if isinstance(m, torch.nn.Module)), None)
        if model is None:
            break
    return "?"


def check_output(model: torch.nn.Module | str, x: torch.Tensor, y: Any) -> None:
    """Refuse a forward output ``y`` that is not a tensor of the input ``x``'s shape, in one line naming
    the model (or ``model``, a name) and both shapes. A shape comparison: cheap enough for every batch,
    and done on what a compiled model or a replayed CUDA graph returned, never inside either."""
    if isinstance(y, torch.Tensor) and y.shape == x.shape:
        return
    name = model if isinstance(model, str) else model_name_of(model)
    got = tuple(y.shape) if isinstance(y, torch.Tensor) else f"a {_type_name(y)}"
    raise AfilmError(f"model {name!r} returned {got} for a {tuple(x.shape)} input; {CONTRACT}")


def check_length(model: torch.nn.Module, t: int) -> None:
    """``model.check_length(t)``; an exception of a check_length that is not afilm's own (a plugin's
    ValueError) is one :class:`ModelContractError` line naming the model, its module and the error."""
    try:
        model.check_length(t)
    except AfilmError:
        raise
    except Exception as exc:
        module = type(model).__module__
        if _own(module):
            raise
        raise _plugin_error(model_name_of(model), module, f"refuses length {t}", exc) from exc


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (works on the meta device)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe_model(name: str, with_model: bool = False) -> dict[str, Any]:
    """Registry meta, parameter count, length multiple, config and modulation plan of a model, built
    on the meta device (no memory, no init: instant even for the 134 M-parameter AFiLM); a pretrained
    model that cannot live there is built for real, as is a plugin's that fails there (its config may
    read its weights). A model that cannot be built reports None, the error and, in ``reason``, the
    error alone (a plugin's "needs CUDA", without the model's name) instead of failing the listing."""
    meta = MODELS.meta(name)
    out: dict[str, Any] = {"name": name, "meta": meta, "parameters": None, "length_multiple": None,
                           "config": None, "plan": None, "error": None, "reason": None}
    try:
        try:
            if meta.get("pretrained"):
                model = create_model(name)  # loads (and checks) its weights: cannot live on the meta device
            else:
                with torch.device("meta"):
                    model = create_model(name)
            config = model.config_dict()
        except Exception:
            if meta.get("pretrained") or _own(getattr(MODELS.get(name), "__module__", None)):
                raise
            model = create_model(name)  # a plugin that cannot be built on meta (or say its config there)
            config = model.config_dict()
        out["parameters"] = count_parameters(model)
        out["length_multiple"] = int(model.length_multiple)
        out["config"] = config
        if with_model and hasattr(model, "modulation_plan") and 8192 % model.length_multiple == 0:
            out["plan"] = model.modulation_plan(8192)
    except Exception as exc:  # a broken plugin or a missing pretrained file must not break the listing
        out["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        out["reason"] = exc.reason if isinstance(exc, ModelContractError) else out["error"]
    return out


# built-ins register on import (after create_model exists, so they may import it)
from afilm_cli import pretrained  # noqa: E402, F401  (bundled pretrained models register too)
from afilm_cli.models import afilm, spline, tfilm  # noqa: E402, F401
