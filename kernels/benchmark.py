"""Kernel benchmark: Triton vs the torch reference (eager and torch.compile), at the paper model's shapes.

``run_kernel_benchmarks()`` returns one dict per (layer, op, mode, provider); it prints nothing (the
``afilm bench --kernels`` command does). Forward timings run with gradients enabled (as in training:
the ops save what their backward needs).

Two timers, both in ms per call (median, min, max):

- *launch* (``launch_ms_*``): what a Python caller pays per call, CPU overhead (Python, autograd,
  kernel launches) included: ``triton.testing.do_bench`` on CUDA (L2 flushed before each call,
  warm-up excluded), a perf_counter loop on CPU. Ops of a few tens of microseconds of GPU work are
  launch-bound here: the figure says little about the kernels.
- *graph* (``graph_ms_*``, CUDA only): GPU time alone. The call is captured into a CUDA graph, many
  calls unrolled, and the graph replayed (``triton.testing.do_bench_cudagraph``, median/min/max over
  its 10 replays). The callable is warmed up before capture (the Triton autotuner and torch.compile
  do their work on the first call); mode "bwd" runs its forward outside the captured region. The
  calls in the graph cycle over ``copies`` copies of the inputs, enough that a copy's tensors have
  left the L2 cache (about 2x its size of other traffic) before they are used again: without an L2
  flush in the graph, small shapes would otherwise be timed out of cache.

GB/s is the *minimum* traffic of the op (``bytes``: what the fused Triton kernels move: inputs read
once, outputs written once, the int8/int32 side tensors for the backward included) divided by the
*graph* time when there is one (``gbps_timer`` = "graph"), else by the launch time ("launch"): the
same byte count for every provider, so it compares like with like. ``pct_peak`` is GB/s over the
device's peak DRAM bandwidth (``PEAK_GBPS``; None when unknown).

Row keys: layer, op, mode, provider, batch, C, T, block, dtype, device, bytes, copies;
launch_ms_median, launch_ms_min, launch_ms_max; graph_ms_median, graph_ms_min, graph_ms_max (None
without a graph timing); gbps, gbps_timer, pct_peak; x_eager (eager graph time / this graph time,
> 1: faster than eager; None without graph times) and x_eager_launch (the same from launch times).
A row whose op failed to run has ``error`` (and no timings); a row whose graph capture or replay
failed keeps its launch timing and has ``graph_error`` (the run goes on either way).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from kernels import reference

Timer = Callable[[Callable[[], object]], tuple[float, float, float]]

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
# "layer": the memory-bound work of one stage as the model runs it, the scale computed from the block
# maxima (mix_blocks stands in for the attention). Down: pool_act_film (pool_act_block_max, then
# block_film); up: pool_film (block_max_pool, then block_film_concat). With Triton both backwards write
# the stage input's gradient in one pass (no dense intermediate gradient stored).
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
    if path == "down":  # layer: conv output (2T), w (mix_blocks' weight)
        return [leaf(B, C, 2 * T), leaf(B, C, nb), block]
    return [leaf(B, C, T), leaf(B, C, nb), block, leaf(B, C, T)]  # up layer: x, w, skip


def mix_blocks(pooled: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Stand-in for a stage's normaliser (attention or LSTM over the blocks): block k's scale comes
    from block k-1's max, so, as in the model, the modulation needs the whole pooling first and no
    provider can fold the pooling into the modulation's pass. The same torch ops for every provider."""
    return w * pooled.roll(1, -1)


def _layer_fn(ns, path: str) -> Callable:
    """The stage's kernel work written against an ops namespace (reference or Triton module)."""
    if path == "down":
        def down(h, w, block):
            return ns.pool_act_film(h, block, 0.2, lambda a_down: (mix_blocks(a_down, w), None))
        return down

    def up(x, w, block, skip):
        return ns.pool_film(x, block, lambda pooled: (mix_blocks(pooled, w), None), skip)
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

    def pool_act_film(self, h, block, slope, scale_fn):
        return reference.compose_pool_act_film(self, h, block, slope, scale_fn)

    def pool_film(self, x, block, scale_fn, skip):
        return reference.compose_pool_film(self, x, block, scale_fn, skip)


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
        # mix_blocks: read pooled and w, write the scale; backward: the two products' gradients
        "mix": (3 * nb * elem, 5 * nb * elem),
    }
    if op == "layer":
        parts = ("pool_act_block_max", "block_film", "mix") if path == "down" else (
            "block_max_pool", "block_film_concat", "mix")
        total = sum(bytes_moved(p, path, mode, B, C, T, block, elem) for p in parts)
        if path == "down" and mode != "fwd":
            # pool_act_film's linked backward never stores a's gradient: dy is read a second time (by
            # the pass that writes dh) instead of da written and read back, and the scale read again
            total -= (n - nb) * elem
        return total
    fwd, bwd = table[op]
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def launch_time_ms(fn: Callable, device: torch.device, repeats: int, warmup: int
                   ) -> tuple[float, float, float]:
    """Per-call time as a Python caller sees it (median, min, max ms): do_bench on CUDA, a perf_counter
    loop on CPU."""
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


