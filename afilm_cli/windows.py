"""Windowed overlap-add inference, and the settings that make it fast.

The model runs on windows of ``window`` samples (a multiple of ``model.length_multiple``). Each window
drops ``context`` samples at both ends (where zero padding of the convolutions and the window-limited
attention differ most from a longer pass) and cross-fades with its neighbour over ``fade`` samples
(sin^2 / cos^2 ramps, which sum to exactly 1). The first and last windows keep their outer edges.

Speed (measured by ``afilm bench --model``; see README "Benchmarks"):

- no autograd: every batch runs under ``torch.inference_mode``;
- ``precision``: ``fp32`` (default) or ``bf16`` autocast on CUDA. bf16 made inference slower on
  an H200 (0.50-0.87x the fp32 real-time factor at batch 16) and is emulated on CPU. bf16 keeps
  the output within :data:`BF16_MIN_SNR_DB` of the fp32 output (the final residual add with the
  input stays fp32);
- ``threads``: ``auto`` on CPU uses the cores no other task is running on (at least one); when that
  is all of them, on inputs of four batches or more, it times a batch at all cores and one at one
  thread and keeps the faster. On a busy machine OpenMP threads that wait for each other at every
  op's barrier make two threads far slower than one (measured 5-40x on a loaded 2-core VM); on an
  idle one all cores win. Thread counts agree to float rounding, not bit for bit (a 16-bit output
  can differ by one step in a sample): pass a number for byte-identical reruns;
- CUDA graphs (on CUDA, default on; ``graphs="off"`` to disable): the forward is captured once per
  batch shape and replayed (afilm_cli/cuda_graphs.py); batches are padded to that shape. Batches are
  also pipelined: the CPU reads and splines batch k+1 while the GPU runs batch k;
- ``compile`` (CUDA): ``torch.compile(mode="reduce-overhead")`` (inductor kernels in its own CUDA
  graphs); batches are padded to a fixed shape. 2.04x eager for the paper AFiLM, 1.64x for
  afilm_small on an H200; off by default: compiling takes time before the first window;
- the Triton kernels: ``AFILM_KERNEL=triton`` (kernels/__init__.py says why they are not the default).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from afilm_cli.errors import AfilmError
from afilm_cli.level import centre, window_gains
from afilm_cli.models import check_output
from afilm_cli.stages import Stage
from afilm_cli.threads import busy_elsewhere, free_cores, num_threads  # tests patch them here

PRECISIONS = ("fp32", "bf16")
BF16_MIN_SNR_DB = 40.0  # output of a bf16 pass vs the fp32 pass (tests/test_infer.py, gpu-marked)
FP32_ATOL = 1e-5  # fp32 outputs under other batch sizes / thread counts / padded batches


@dataclass(frozen=True)
class WindowPlan:
    """Window geometry in high-rate samples; hop = window - 2*context - fade.

    Windows start at 0, hop, 2*hop, ... and the last one ends exactly at the signal length rounded up
    to ``multiple``, where a whole-signal pass would end too (so its right edge sees the same zero
    padding, and the last window is full of signal rather than of padding)."""

    window: int
    context: int
    fade: int
    multiple: int = 1

    @property
    def hop(self) -> int:
        return self.window - 2 * self.context - self.fade

    def starts(self, length: int) -> list[int]:
        padded = -(-max(length, 1) // self.multiple) * self.multiple
        if padded <= self.window:
            return [0]
        count = 1 + -(-(padded - self.window) // self.hop)
        return [k * self.hop for k in range(count - 1)] + [padded - self.window]

    def weights(self, starts: list[int], k: int) -> np.ndarray:
        """Weight of window k: zero over ``context`` at inner edges, sin^2 / cos^2 ramps over ``fade``
        where it meets its neighbours (the ramps of a pair sum to 1), one elsewhere."""
        w = np.ones(self.window)
        c, f = self.context, self.fade
        up = np.sin(0.5 * np.pi * (np.arange(f) + 0.5) / f) ** 2
        if k > 0:
            w[:c] = 0.0
            w[c : c + f] *= up
        if k < len(starts) - 1:
            gap = starts[k + 1] - starts[k]  # <= hop, so the ramp ends before the last context
            w[gap + c : gap + c + f] *= 1.0 - up
            w[gap + c + f :] = 0.0
        return w


def plan_windows(length: int, multiple: int = 1, window: int = 8192, context: int | None = None,
                 fade: int | None = None) -> WindowPlan:
    """Round ``window`` up to the model's length multiple, and to at least two of them (shrunk to the
    signal when it is shorter); context and fade default to window/16 each, and the hop is kept a
    multiple of ``multiple`` so every window sees the same block grid as a whole-signal pass (one
    multiple per window would leave no room for the overlap)."""
    multiple = max(int(multiple), 1)
    window = max(-(-max(window, 1) // multiple), 2) * multiple
    window = min(window, max(multiple, -(-length // multiple) * multiple))
    context = window // 16 if context is None else context
    fade = window // 16 if fade is None else fade
    hop = window - 2 * context - fade
    if hop < 1:
        raise AfilmError(f"window {window} leaves no hop after 2 x context {context} and fade {fade}")
    if hop >= multiple:  # always, but for a single window shrunk to a short signal (no hop used)
        fade += hop % multiple  # widen the fade to bring the hop down to a multiple
    return WindowPlan(window, context, fade, multiple)


def run_windows(model: torch.nn.Module, src: Stage, length: int, plan: WindowPlan, *, batch_size: int = 16,
                device: str | torch.device = "cpu", progress: Callable[[int], None] | None = None,
                precision: str = "fp32", threads: int | str | None = "auto", fixed_shapes: bool = False,
                autograd: bool = False, stats: dict | None = None, level_dbfs: float | None = None
                ) -> Iterator[np.ndarray]:
    """Model over ``src`` (the spline signal) in cross-faded windows; yields consecutive blocks of the
    output, (n, C) float32, ``length`` samples in all. Channels are separate batch items.

    Overlap-add divides by the summed weights, so the output is exact wherever every window that
    contributes agrees (a local model whose receptive field fits in ``context``). ``precision`` and
    ``threads``: see the module docstring; ``fixed_shapes`` pads the last batch to ``batch_size``
    windows (for compiled models and CUDA graphs); ``autograd=True`` runs without inference_mode, only
    to measure what that costs. ``level_dbfs``: each window goes through the model at that RMS level
    and its output comes back at the window's own (level.window_gains; a window of digital silence
    comes out silent), and each window is centred before it and its mean added back after
    (level.centre: an offset, DC, passes through untouched). ``stats``, if given, receives the thread
    count used and the model's seconds (on CUDA: launch plus the wait for its result). An output of
    another shape than its batch is refused in one line (models.check_output, on what a CUDA graph or
    a compiled model returned).

    On CUDA the batches are pipelined: batch k+1 is read (resampler, spline: CPU work) while the GPU
    runs batch k, and batch k's output is collected and overlap-added after k+1 has been queued."""
    device = torch.device(device)
    model.eval()
    autocast = resolve_precision(precision, device)
    starts = plan.starts(length)
    W, C = plan.window, src.channels
    per_batch = max(1, batch_size // C)
    chooser = ThreadChoice(threads, device, -(-len(starts) // per_batch))
    grad = contextlib.nullcontext() if autograd else torch.inference_mode()
    runner = _BatchRunner(model, device, autocast, grad, (per_batch * C, 1, W))
    acc, den = np.zeros((0, C)), np.zeros((0, 1))  # partial sums carried from the batch before
    emitted = 0
    pending = None  # (the batch in flight's windows, base and end, ticket, output factors and offsets)

    def finish(ks, base, end, ticket, back, offsets) -> Iterator[np.ndarray]:  # yield what is final
        nonlocal acc, den, emitted
        y = runner.result(ticket)
        if back is not None:  # each window back at its own level (a silent one: silent) and offset
            y = y[: len(back)] * back[:, None, None] + offsets
        out = y[: len(ks) * C].reshape(len(ks), C, W).transpose(0, 2, 1)
        num, wsum = np.zeros((end - base, C)), np.zeros((end - base, 1))
        num[: len(acc)], wsum[: len(den)] = acc, den
        for i, k in enumerate(ks):
            w = plan.weights(starts, k)[:, None]
            num[starts[k] - base : starts[k] - base + W] += w * out[i]
            wsum[starts[k] - base : starts[k] - base + W] += w
        # samples before the next window's start get nothing more from later windows
        done = starts[ks[-1] + 1] - base if ks[-1] + 1 < len(starts) else len(num)
        final = (num[:done] / np.maximum(wsum[:done], 1e-12))[: max(0, length - emitted)]
        acc, den = num[done:], wsum[done:]
        emitted += len(final)
        if stats is not None:
            stats.update(threads=chooser.chosen or chooser.fixed, thread_trials=dict(chooser.timings),
                         model_s=runner.seconds, windows=len(starts), batches=chooser.batch)
        if len(final):
            yield final.astype(np.float32)
        if progress is not None:
            progress(len(ks))

    for b0 in range(0, len(starts), per_batch):
        ks = range(b0, min(b0 + per_batch, len(starts)))
        base, end = starts[ks[0]], max(starts[k] for k in ks) + W
        x = src.read(base, end)  # zeros past the end of the signal
        wins = np.stack([x[starts[k] - base : starts[k] - base + W] for k in ks])  # (n, W, C)
        inp = wins.transpose(0, 2, 1).reshape(-1, 1, W).astype(np.float32)
        back = offsets = None
        if level_dbfs is not None:
            offsets = centre(inp, np.repeat([min(W, length - starts[k]) for k in ks], C))
            gains, back = window_gains(inp, level_dbfs)
            inp *= gains[:, None, None]
        if fixed_shapes and len(ks) < per_batch:
            inp = np.concatenate([inp, np.zeros(((per_batch - len(ks)) * C, 1, W), np.float32)])
        n = chooser.next()
        ticket = runner.launch(inp, n)
        if device.type == "cpu":  # synchronous: its time is this batch's, for the thread choice
            chooser.record(n, runner.last_seconds / len(ks))
        else:
            chooser.batch += 1
        if pending is not None:
            yield from finish(*pending)
        pending = (ks, base, end, ticket, back, offsets)
    if pending is not None:
        yield from finish(*pending)


class _BatchRunner:
    """Runs one batch of windows: on CPU synchronously; on CUDA asynchronously through pinned host
    buffers (two of each, so batch k+1's input upload and batch k's download never share one), with
    an event per batch that :meth:`result` waits on."""

    def __init__(self, model, device: torch.device, autocast, grad, shape: tuple[int, ...]):
        self.model, self.device, self.autocast, self.grad = model, device, autocast, grad
        self.seconds, self.last_seconds, self.count = 0.0, 0.0, 0
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.host_in = [torch.empty(shape, pin_memory=True) for _ in range(2)]
            self.host_out = [torch.empty(shape, pin_memory=True) for _ in range(2)]

    def _cast(self):
        return torch.autocast(self.device.type, self.autocast) if self.autocast else contextlib.nullcontext()

    def launch(self, inp: np.ndarray, threads: int):
        t0 = time.perf_counter()
        if not self.cuda:
            x = torch.from_numpy(inp)
            with num_threads(threads), self.grad, self._cast():
                y = self.model(x)
                check_output(self.model, x, y)
                y = y.float().detach().numpy()
            self.last_seconds = time.perf_counter() - t0
            self.seconds += self.last_seconds
            return y
        slot, n = self.count % 2, len(inp)
        self.count += 1
        host_in = self.host_in[slot][:n]
        host_in.numpy()[...] = inp  # free: batch count-2, its last user, has been collected
        with self.grad, self._cast():
            y = self.model(host_in.to(self.device, non_blocking=True))
            check_output(self.model, host_in, y)  # the shape of what a graph or compiled model returned
            host_out = self.host_out[slot][:n]
            host_out.copy_(y.detach().float(), non_blocking=True)  # queued before a later batch overwrites y
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))  # the model's device, not the current one
        self.seconds += time.perf_counter() - t0
        return host_out, done

    def result(self, ticket) -> np.ndarray:
        if not self.cuda:
            return ticket
        host_out, done = ticket
        t0 = time.perf_counter()
        done.synchronize()
        self.seconds += time.perf_counter() - t0
        return host_out.numpy()


# ------------------------------------------------------------------------------------- speed settings
def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32)."""
    if precision not in PRECISIONS:
        raise AfilmError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    return torch.bfloat16 if precision == "bf16" else None


class ThreadChoice:
    """Threads per batch. An int (or None: torch's current setting) is used as is. ``"auto"`` on CPU
    uses the cores that no other task is using (at least one); when that is all of them and there are
    enough batches, after batch 0 (warm-up) it times one batch at all cores and one at one thread and
    keeps the faster per window for the rest."""

    def __init__(self, threads: int | str | None, device: torch.device, n_batches: int):
        full = torch.get_num_threads()
        self.trials: list[int] = []
        if threads == "auto":
            busy = busy_elsewhere() if device.type == "cpu" and full > 1 else None
            self.fixed = free_cores(full, busy)
            # Only an idle-looking machine is double-checked, by one batch at one thread (at most ~2x
            # slower on an idle machine); trying all cores on a busy one can cost 40x on that batch.
            if device.type == "cpu" and full > 1 and self.fixed == full and n_batches >= 4:
                self.trials = [full, 1]
        elif threads is None or isinstance(threads, int) and threads >= 1:
            self.fixed = threads or full
        else:
            raise AfilmError(f"threads must be a positive integer or 'auto', got {threads!r}")
        self.batch, self.timings = 0, {}
        self.chosen = None if self.trials else self.fixed

    def next(self) -> int:
        if self.chosen is not None:
            return self.chosen
        k = self.batch - 1  # batch 0 is the warm-up
        return self.trials[k] if 0 <= k < len(self.trials) else self.fixed

    def record(self, threads: int, seconds_per_window: float) -> None:
        if self.chosen is None and self.batch >= 1:
            self.timings[threads] = seconds_per_window
            if len(self.timings) == len(self.trials):
                self.chosen = min(self.timings, key=self.timings.get)
        self.batch += 1


def compile_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torch.compile for inference; CUDA graphs ("reduce-overhead") on CUDA. Needs fixed batch shapes
    (run_windows pads them when ``fixed_shapes``)."""
    import torch._dynamo

    # A graph break inside the FiLM layers makes dynamo compile each layer's forward on its own, once
    # per layer shape, and nine shapes exceed its default limit of 8, after which the rest run eager:
    # seen on an H200 when the Triton ops broke AFiLM's graph; TFiLM's LSTMs break it the same way
    # (23 breaks by torch._dynamo.explain).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(model, mode=mode, dynamic=False)
