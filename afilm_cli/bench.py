"""`afilm bench`: kernels, model inference, training step and data preparation speed, as rows.

Each section returns a list of row dicts with the same keys::

    section, name, variant, unit, median, min, max, ratio, baseline, settings [, error]

``median/min/max`` are over ``repeats`` timed runs after a warm-up run that is not counted. Variants that
are compared are timed side by side in the same run, interleaved run by run (so a load change on a
shared machine hits all of them alike), and ``ratio`` is each variant's speed over its ``baseline``
variant's (> 1: faster). Rates (``x realtime``, ``patches/s``, ``audio s/s``) are higher-is-better;
kernel rows are in ms (their ratio is eager time / this time).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afilm_cli.interrupts import RaisingCtrlC

SR, R = 16000, 4  # model rate and upsampling factor of every model benchmark
RECIPE = {"r": R, "sr": SR, "degrade": "decimate", "patch": 8192}
LEVEL_DBFS = -24.4  # afilm_speech_r4's training level: each window is matched and centred as in real use
CPU_PRESETS = "*_tiny,*_small"
CUDA_PRESETS = "*_tiny,*_small,afilm,tfilm"
# Ctrl-C during run_bench: raised where it lands and again at the next CTRL_C.check() of a loop, for
# where it landed in a weakref callback and was dropped (h5py's, in bench_loader: afilm_cli/interrupts.py)
CTRL_C = RaisingCtrlC()


# ------------------------------------------------------------------------------------------- timing
def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each callable: ``warmup`` untimed rounds, then ``repeats`` rounds that run every
    callable once in turn. A failing callable is dropped and its error recorded under ``"error"``."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    errors: dict[str, str] = {}
    for rep in range(warmup + repeats):
        for key, fn in fns.items():
            if key in errors:
                continue
            CTRL_C.check()
            try:
                _sync()
                t0 = time.perf_counter()
                fn()
                _sync()
            except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a compiler: report it
                CTRL_C.check()  # a Ctrl-C some library turned into an error: a stop, not a failed variant
                errors[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                continue
            if rep >= warmup:
                times[key].append(time.perf_counter() - t0)
    CTRL_C.check()
    return {k: (v if k not in errors else errors[k]) for k, v in times.items()}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def rate_rows(section: str, name: str, results: dict[str, Any], work: float, unit: str, baseline: str,
              settings: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of rates ``work / seconds`` (median, min, max) with ratios to ``baseline``'s median."""
    rows = []
    base = results.get(baseline)
    base_rate = work / statistics.median(base) if isinstance(base, list) and base else None
    for variant, times in results.items():
        row = dict(section=section, name=name, variant=variant, unit=unit, median=None, min=None, max=None,
                   ratio=None, baseline=baseline, settings=settings.get(variant, {}))
        if isinstance(times, str):
            row["error"] = times
        elif times:
            rate = work / statistics.median(times)
            row.update(median=rate, min=work / max(times), max=work / min(times),
                       ratio=rate / base_rate if base_rate else None)
        rows.append(row)
    return rows