def graph_time_ms(fn: Callable, rep: int = 20) -> tuple[float, float, float]:
    """GPU time of one call (median, min, max ms over the replays) with ``triton.testing.do_bench_cudagraph``.

    Its signature is the same in Triton 3.6 and 3.9 (fn, rep, grad_to_none, quantiles, return_mode);
    ``rep`` is the GPU time (ms) of the calls unrolled into the graph. ``fn`` is run once first, outside
    any capture, so autotuning and compilation are done before the capture. The garbage collector is
    off during the timing: a Triton kernel object finalised during capture unloads its module, which
    invalidates the graph (Triton 3.9 guards against this itself, 3.6 does not)."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        med, lo, hi = triton.testing.do_bench_cudagraph(fn, rep=rep, quantiles=[0.5, 0.0, 1.0])
    finally:
        if gc_was_enabled:
            gc.enable()
    return med, lo, hi


def capture_stream() -> torch.cuda.Stream | None:
    """The stream ``torch.cuda.graph`` captures on when given none (do_bench_cudagraph gives none).

    A backward node runs on the stream its forward ran on, so mode "bwd" (forward outside the capture,
    backward inside) must run its forward on this stream, or its backward would not be captured."""
    graph = torch.cuda.graph(torch.cuda.CUDAGraph())  # constructing it creates the shared capture stream
    return getattr(graph, "capture_stream", None)


def timed_callable(fn: Callable, inputs: list, mode: str, stream: torch.cuda.Stream | None = None
                   ) -> Callable:
    """A no-argument callable running ``fn(*inputs)`` forward ("fwd"), backward only ("bwd": the forward
    is run once here, on ``stream`` when given, and kept) or both ("fwd+bwd")."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def forward():
        out = fn(*inputs)
        return out if isinstance(out, tuple) else (out,)

    if mode == "fwd":
        return forward
    context = contextlib.nullcontext()
    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream())  # the inputs were made on the current stream
        context = torch.cuda.stream(stream)
    with context:
        outs = forward()
        grads = [torch.randn_like(o) for o in outs]
    if mode == "bwd":
        return lambda: torch.autograd.grad(outs, leaves, grads, retain_graph=True)
    return lambda: torch.autograd.grad(forward(), leaves, grads)


