"""Block pooling + FiLM modulation ops, dispatched to Triton on CUDA and to plain torch elsewhere.

``AFILM_KERNEL=triton`` or ``AFILM_KERNEL=torch`` forces one path (read at each call). Without CUDA,
the Triton path runs through the Triton interpreter (slow; for tests).

``kernels.block_film`` is the dispatched *op*. The Triton module of the same file name is reached with
``from kernels.block_film import ...``, ``importlib.import_module("kernels.block_film")`` or
``kernels.triton_ops()`` (``import kernels.block_film as m`` yields the op, not the module).
"""

from __future__ import annotations

import importlib
import os
import sys
import types

from kernels import reference

OPS = ("block_max_pool", "block_film", "pool_act_block_max", "block_film_concat")


def triton_ops():
    """The Triton module kernels/block_film.py (imported on first use)."""
    return importlib.import_module("kernels.block_film")


def _triton_import_error() -> str | None:
    """None when the Triton kernels import, else why not."""
    try:
        triton_ops()
    except Exception as e:  # noqa: BLE001 - any failure means: use the reference
        return f"{type(e).__name__}: {e}"
    return None


def _triton_available() -> bool:
    return _triton_import_error() is None


def backend_for(x) -> str:
    """'triton' or 'torch' for a tensor, honouring AFILM_KERNEL."""
    forced = os.environ.get("AFILM_KERNEL", "").strip().lower()
    if forced == "torch":
        return "torch"
    if forced == "triton":
        error = _triton_import_error()
        if error:
            raise RuntimeError(f"AFILM_KERNEL=triton but the Triton kernels cannot be imported ({error})")
        return "triton"
    if forced:
        raise ValueError(f"AFILM_KERNEL must be 'triton' or 'torch', got {forced!r}")
    return "triton" if x.is_cuda and _triton_available() else "torch"


def _impl(x):
    return triton_ops() if backend_for(x) == "triton" else reference


def block_max_pool(x, block):
    return _impl(x).block_max_pool(x, block)


def block_film(x, scale, shift, block):
    return _impl(x).block_film(x, scale, shift, block)


def pool_act_block_max(h, block, slope=0.2):
    return _impl(h).pool_act_block_max(h, block, slope)


def block_film_concat(x, scale, shift, block, skip):
    return _impl(x).block_film_concat(x, scale, shift, block, skip)


class _Package(types.ModuleType):
    # Importing the submodule kernels/block_film.py would rebind the package attribute ``block_film``
    # (the op above) to that module; keep the op.
    def __setattr__(self, name, value):
        if name == "block_film" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