@contextlib.contextmanager
def cudnn_autotune(on: bool):
    """torch.backends.cudnn.benchmark for the duration: cuDNN times its conv algorithms per shape."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def kernel_backend(name: str | None):
    """AFILM_KERNEL=torch|triton for the duration (kernels/__init__.py reads it at each call)."""
    before = os.environ.get("AFILM_KERNEL")
    if name:
        os.environ["AFILM_KERNEL"] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("AFILM_KERNEL", None)
        else:
            os.environ["AFILM_KERNEL"] = before


def requested_kernel() -> str:
    """AFILM_KERNEL's choice, checked ('torch' or 'triton'; another value raises KernelChoiceError): the
    kernel path of the rows whose variant names none (on a CPU the model and training rows; the
    report's settings say it, and each model row's)."""
    import kernels

    return kernels.requested()


def select_models(pattern: str | None, device: torch.device, quick: bool) -> list[str]:
    """Registered names matching comma-separated shell patterns; by default the presets that run in
    reasonable time on ``device`` (tiny and small on CPU, plus the paper sizes on CUDA)."""
    from afilm_cli.errors import AfilmError
    from afilm_cli.registry import MODELS

    default = ("*_tiny" if quick else CPU_PRESETS) if device.type == "cpu" else (
        "*_tiny,afilm" if quick else CUDA_PRESETS)
    names: list[str] = []
    unmatched: list[str] = []  # each pattern must match: a mistyped name was dropped without a word
    for pat in (default if pattern is None else pattern).split(","):
        found = MODELS.names(pat.strip())
        names += [n for n in found if n not in names]
        if not found and pat.strip():
            unmatched.append(pat.strip())
    if not names or unmatched:
        which = "" if not names else f": {', '.join(unmatched)}"
        raise AfilmError(f"--models {pattern!r}{which} matches no model; known: {', '.join(MODELS.names())}")
    return names


def synthetic_speech(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Speech-like test signal: a gliding harmonic series under a syllable-rate envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30) if k * 180 < sr / 2)
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3.1 * t)) ** 2
    return (0.1 * envelope * voiced + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


# -------------------------------------------------------------------------------------------- model
def model_variants(device: torch.device, cores: int) -> tuple[str, dict[str, dict[str, Any]]]:
    """(baseline, {variant: settings}) compared per preset. CPU: autograd on vs inference_mode (both with
    the default thread choice), and fixed thread counts against that choice; CUDA: torch ops vs Triton
    kernels, fp32 vs bf16, eager vs a captured CUDA graph (the default) vs torch.compile."""
    if device.type == "cpu":
        v = {"eager, autograd on": dict(autograd=True, threads="auto", precision="fp32"),
             "inference_mode (default)": dict(threads="auto", precision="fp32"),
             f"inference_mode, {cores} threads": dict(threads=cores, precision="fp32"),
             "inference_mode, 1 thread": dict(threads=1, precision="fp32")}
        if cores == 1:  # one thread allowed (OMP_NUM_THREADS=1, one core): the same row twice
            del v["inference_mode, 1 threads"]
        return "eager, autograd on", v
    v = {"torch ops fp32, eager": dict(kernel="torch", precision="fp32", graphs="off"),
         "torch ops fp32, CUDA graph (default)": dict(kernel="torch", precision="fp32"),
         "torch ops fp32, CUDA graph, cudnn.benchmark": dict(kernel="torch", precision="fp32",
                                                            cudnn_benchmark=True),
         "triton fp32, eager": dict(kernel="triton", precision="fp32", graphs="off"),
         "triton fp32, CUDA graph": dict(kernel="triton", precision="fp32"),
         "torch ops bf16, CUDA graph": dict(kernel="torch", precision="bf16"),
         "triton bf16, CUDA graph": dict(kernel="triton", precision="bf16"),
         "compile fp32 (inductor + CUDA graphs)": dict(kernel="torch", precision="fp32", compile=True)}
    return "torch ops fp32, eager", v


def bench_model(names: Sequence[str], device: torch.device, *, quick: bool = False,
                seconds: float | None = None, repeats: int | None = None, batch_size: int = 16,
                window: int = 8192, sweep: bool | None = None,
                on_rows: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Real-time factor (seconds of 16 kHz output per wall second) of the real upsampling path:
    4 kHz input -> polyphase resampler -> spline -> model windows (overlap-add), per preset and variant.
    ``sweep`` (default: not quick) adds batch-size and window rows for the first preset. ``on_rows``
    gets the rows so far after each preset."""
    from afilm_cli import infer
    from afilm_cli.models import create_model

    seconds = seconds or (3.0 if quick else 60.0 if device.type == "cuda" else 12.0)
    repeats = repeats or (2 if quick else 3)
    lr = synthetic_speech(seconds, SR // R)
    cores = torch.get_num_threads()
    baseline, variants = model_variants(device, cores)
    kernel = requested_kernel()
    variants = {v: {"kernel": kernel, **s} for v, s in variants.items()}  # the row says which path ran
    rows: list[dict[str, Any]] = []
    for name in names:
        torch.manual_seed(0)
        model = create_model(name).to(device).eval()
        loaded = infer.Loaded(model, dict(RECIPE), Path(f"<{name}>"),
                              {"model_name": name, "input_level_dbfs": LEVEL_DBFS})

        def run(loaded=loaded, batch=batch_size, win=window, kernel=None, cudnn_benchmark=False, **speed):
            with kernel_backend(kernel), cudnn_autotune(cudnn_benchmark):
                spline, length = infer.real_pipeline(infer.ArraySource(lr), SR // R, loaded)
                plan = infer.window_plan_for(loaded, length, win)
                for _ in infer.model_windows(loaded, spline, length, plan, batch_size=batch, device=device,
                                             **speed):
                    CTRL_C.check()

        fns, stats, chosen = {}, {}, {}
        for variant, s in variants.items():
            s = dict(s)
            s["stats"] = stats.setdefault(variant, {})  # what "auto" threads picked, whether a graph ran
            fns[variant] = _noting_threads(lambda s=s: run(**s), s["stats"], chosen.setdefault(variant, []))
        results = interleaved(fns, repeats)
        settings = {v: {**s, "batch_size": batch_size, "window": window, "clip_s": seconds}
                    for v, s in variants.items()}
        for v, st in stats.items():
            if variants[v].get("threads") == "auto":
                settings[v]["threads_chosen"] = _threads_chosen(chosen[v][-repeats:])  # timed runs only
            if "cuda_graph" in st:  # False: the capture failed and the variant ran eager
                settings[v]["cuda_graph"] = st["cuda_graph"]
        preset_rows = rate_rows("model", name, results, seconds, "x realtime", baseline, settings)
        mark_thread_mismatch(preset_rows)
        rows += preset_rows
        if on_rows:  # before the sweep too: a run stopped during it keeps the preset's rows
            on_rows(list(rows))
        if (not quick if sweep is None else sweep) and name == names[0]:
            rows += _sweep(name, run, seconds, repeats, batch_size, window, device, kernel)
        del model, loaded
        if on_rows:
            on_rows(list(rows))
    return rows


def _noting_threads(fn: Callable[[], None], stats: dict, seen: list) -> Callable[[], None]:
    """``fn`` that appends the thread count each call ran with to ``seen`` ("auto" picks anew per run)."""
    def run():
        fn()
        seen.append(stats.get("threads"))
    return run


def _threads_run(settings: dict[str, Any]) -> str | None:
    """The thread count(s) a row's timed runs ran with: the pick of "auto", else the fixed count."""
    chosen = settings.get("threads_chosen", settings.get("threads"))
    return None if chosen in (None, "auto") else str(chosen)


def mark_thread_mismatch(rows: list[dict[str, Any]]) -> None:
    """Flag (``threads_differ: True``) each row whose ratio compares runs on another thread count than
    its baseline's: "auto" picks per run from the machine's load, so a ratio such as inference_mode
    over autograd-on eager could be 2 threads over 1, where it reads as the gain of inference_mode."""
    base = next((r for r in rows if r["variant"] == r["baseline"]), None)
    ran = _threads_run(base["settings"]) if base else None
    for r in rows:
        mine = _threads_run(r["settings"])
        if r is not base and r.get("ratio") is not None and None not in (ran, mine) and mine != ran:
            r["threads_differ"] = True


def _threads_chosen(seen: list) -> int | str | None:
    """One count where every timed run of an "auto" variant took the same; otherwise each run's, in
    order (e.g. "2,2,1"), so that a row whose runs differed in threads says so."""
    seen = [t for t in seen if t is not None]
    if not seen:
        return None
    return seen[0] if len(set(seen)) == 1 else ",".join(map(str, seen))


def _sweep(name, run, seconds, repeats, batch_size, window, device, kernel) -> list[dict[str, Any]]:
    """Batch size and window length at the default settings of the device. A longer window changes
    AFiLM's output (its attention spans the window), so the default stays the training patch."""
    base = f"batch {batch_size}, window {window}"
    combos = {base: (batch_size, window)}
    for b in (1, 4, 32):
        combos[f"batch {b}, window {window}"] = (b, window)
    for w in (2 * window, 4 * window):
        b = max(1, batch_size * window // w)  # the same samples per batch
        combos[f"batch {b}, window {w}"] = (b, w)
    fns = {k: (lambda b=b, w=w: run(batch=b, win=w)) for k, (b, w) in combos.items()}
    settings = {k: {"batch_size": b, "window": w, "clip_s": seconds, "kernel": kernel}
                for k, (b, w) in combos.items()}
    return rate_rows("model", f"{name} (settings)", interleaved(fns, repeats), seconds, "x realtime", base,
                     settings)


# -------------------------------------------------------------------------------------------- train
def bench_train(names: Sequence[str], device: torch.device, *, quick: bool = False, batch: int | None = None,
                patch: int = 8192, repeats: int | None = None,
                on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
                skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Training step throughput (patches/s): forward, MSE, backward, Adam(3e-4) on synthetic patches,
    as ``afilm train`` does per step (data loading excluded: :func:`bench_loader` times it after the
    presets). CUDA compares torch ops, Triton and bf16. ``on_rows`` gets the rows so far after each preset;
    ``skipped`` the presets without parameters (nothing to train)."""
    batch = batch or (4 if quick else 16)
    repeats = repeats or (2 if quick else 3)
    if device.type == "cpu":  # afilm_cli/models/conv.py: the input gradient as a forward convolution
        variants = {"fp32, PyTorch's conv backward": dict(conv_grad="aten"),
                    "fp32, conv input grad as a conv (default)": dict(conv_grad="conv")}
    else:
        variants = {"torch ops fp32": dict(kernel="torch", bf16=False),
                    "torch ops fp32, cudnn.benchmark": dict(kernel="torch", bf16=False, cudnn_benchmark=True),
                    "triton fp32": dict(kernel="triton", bf16=False),
                    "triton bf16": dict(kernel="triton", bf16=True)}
    baseline = next(iter(variants))
    rows: list[dict[str, Any]] = []
    from afilm_cli.models import count_parameters, create_model

    for name in names:
        torch.manual_seed(0)
        model = create_model(name).to(device).train()
        if count_parameters(model) == 0:
            if skipped is not None:
                skipped.append(name)
            continue  # nothing to train (spline): said in the section's note
        opt = torch.optim.Adam(model.parameters(), lr=3e-4)
        x = torch.randn(batch, 1, patch, device=device) * 0.1
        y = x + 0.01 * torch.randn_like(x)

        fns = {v: train_step(model, opt, x, y, device, **s) for v, s in variants.items()}
        settings = {v: {**s, "batch": batch, "patch": patch, "optimizer": "Adam 3e-4", "loss": "MSE"}
                    for v, s in variants.items()}
        rows += rate_rows("train", name, interleaved(fns, repeats), batch, "patches/s", baseline, settings)
        del model, opt
        if on_rows:
            on_rows(list(rows))
    rows += bench_loader(quick=quick, batch=batch, patch=patch, repeats=repeats)
    if on_rows:
        on_rows(list(rows))
    return rows


def bench_loader(*, quick: bool = False, batch: int = 16, patch: int = 8192, repeats: int = 3
                 ) -> list[dict[str, Any]]:
    """What feeds those steps: shuffled batches from an HDF5 patch file (``afilm prepare``'s layout, in
    the page cache), read from disk per batch vs from memory (``afilm train`` loads files that fit)."""
    from afilm_cli.data.h5 import PatchFile, PatchWriter
    from afilm_cli.data.loader import PatchLoader

    n = 1024  # 32 MiB per dataset: fewer patches sit in so few chunks that disk reads look ~20x faster
    with tempfile.TemporaryDirectory(prefix="afilm-bench-") as tmp:
        path = Path(tmp) / "patches.h5"
        rng = np.random.default_rng(0)
        with PatchWriter(path, patch) as w:
            for _ in range(n // 64):
                CTRL_C.check()
                x = rng.standard_normal((64, patch), np.float32)
                w.append(x, x)
        lazy, loaded = PatchFile(path), PatchFile(path)
        loaded.load()
        try:
            def epoch(pf):
                def run():
                    for _ in PatchLoader(pf, batch, seed=0).batches(0):
                        CTRL_C.check()  # a Ctrl-C dropped in h5py's weakref callbacks
                return run

            fns = {"from disk per batch": epoch(lazy), "in memory": epoch(loaded)}
            settings = {v: {"batch": batch, "patch": patch, "patches": n} for v in fns}
            return rate_rows("train", "data loading (HDF5, shuffled)", interleaved(fns, repeats), n,
                             "patches/s", "from disk per batch", settings)
        finally:
            lazy.close(), loaded.close()


def train_step(model, opt, x, y, device: torch.device, kernel: str | None = None, bf16: bool = False,
               cudnn_benchmark: bool = False, conv_grad: str | None = None) -> Callable[[], None]:
    """One optimisation step on (x, y) as a callable (also used by benchmarks/test_bench_model.py).
    ``conv_grad``: the CPU convolution backward (afilm_cli/models/conv.py)."""
    from afilm_cli.models.conv import conv_backward

    def step() -> None:
        with cudnn_autotune(cudnn_benchmark), conv_backward(conv_grad):
            with kernel_backend(kernel), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = torch.mean((model(x).float() - y) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return step


# ------------------------------------------------------------------------------------------ prepare
def bench_prepare(*, quick: bool = False, seconds: float | None = None, repeats: int | None = None,
                  sr_in: int = 48000) -> list[dict[str, Any]]:
    """Seconds of audio prepared per second by the per-file recipe (read a 48 kHz wav, resample to
    16 kHz, degrade, spline back, cut 8192-sample patches every 4096): decimate vs subsample."""
    import soundfile as sf

    from afilm_cli.data.recipe import Recipe, extract_patches, file_signals

    seconds = seconds or (10.0 if quick else 60.0)
    repeats = repeats or (2 if quick else 3)
    with tempfile.TemporaryDirectory(prefix="afilm-bench-") as tmp:
        path = Path(tmp) / "speech48k.wav"
        sf.write(str(path), synthetic_speech(seconds, sr_in), sr_in, subtype="PCM_16")
        variants = {m: Recipe(r=R, degrade=m).validate() for m in ("decimate", "subsample")}

        def one(recipe):
            [(up, hr)] = file_signals(path, recipe)
            extract_patches(up, hr, recipe, np.random.default_rng(0))

        fns = {m: (lambda rec=rec: one(rec)) for m, rec in variants.items()}
        settings = {m: {**rec.attrs(), "file_s": seconds, "sr_in": sr_in} for m, rec in variants.items()}
        return rate_rows("prepare", f"recipe r={R}, one {sr_in // 1000} kHz file", interleaved(fns, repeats),
                         seconds, "audio s/s", "decimate", settings)


# ------------------------------------------------------------------------------------------ kernels
def select_layers(pattern: str | None) -> list[str] | None:
    """``--layers D1,U4``: the kernel suite's layer shapes by name (None: the default set)."""
    from afilm_cli.errors import AfilmError
    from kernels.benchmark import LAYERS

    if pattern is None:
        return None
    known = [name for name, *_ in LAYERS]
    names = [p.strip() for p in pattern.split(",") if p.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise AfilmError(f"--layers {pattern!r}: unknown layer(s) {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(known)}")
    return names


def bench_kernels(device: torch.device, *, quick: bool = False, layers: Sequence[str] | None = None,
                  on_rows: Callable[[list[dict[str, Any]]], None] | None = None
                  ) -> tuple[list[dict[str, Any]], str | None]:
    """The kernel suite (kernels/benchmark.py) as rows; on CPU the reference only at batch 2, without
    torch.compile (one compile per op and mode takes minutes there). On CUDA every figure is timed
    twice: GPU time under CUDA graphs and launch time (see ``_kernel_rows``). ``on_rows`` gets the rows
    so far after each layer. Returns (rows, note)."""
    from kernels.benchmark import launch_time_ms, run_kernel_benchmarks, triton_unavailable_reason

    cpu = device.type == "cpu"
    # CPU: a perf_counter loop whose counts are said in each row (the report's repeats/warmup are the
    # other sections'); CUDA: triton.testing's timers, which run for a time, not a count (KERNEL_TIMERS)
    timing = {"repeats": 3 if quick else 10, "warmup": 1 if quick else 3} if cpu else {}
    timer = (lambda fn: launch_time_ms(fn, device, **timing)) if cpu else None
    raw = run_kernel_benchmarks(batch=2 if cpu else 16, quick=quick, device=device, layers=layers,
                                compile=False if cpu else None,
                                modes=("fwd", "fwd+bwd") if cpu and not quick else ("fwd", "bwd", "fwd+bwd"),
                                launch_timer=timer,
                                on_layer=on_rows and (lambda raw: on_rows(_kernel_rows(raw, timing))))
    rows = _kernel_rows(raw, timing)
    note = triton_unavailable_reason(device)
    if cpu:
        note = (note or "") + "; torch.compile skipped on CPU"
    elif any(r["timer"] == "cuda graph" for r in rows):
        note = "; ".join(n for n in (note, KERNEL_TIMERS) if n)
    return rows, note


KERNEL_TIMERS = ("median/min/max: GPU time per call, replayed in a CUDA graph (triton.testing."
                 "do_bench_cudagraph); launch_*: triton.testing.do_bench per call, what a Python caller "
                 "pays (CPU overhead included); GB/s and % of peak from the GPU time")


def _kernel_rows(raw: list[dict[str, Any]], timing: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Report rows of the kernel suite. Where CUDA graphs were timed (``timer`` "cuda graph"),
    median/min/max/ratio are the GPU time and eager GPU time / this one (None, with ``graph_error``,
    where the capture failed); elsewhere (``timer`` "launch") the launch time. ``launch_median``,
    ``launch_min``, ``launch_max`` and ``launch_ratio`` always hold the launch timing. ``timing``
    (CPU: repeats, warmup) goes into each row's settings."""
    rows = []
    for r in raw:
        detail = {k: r[k] for k in ("batch", "C", "T", "block", "dtype", "bytes", "copies", "gbps",
                                    "gbps_timer", "pct_peak") if k in r} | dict(timing or {})
        graphed = r.get("graph_ms_median") is not None or "graph_error" in r
        p, ratio = ("graph_ms", "x_eager") if graphed else ("launch_ms", "x_eager_launch")
        row = dict(section="kernels", name=f"{r['layer']} {r['op']} {r['mode']}", variant=r["provider"],
                   unit="ms", median=r.get(f"{p}_median"), min=r.get(f"{p}_min"), max=r.get(f"{p}_max"),
                   ratio=r.get(ratio), baseline="eager", settings=detail,
                   timer="cuda graph" if graphed else "launch", launch_median=r.get("launch_ms_median"),
                   launch_min=r.get("launch_ms_min"), launch_max=r.get("launch_ms_max"),
                   launch_ratio=r.get("x_eager_launch"))
        row.update({k: r[k] for k in ("error", "graph_error") if k in r})
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ the run
SECTIONS = ("kernels", "model", "train", "prepare")


def run_bench(sections: Sequence[str], device: torch.device, *, quick: bool = False,
              models: str | None = None, layers: str | None = None,
              progress: Callable[[str], None] | None = None,
              on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every requested section; the report dict written by ``--json`` (hardware, versions, settings,
    the system load before and after: on a shared machine it explains the spread). ``on_update`` gets
    the report so far (``"complete": False``) after each section, kernel layer and preset, so a long
    run that is stopped keeps what it measured."""
    import afilm_cli.models.layers  # noqa: F401 - says in one line where another 'kernels' package is found
    from afilm_cli.errors import AfilmError
    from afilm_cli.sysinfo import system_info

    kernel = requested_kernel()  # a bad AFILM_KERNEL: one line up front, as the model commands say it

    for option, value, used_by in (("--models", models, ("model", "train")),
                                   ("--layers", layers, ("kernels",))):
        # accepted and ignored before, unknown names too; '' (an unset variable) is no default either
        if value is not None and not set(used_by) & set(sections):
            raise AfilmError(f"{option} applies to the {' and '.join(used_by)} section(s), which this run "
                             "does not measure")
    names = select_models(models, device, quick) if {"model", "train"} & set(sections) else []
    shapes = select_layers(layers) if "kernels" in sections else None
    report: dict[str, Any] = {
        "afilm_bench": 1, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "system": system_info(), "device": str(device),
        "settings": {"sections": list(sections), "quick": quick, "models": names, "sr": SR, "r": R,
                     "kernel": kernel,  # AFILM_KERNEL's; rows that name their own "kernel" ran that one
                     # model/train/prepare: timed runs after one untimed warm-up (the kernel rows say
                     # their own on CPU; on CUDA triton.testing's timers run for a time, see notes)
                     "repeats": 2 if quick else 3, "warmup": 1},
        "load_avg_start": _loadavg(), "notes": {}, "rows": [], "complete": False,
    }

    def update(extra_rows: list[dict[str, Any]] = ()) -> None:
        CTRL_C.check()
        if on_update:
            on_update({**report, "rows": report["rows"] + list(extra_rows)})

    update()  # written once before the work: an output that cannot be written is said now, not at the end
    with CTRL_C:  # every Ctrl-C stops the run, one that lands in a weakref callback too
        for section in SECTIONS:
            if section not in sections:
                continue
            if progress:
                progress(section)
            t0 = time.perf_counter()
            if section == "kernels":
                rows, note = bench_kernels(device, quick=quick, layers=shapes, on_rows=update)
                report["notes"]["kernels"] = note
            elif section == "model":
                rows = bench_model(names, device, quick=quick, on_rows=update)
            elif section == "train":
                untrained: list[str] = []
                rows = bench_train(names, device, quick=quick, on_rows=update, skipped=untrained)
                if untrained:  # it had been left out of the table without a word
                    report["notes"]["train"] = (f"{', '.join(untrained)}: no parameters, nothing to train "
                                                "(not timed)")
            else:
                rows = bench_prepare(quick=quick)
            report["rows"] += rows
            report.setdefault("section_seconds", {})[section] = round(time.perf_counter() - t0, 1)
            update()
    report["load_avg_end"] = _loadavg()
    report["complete"] = True
    return report


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