def input_copies(traffic: int, l2_bytes: int | None, limit: int = 64) -> int:
    """How many input copies a graph cycles over so that ~2x the L2 size of traffic separates two uses
    of one copy (1 without an L2 size)."""
    if not l2_bytes or traffic <= 0:
        return 1
    return min(limit, 1 + -(-2 * l2_bytes // traffic))


def clone_inputs(inputs: list) -> list:
    return [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
            for t in inputs]


def round_robin(fns: Sequence[Callable]) -> Callable:
    """One callable that calls ``fns`` in turn (in a graph: the unrolled calls cycle over them)."""
    if len(fns) == 1:
        return fns[0]
    turn = itertools.cycle(fns)
    return lambda: next(turn)()


def l2_cache_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", None) or None


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _ratio(base: float | None, this: float | None) -> float | None:
    return base / this if base and this else None


def run_kernel_benchmarks(batch: int = 16, quick: bool = False, device: str | torch.device | None = None,
                          dtype: torch.dtype = torch.float32, layers: Sequence[str] | None = None,
                          ops: Sequence[str] = OPS, modes: Sequence[str] = MODES,
                          compile: bool | None = None, repeats: int | None = None,
                          on_layer: Callable[[list[dict]], None] | None = None,
                          graph: bool | None = None, launch_timer: Timer | None = None,
                          graph_timer: Timer | None = None, providers: Sequence[str] | None = None
                          ) -> list[dict]:
    """Time every (layer, op, mode, provider); one row dict each (keys: see the module docstring).

    ``quick``: layers D1 and U1 only, batch 2, 3 repeats (seconds on a CPU), shorter graphs.
    ``compile=None`` runs torch.compile except in quick mode on CPU (compiling takes ~20 s there).
    Without CUDA the Triton providers are skipped (see ``triton_unavailable_reason``). ``graph``
    (default: on CUDA) adds the CUDA-graph timing. ``launch_timer`` / ``graph_timer`` replace the
    timers (callable -> (median, min, max) ms; a ``graph_timer`` turns graph timing on unless
    ``graph=False``); ``providers`` restricts the providers (eager is always timed: the baseline).
    ``on_layer`` gets the rows so far after each layer.
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
    available = ["eager"] + (["compile"] if compile else [])
    if triton_unavailable_reason(device) is None:
        available = ["triton", "triton_unfused"] + available
    chosen = ["eager"] + [p for p in available if p != "eager" and (providers is None or p in providers)]
    warmup = 1 if quick else 3
    launch_timer = launch_timer or (lambda fn: launch_time_ms(fn, device, repeats, warmup))
    if graph is None:
        graph = graph_timer is not None or device.type == "cuda"
    if graph and graph_timer is None:
        graph_timer = lambda fn: graph_time_ms(fn, rep=5 if quick else 20)  # noqa: E731
    stream = None
    if graph and device.type == "cuda":
        with contextlib.suppress(Exception):  # without it, "bwd" captures fail: recorded per row
            stream = capture_stream()
    l2 = l2_cache_bytes(device)
    peak = peak_gbps(device)
    elem = torch.empty((), dtype=dtype).element_size()
    rows = []
    for name, C, T, block, path in LAYERS:
        if name not in names:
            continue
        for op in _ops_for(path, ops):
            for mode in modes:
                traffic = bytes_moved(op, path, mode, batch, C, T, block, elem)
                eager: dict = {}
                for provider in chosen:
                    fn = op_function(provider, op, path)
                    if fn is None:
                        continue
                    row = dict(layer=name, op=op, mode=mode, provider=provider, batch=batch, C=C, T=T,
                               block=block, dtype=str(dtype).removeprefix("torch."), device=device.type,
                               bytes=traffic)
                    rows.append(_time_row(row, fn, op, path, mode, (batch, C, T, block), dtype, device,
                                          launch_timer, graph_timer if graph else None, stream,
                                          input_copies(traffic, l2) if graph else 1, peak, eager))
                    if provider == "eager":
                        eager = rows[-1]
        if on_layer:
            on_layer(list(rows))
    return rows


def _time_row(row: dict, fn: Callable, op: str, path: str, mode: str, shape: tuple, dtype, device,
              launch_timer: Timer, graph_timer: Timer | None, stream, copies: int, peak: float | None,
              eager: dict) -> dict:
    """One row: launch timing, then (``graph_timer``) graph timing; errors are recorded, not raised."""
    inputs = make_inputs(op, path, *shape, dtype, device)
    try:
        launch = launch_timer(timed_callable(fn, inputs, mode))
    except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a compiler
        return {**row, "error": _error_text(e)}
    row.update(copies=copies, launch_ms_median=launch[0], launch_ms_min=launch[1], launch_ms_max=launch[2],
               graph_ms_median=None, graph_ms_min=None, graph_ms_max=None)
    if graph_timer is not None:
        try:
            # every copy gets its own callable (for "bwd": its own forward, on the capture stream)
            sets = [inputs] + [clone_inputs(inputs) for _ in range(copies - 1)]
            fns = [timed_callable(fn, s, mode, stream) for s in sets]
            for f in fns[1:]:
                f()  # warm-up of each copy outside the capture (the first is warmed by the timer)
            g = graph_timer(round_robin(fns))
            row.update(graph_ms_median=g[0], graph_ms_min=g[1], graph_ms_max=g[2])
        except Exception as e:  # noqa: BLE001 - a provider that cannot be captured: say so, go on
            row["graph_error"] = _error_text(e)
            if device.type == "cuda":
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize()
    timer = "graph" if row["graph_ms_median"] is not None else "launch"
    gbps = row["bytes"] / (row[f"{timer}_ms_median"] * 1e-3) / 1e9
    base = eager or row  # the eager row itself is its own baseline (ratio 1)
    row.update(gbps=gbps, gbps_timer=timer, pct_peak=None if peak is None else 100 * gbps / peak,
               x_eager=_ratio(base.get("graph_ms_median"), row["graph_ms_median"]),
               x_eager_launch=_ratio(base.get("launch_ms_median"), row["launch_ms_median"]))
    return row
