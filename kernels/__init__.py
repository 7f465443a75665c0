"""Block pooling + FiLM modulation ops: the torch reference by default, the Triton kernels on request.

``AFILM_KERNEL=triton`` selects the Triton kernels (``torch``, or unset, the reference); it is read at
each call. Why the reference is the default, on CUDA too: on an H200 the Triton path ran the models
at 0.81-1.06x the torch path's speed (inference and training, eager; benchmarks/results/
bench-h200-2026-11-26*.json), on an H100 the paper AFiLM's inference at 1.01x under a CUDA graph
(bench-h100-2026-11-27.json). Its kernels are 4.3-4.7x faster than the eager reference in GPU time
on the down-path stages and 2.3x on the up path (forward+backward under CUDA graphs, H100), but
each op is a few tens of microseconds of GPU work, less than what calling it from Python costs, and
with kernels 2.3-4.7x faster the whole model gained at most 1.06x, so these ops are a small part of
its time; the Triton path also adds compile and autotune time on first use. Under ``torch.compile``
the reference is always used: Inductor fuses it itself, and the autograd.Functions would break the
graph. Without CUDA, the Triton path runs through the Triton interpreter (slow; for tests).

The reference also runs, whatever ``AFILM_KERNEL`` says, for what the kernels cannot do, so that both
choices accept the same inputs and return the same dtypes: float64 tensors (the kernels compute in
fp32; a float64 input, or a float64 scale / shift / skip beside a float32 x, is computed in float64,
as torch's type promotion does) and tensors without data for a kernel to read (shape inference:
on the ``meta`` device, as after ``model.to("meta")``, or fake, under FakeTensorMode). ``requested()``
checks the variable without a tensor (``afilm bench`` does, before it runs).

``kernels.block_film`` is the dispatched *op*. The Triton module of the same file name is reached with
``from kernels.block_film import ...``, ``importlib.import_module("kernels.block_film")`` or
``kernels.triton_ops()`` (``import kernels.block_film as m`` yields the op, not the module).
"""

from __future__ import annotations

import importlib
import os
import sys
import types

import torch

from kernels import reference

if (os.environ.get("AFILM_KERNEL", "").strip().lower() == "triton" and not torch.cuda.is_available()
        and not os.environ.get("TRITON_INTERPRET") and "triton" not in sys.modules):
    # switched on here, before anything (torch's optimizers import triton through torch._dynamo) can
    # import triton for the compiler: kernels/block_film.py could not switch it on later (where triton
    # is loaded already, block_film.py says to set the variable in the environment)
    os.environ["TRITON_INTERPRET"] = "1"

OPS = ("block_max_pool", "block_film", "pool_act_block_max", "block_film_concat", "pool_film",
       "pool_act_film")


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


class KernelChoiceError(ValueError):
    """AFILM_KERNEL names no backend, or one that cannot run here (the CLI shows it as one line)."""

    exit_code = 2


def requested() -> str:
    """What AFILM_KERNEL asks for: 'torch' (unset or 'torch') or 'triton'; any other value raises
    KernelChoiceError (one line)."""
    chosen = os.environ.get("AFILM_KERNEL", "").strip().lower()
    if chosen in ("", "torch", "triton"):
        return chosen or "torch"
    raise KernelChoiceError(f"AFILM_KERNEL must be 'triton' or 'torch', got {chosen!r}")


def _reference_only(tensors) -> bool:
    """Inputs the kernels cannot take but the reference can: float64 (the kernels compute in fp32), on
    the meta device or fake (shape inference: no data)."""
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 or reference.no_data(t)
               for t in tensors)


def backend_for(x, *others) -> str:
    """'triton' or 'torch' for a call on x (and ``others``, its other tensors): 'triton' only when
    AFILM_KERNEL=triton, not compiling, and no tensor is float64, on the meta device or fake."""
    if torch.compiler.is_compiling():
        return "torch"
    chosen = requested()
    if chosen == "torch" or _reference_only((x, *others)):
        return "torch"
    error = _triton_import_error()
    if error:
        raise KernelChoiceError(f"AFILM_KERNEL=triton but the Triton kernels cannot be imported "
                                f"({error})")
    if not (x.is_cuda or triton_ops().INTERPRET):
        raise KernelChoiceError(f"AFILM_KERNEL=triton needs CUDA tensors here (got one on {x.device}); "
                                "set TRITON_INTERPRET=1 to run the kernels on CPU (slow), or "
                                "AFILM_KERNEL=torch")
    return "triton"


def _impl(x, *others):
    return triton_ops() if backend_for(x, *others) == "triton" else reference


def block_max_pool(x, block):
    return _impl(x).block_max_pool(x, block)


def block_film(x, scale, shift, block):
    return _impl(x, scale, shift).block_film(x, scale, shift, block)


def pool_act_block_max(h, block, slope=0.2):
    return _impl(h).pool_act_block_max(h, block, slope)


def block_film_concat(x, scale, shift, block, skip):
    return _impl(x, scale, shift, skip).block_film_concat(x, scale, shift, block, skip)


def pool_film(x, block, scale_fn, skip=None):
    # a float64 scale / shift from scale_fn: the Triton module's pool_film hands its modulation to the
    # reference
    return _impl(x, skip).pool_film(x, block, scale_fn, skip)


def pool_act_film(h, block, slope, scale_fn):
    return _impl(h).pool_act_film(h, block, slope, scale_fn)


class _Package(types.ModuleType):
    # Importing the submodule kernels/block_film.py would rebind the package attribute ``block_film``
    # (the op above) to that module; keep the op.
    def __setattr__(self, name, value):
        if name == "block_film" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
