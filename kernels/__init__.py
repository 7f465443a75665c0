"""Block pooling + FiLM modulation ops, dispatched to Triton on CUDA and to plain torch elsewhere.

``AFILM_KERNEL=triton`` or ``AFILM_KERNEL=torch`` forces one path (read at each call).
"""

from __future__ import annotations

import os

from kernels import reference

OPS = ("block_max_pool", "block_film", "pool_act_block_max", "block_film_concat")


def _triton_available() -> bool:
    try:
        import kernels.block_film  # noqa: F401
    except Exception:
        return False
    return True


def backend_for(x) -> str:
    """'triton' or 'torch' for a tensor, honouring AFILM_KERNEL."""
    forced = os.environ.get("AFILM_KERNEL", "").strip().lower()
    if forced == "torch":
        return "torch"
    if forced == "triton":
        if not _triton_available():
            raise RuntimeError("AFILM_KERNEL=triton but the Triton kernels cannot be imported")
        return "triton"
    if forced:
        raise ValueError(f"AFILM_KERNEL must be 'triton' or 'torch', got {forced!r}")
    return "triton" if x.is_cuda and _triton_available() else "torch"


def _impl(x):
    if backend_for(x) == "triton":
        from kernels import block_film as triton_ops

        return triton_ops
    return reference


def block_max_pool(x, block):
    return _impl(x).block_max_pool(x, block)


def block_film(x, scale, shift, block):
    return _impl(x).block_film(x, scale, shift, block)


def pool_act_block_max(h, block, slope=0.2):
    return _impl(h).pool_act_block_max(h, block, slope)


def block_film_concat(x, scale, shift, block, skip):
    return _impl(x).block_film_concat(x, scale, shift, block, skip)
