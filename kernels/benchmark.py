"""Kernel benchmark: Triton vs the torch reference (eager and torch.compile), at the paper model's shapes.

``run_kernel_benchmarks()`` returns one dict per (layer, op, mode, provider); it prints nothing (the
``afilm bench --kernels`` command does). Timings: ``triton.testing.do_bench`` on CUDA (median, min and
max over its repeats, warm-up excluded), a perf_counter loop on CPU. GB/s is the *minimum* traffic of
the op (what the fused Triton kernels move: inputs read once, outputs written once, the int8/int32
side tensors for the backward included) divided by the time: the same byte count for every provider,
so it compares like with like. ``x_eager`` is eager time / this time (> 1: faster than eager).
Forward timings run with gradients enabled (as in training: the ops save what their backward needs).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from kernels import reference

# The modulated activations of the paper model (8192-sample patches): name, C, T, block, path.
# The down path modulates the pooled conv output; the up path the SubPixel output (half the conv's
# channels), concatenated with the matching down output (same C and T) afterwards.
LAYERS = (
    ("D1", 128, 4096, 128, "down"),
    ("D2", 256, 2048, 64, "down"),
    ("D3", 512, 1024, 32, "down"),
    ("D4", 512, 512, 16, "down"),
    ("B", 512, 256, 8, "down"),
    ("U4", 512, 512, 8, "up"),
    ("U3", 512, 1024, 8, "up"),
    ("U2", 256, 2048, 8, "up"),
    ("U1", 128, 4096, 8, "up"),
)
QUICK_LAYERS = ("D1", "U1")
MODES = ("fwd", "bwd", "fwd+bwd")
# "layer": the memory-bound work of one stage as the model runs it. Down: pool_act_block_max then
# block_film; up: block_max_pool then block_film_concat.
OPS = ("layer", "block_max_pool", "block_film", "pool_act_block_max", "block_film_concat")

# Peak DRAM bandwidth (GB/s) of common GPUs, matched on the device name, for "% of peak".
PEAK_GBPS = (("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
             ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0), ("L40S", 864.0),
             ("L4", 300.0), ("RTX 4090", 1008.0), ("RTX 3090", 936.0))


def peak_gbps(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((gbps for key, gbps in PEAK_GBPS if key in name), None)


def triton_unavailable_reason(device: torch.device | str) -> str | None:
    """Why the Triton provider is skipped on this device, or None when it runs."""
    device = torch.device(device)
    if device.type != "cuda":
        return "Triton kernels need CUDA: timing the PyTorch reference only"
    try:
        import kernels.block_film  # noqa: F401
    except Exception as e:  # noqa: BLE001 - report any import failure as the reason
        return f"Triton kernels unavailable ({type(e).__name__}: {e}): timing the PyTorch reference only"
    return None


def _ops_for(path: str, ops: Sequence[str]) -> list[str]:
    fused = "pool_act_block_max" if path == "down" else "block_film_concat"
    other = "block_film_concat" if path == "down" else "pool_act_block_max"
    return [op for op in ops if op != other and (op != fused or fused in ops)]


def make_inputs(op: str, path: str, B: int, C: int, T: int, block: int, dtype, device) -> list:
    nb = -(-T // block)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_()

    if op == "block_max_pool":
        return [leaf(B, C, T), block]
    if op == "block_film":
        return [leaf(B, C, T), leaf(B, C, nb), None, block]
    if op == "pool_act_block_max":
        return [leaf(B, C, 2 * T), block, 0.2]
    if op == "block_film_concat":
        return [leaf(B, C, T), leaf(B, C, nb), None, block, leaf(B, C, T)]
    if path == "down":  # layer: conv output (2T), scale
        return [leaf(B, C, 2 * T), leaf(B, C, nb), block]
    return [leaf(B, C, T), leaf(B, C, nb), block, leaf(B, C, T)]  # up layer: x, scale, skip


def _layer_fn(ns, path: str) -> Callable:
    """The stage's kernel work written against an ops namespace (reference or Triton module)."""
    if path == "down":
        def down(h, scale, block):
            a, a_down = ns.pool_act_block_max(h, block, 0.2)
            return ns.block_film(a, scale, None, block), a_down
        return down

    def up(x, scale, block, skip):
        return ns.block_film_concat(x, scale, None, block, skip), ns.block_max_pool(x, block)
    return up


class _TritonUnfused:
    """Triton's unfused ops plus torch glue: what the fused kernels are measured against."""

    def __init__(self, tk):
        self.block_max_pool, self.block_film = tk.block_max_pool, tk.block_film

    def pool_act_block_max(self, h, block, slope):
        a = F.leaky_relu(F.max_pool1d(h, 2, 2), slope)
        return a, self.block_max_pool(a, block)

    def block_film_concat(self, x, scale, shift, block, skip):
        return torch.cat([self.block_film(x, scale, shift, block), skip], dim=1)


def op_function(provider: str, op: str, path: str) -> Callable | None:
    if provider == "eager":
        ns = reference
    elif provider == "compile":
        return torch.compile(op_function("eager", op, path), dynamic=False)
    else:
        from kernels import triton_ops

        ns = triton_ops()
        if provider == "triton_unfused":
            if op not in ("layer", "pool_act_block_max", "block_film_concat"):
                return None  # no fusion to compare
            ns = _TritonUnfused(ns)
    return _layer_fn(ns, path) if op == "layer" else getattr(ns, op)


def bytes_moved(op: str, path: str, mode: str, B: int, C: int, T: int, block: int, elem: int) -> int:
    """Minimum DRAM traffic of an op (scale-only FiLM; skip has C channels like x)."""
    n, nb = B * C * T, B * C * -(-T // block)
    idx = nb * (elem + 4)  # a block max (or its gradient) and the int32 argmax
    table = {
        "block_max_pool": (n * elem + idx, idx + n * elem),
        "block_film": (2 * n * elem + nb * elem, 3 * n * elem + 2 * nb * elem),
        "pool_act_block_max": (3 * n * elem + n + idx, n * elem + n + idx + 2 * n * elem),
        # the skip is read and written once forward; its gradient is a view of dy (nothing moved)
        "block_film_concat": (4 * n * elem + nb * elem, 3 * n * elem + 2 * nb * elem),
    }
    if op == "layer":
        parts = ("pool_act_block_max", "block_film") if path == "down" else ("block_max_pool",
                                                                             "block_film_concat")
        return sum(bytes_moved(p, path, mode, B, C, T, block, elem) for p in parts)
    fwd, bwd = table[op]
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _time_ms(fn: Callable, device: torch.device, repeats: int, warmup: int) -> tuple[float, float, float]:
    if device.type == "cuda":
        import triton.testing

        med, lo, hi = triton.testing.do_bench(fn, warmup=25, rep=max(repeats, 20), quantiles=[0.5, 0.0, 1.0])
        return med, lo, hi
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), max(times)


def timed_callable(fn: Callable, inputs: list, mode: str) -> Callable:
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def forward():
        out = fn(*inputs)
        return out if isinstance(out, tuple) else (out,)

    if mode == "fwd":
        return forward
    outs = forward()
    grads = [torch.randn_like(o) for o in outs]
    if mode == "bwd":
        return lambda: torch.autograd.grad(outs, leaves, grads, retain_graph=True)
    return lambda: torch.autograd.grad(forward(), leaves, grads)


def run_kernel_benchmarks(batch: int = 16, quick: bool = False, device: str | torch.device | None = None,
                          dtype: torch.dtype = torch.float32, layers: Sequence[str] | None = None,
                          ops: Sequence[str] = OPS, modes: Sequence[str] = MODES,
                          compile: bool | None = None, repeats: int | None = None,
                          on_layer: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Time every (layer, op, mode, provider); one row dict each.

    ``quick``: layers D1 and U1 only, batch 2, 3 repeats (seconds on a CPU). ``compile=None`` runs
    torch.compile except in quick mode on CPU (compiling takes ~20 s there). Without CUDA the Triton
    providers are skipped (see ``triton_unavailable_reason``). ``on_layer`` gets the rows so far after
    each layer.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if quick:
        batch = min(batch, 2)
    repeats = repeats or (3 if quick else (50 if device.type == "cuda" else 10))
    if compile is None:
        compile = not (quick and device.type == "cpu")
    names = layers or (QUICK_LAYERS if quick else [name for name, *_ in LAYERS])
    unknown = set(names) - {name for name, *_ in LAYERS}
    if unknown:
        raise ValueError(f"unknown layers {sorted(unknown)}; known: {[name for name, *_ in LAYERS]}")
    providers = ["eager"] + (["compile"] if compile else [])
    if triton_unavailable_reason(device) is None:
        providers = ["triton", "triton_unfused"] + providers
    peak = peak_gbps(device)
    elem = torch.empty((), dtype=dtype).element_size()
    rows = []
    for name, C, T, block, path in LAYERS:
        if name not in names:
            continue
        for op in _ops_for(path, ops):
            for mode in modes:
                eager_ms = None
                for provider in ["eager"] + [p for p in providers if p != "eager"]:
                    fn = op_function(provider, op, path)
                    if fn is None:
                        continue
                    inputs = make_inputs(op, path, batch, C, T, block, dtype, device)
                    row = dict(layer=name, op=op, mode=mode, provider=provider, batch=batch, C=C, T=T,
                               block=block, dtype=str(dtype).removeprefix("torch."), device=device.type)
                    try:
                        med, lo, hi = _time_ms(timed_callable(fn, inputs, mode), device, repeats,
                                               warmup=1 if quick else 3)
                    except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a compiler
                        rows.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
                        continue
                    eager_ms = med if provider == "eager" else eager_ms
                    gbps = bytes_moved(op, path, mode, batch, C, T, block, elem) / (med * 1e-3) / 1e9
                    rows.append({**row, "ms_median": med, "ms_min": lo, "ms_max": hi, "gbps": gbps,
                                 "pct_peak": None if peak is None else 100 * gbps / peak,
                                 "x_eager": eager_ms / med if eager_ms else None})
        if on_layer:
            on_layer(list(rows))
    return rows
