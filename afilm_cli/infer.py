"""Upsampling real files: streaming signal stages and windowed overlap-add inference.

The pipeline is a chain of *stages*, each a signal that can be read over any sample range
``read(start, stop)`` (zeros outside ``[0, length)``). A stage computes its range from a slightly wider
range of the stage below (a margin that covers its filter), so reading a long file block by block
gives the same samples as processing it whole, in memory that does not grow with the file:

- real low-rate input:  file -> Resampled(to sr/r) -> Splined(r) -> model windows
- ``--simulate``:       file -> Resampled(to sr) = HR -> Degraded(recipe) = LR -> Splined(r) -> model

Real low-rate input is already band-limited (its recorder's anti-alias filter, and the polyphase
resampler's own low-pass when its rate is above sr/r), so the recipe's degradation is *not* applied
again; ``--simulate`` applies the checkpoint's recipe (decimate or subsample) to make its LR version.

The model runs on windows of ``window`` samples (a multiple of ``model.length_multiple``). Each window
drops ``context`` samples at both ends (where zero padding of the convolutions and the window-limited
attention differ most from a longer pass) and cross-fades with its neighbour over ``fade`` samples
(sin^2 / cos^2 ramps, which sum to exactly 1). The first and last windows keep their outer edges.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from scipy import interpolate, signal

from afilm_cli.atomic import atomic_path
from afilm_cli.audio import DEGRADE_METHODS
from afilm_cli.errors import AfilmError

SPLINE_MARGIN = 64  # LR samples: a cubic spline's dependence decays ~0.27x per knot, 0.27**64 ~ 1e-37
DECIMATE_MARGIN = 512  # LR samples: the order-8 Chebyshev IIR has decayed below 1e-15 well before this
BLOCK = 1 << 16  # samples per block when copying a stage to a file


# --------------------------------------------------------------------------------------------- stages
class Stage:
    """A signal of ``length`` frames x ``channels``, readable over any range as float64 (n, C)."""

    length: int
    channels: int

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.zeros((max(stop - start, 0), self.channels))
        a, b = max(start, 0), min(stop, self.length)
        if a < b:
            out[a - start : b - start] = self._read(a, b)
        return out

    def _read(self, start: int, stop: int) -> np.ndarray:  # 0 <= start < stop <= length
        raise NotImplementedError


class ArraySource(Stage):
    def __init__(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float64)
        self.x = x[:, None] if x.ndim == 1 else x
        self.length, self.channels = self.x.shape

    def _read(self, start, stop):
        return self.x[start:stop]


class FileSource(Stage):
    """Reads blocks of a sound file by seeking, so only the requested range is ever in memory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise AfilmError(f"{self.path}: no such file" if not self.path.is_dir()
                             else f"{self.path}: is a folder, expected an audio file")
        try:
            self.f = sf.SoundFile(str(self.path))
        except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AfilmError(f"{self.path}: cannot read audio ({reason})") from None
        self.sr, self.channels, self.length = self.f.samplerate, self.f.channels, self.f.frames
        self.subtype = self.f.subtype
        if self.length <= 0:
            self.f.close()
            raise AfilmError(f"{self.path}: empty audio file")
        self._whole: np.ndarray | None = None  # only for formats libsndfile cannot seek in

    def _read(self, start, stop):
        if not self.f.seekable():
            if self._whole is None:
                self._whole = self._check(self.f.read(dtype="float64", always_2d=True), self.length)
            return self._whole[start:stop]
        self.f.seek(start)
        return self._check(self.f.read(stop - start, dtype="float64", always_2d=True), stop - start)

    def _check(self, x: np.ndarray, n: int) -> np.ndarray:
        if len(x) != n:
            raise AfilmError(f"{self.path}: file is shorter than its header says (truncated?)")
        if not np.isfinite(x).all():
            raise AfilmError(f"{self.path}: contains NaN or Inf samples")
        return x

    def close(self) -> None:
        self.f.close()


class Resampled(Stage):
    """scipy.signal.resample_poly from ``sr_in`` to ``sr_out`` (rationals allowed), computed on
    blocks: a block starting at a multiple of ``down`` input samples with the FIR's half length as
    margin gives exactly the samples of a whole-signal resample_poly."""

    def __init__(self, src: Stage, sr_in: int | Fraction, sr_out: int | Fraction, length: int | None = None):
        ratio = Fraction(sr_out) / Fraction(sr_in)
        self.src, self.channels = src, src.channels
        self.up, self.down = ratio.numerator, ratio.denominator
        self.half_len = 10 * max(self.up, self.down)  # resample_poly's default filter half length
        full = -(-src.length * self.up // self.down)
        self.length = full if length is None else length

    def _read(self, start, stop):
        if self.up == self.down:
            return self.src.read(start, stop)
        margin = self.half_len // self.up + 2
        s = max(0, (start * self.down // self.up - margin) // self.down * self.down)
        e = min(self.src.length, -(-stop * self.down // self.up) + margin)
        y = signal.resample_poly(self.src.read(s, e), self.up, self.down, axis=0)
        off = s * self.up // self.down
        return _fit(y[start - off : stop - off], stop - start)


class Degraded(Stage):
    """The training recipe's low-rate signal (REFERENCE.md section 1 step 3), ceil(N / r) samples."""

    def __init__(self, src: Stage, r: int, method: str):
        if method not in DEGRADE_METHODS:
            raise AfilmError(f"unknown degradation {method!r}; known: {', '.join(DEGRADE_METHODS)}")
        self.src, self.r, self.method, self.channels = src, r, method, src.channels
        self.length = -(-src.length // r)
        if method == "decimate" and src.length <= 27:  # filtfilt's padding needs more samples
            raise AfilmError(f"signal of {src.length} samples is too short to decimate")

    def _read(self, start, stop):
        r = self.r
        if self.method == "subsample" or r == 1:
            return self.src.read(start * r, (stop - 1) * r + 1)[::r]
        s = max(0, start - DECIMATE_MARGIN) * r
        e = min(self.src.length, (stop + DECIMATE_MARGIN) * r)
        y = signal.decimate(self.src.read(s, e), r, axis=0)
        return y[start - s // r : stop - s // r]


class Splined(Stage):
    """The reference's cubic spline (LR sample k at HR index k*r, splrep k=3 s=0), evaluated at HR
    indices 0..length-1 on blocks with SPLINE_MARGIN knots of context on each side."""

    def __init__(self, src: Stage, r: int, length: int | None = None):
        self.src, self.r, self.channels = src, r, src.channels
        self.length = src.length * r if length is None else length
        if src.length < 4:
            raise AfilmError(f"signal of {src.length} low-rate samples is too short for a cubic spline")

    def _read(self, start, stop):
        r = self.r
        l0 = max(0, start // r - SPLINE_MARGIN)
        l1 = min(self.src.length, (stop - 1) // r + 2 + SPLINE_MARGIN)
        if l1 - l0 < 4:  # near the end of a short signal: widen to the left
            l0 = max(0, l1 - 4)
        lr = self.src.read(l0, l1)
        knots = np.arange(l0, l1) * r
        where = np.arange(start, stop)
        return np.stack([interpolate.splev(where, interpolate.splrep(knots, lr[:, c]))
                         for c in range(self.channels)], axis=1)


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    return y if len(y) == n else np.concatenate([y, np.zeros((n - len(y), y.shape[1]))])[:n]


# -------------------------------------------------------------------------------------------- windows
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
    """Round ``window`` up to the model's length multiple (shrunk to the signal when it is shorter);
    context and fade default to window/16 each, and the hop is kept a multiple of ``multiple`` so
    every window sees the same block grid as a whole-signal pass."""
    multiple = max(int(multiple), 1)
    window = -(-max(window, 1) // multiple) * multiple
    window = min(window, max(multiple, -(-length // multiple) * multiple))
    context = window // 16 if context is None else context
    fade = window // 16 if fade is None else fade
    hop = window - 2 * context - fade
    if hop < 1:
        raise AfilmError(f"window {window} leaves no hop after 2 x context {context} and fade {fade}")
    if hop >= multiple:
        fade += hop % multiple  # widen the fade to bring the hop down to a multiple
    return WindowPlan(window, context, fade, multiple)


def run_windows(model: torch.nn.Module, src: Stage, length: int, plan: WindowPlan, *, batch_size: int = 16,
                device: str | torch.device = "cpu", progress: Callable[[int], None] | None = None
                ) -> Iterator[np.ndarray]:
    """Model over ``src`` (the spline signal) in cross-faded windows; yields consecutive blocks of the
    output, (n, C) float32, ``length`` samples in all. Channels are separate batch items.

    Overlap-add divides by the summed weights, so the output is exact wherever every window that
    contributes agrees (a local model whose receptive field fits in ``context``)."""
    model.eval()
    starts = plan.starts(length)
    per_batch = max(1, batch_size // src.channels)
    W, C = plan.window, src.channels
    acc, den = np.zeros((0, C)), np.zeros((0, 1))  # partial sums carried from the batch before
    emitted = 0
    for b0 in range(0, len(starts), per_batch):
        ks = range(b0, min(b0 + per_batch, len(starts)))
        base, end = starts[ks[0]], max(starts[k] for k in ks) + W
        x = src.read(base, end)  # zeros past the end of the signal
        wins = np.stack([x[starts[k] - base : starts[k] - base + W] for k in ks])  # (n, W, C)
        inp = torch.from_numpy(wins.transpose(0, 2, 1).reshape(-1, 1, W).astype(np.float32)).to(device)
        with torch.inference_mode():
            out = model(inp).float().cpu().numpy().reshape(len(ks), C, W).transpose(0, 2, 1)
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
        if len(final):
            yield final.astype(np.float32)
        if progress is not None:
            progress(len(ks))


# ----------------------------------------------------------------------------------------- model I/O
def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AfilmError(f"--device {device}: no CUDA device is available (use --device cpu)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise AfilmError(f"unknown device {device!r} (use auto, cpu or cuda)") from None


def default_checkpoint() -> Path:
    """The newest runs/*/best.pt under the current folder, else the bundled pretrained model."""
    found = sorted(Path("runs").glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1]
    import importlib.util

    if importlib.util.find_spec("afilm_cli.pretrained") is not None:
        from afilm_cli import pretrained

        try:
            path = pretrained.bundled_checkpoint_path()
        except AfilmError:
            if getattr(pretrained, "DEFAULT", "unknown"):  # a default exists but is damaged: say so
                raise
            path = None  # no bundled model yet
        if path is not None and Path(path).is_file():
            return Path(path)
    raise AfilmError("no checkpoint found (no runs/*/best.pt here and no bundled model): "
                     "pass --ckpt PATH or train one with 'afilm train'")


@dataclass
class Loaded:
    model: torch.nn.Module
    recipe: dict[str, Any]
    path: Path
    ckpt: dict[str, Any]

    @property
    def r(self) -> int:
        return int(self.recipe["r"])

    @property
    def sr(self) -> int:
        return int(self.recipe["sr"])

    @property
    def low_rate(self) -> Fraction:
        return Fraction(self.sr, self.r)


def load_model(path: str | os.PathLike | None, device: str | torch.device = "cpu") -> Loaded:
    """Load a checkpoint (default: :func:`default_checkpoint`) and rebuild its model in eval mode."""
    from afilm_cli.checkpoint import load_checkpoint, model_from_checkpoint

    path = default_checkpoint() if path is None else Path(path)
    ckpt = load_checkpoint(path)
    recipe = dict(ckpt["recipe"])
    if not isinstance(recipe.get("r"), int) or not isinstance(recipe.get("sr"), int) or recipe["r"] < 1:
        raise AfilmError(f"{path}: checkpoint recipe lacks integer r and sr ({recipe})")
    if recipe.get("degrade") not in DEGRADE_METHODS:
        raise AfilmError(f"{path}: checkpoint recipe has unknown degradation {recipe.get('degrade')!r}")
    return Loaded(model_from_checkpoint(ckpt, device), recipe, path, ckpt)


def window_plan_for(loaded: Loaded, length: int, window: int | None = None) -> WindowPlan:
    multiple = int(getattr(loaded.model, "length_multiple", 1))
    return plan_windows(length, multiple, window or int(loaded.recipe.get("patch") or 8192))


# ---------------------------------------------------------------------------------------- pipelines
def output_length(n_in: int, sr_in: int, sr_out: int) -> int:
    """round(n_in * sr_out / sr_in), exactly (halves round up)."""
    return (2 * n_in * sr_out + sr_in) // (2 * sr_in)


def real_pipeline(src: Stage, sr_in: int, loaded: Loaded) -> tuple[Stage, int]:
    """Real low-rate input -> (spline stage at the model rate, exact output length)."""
    lr = Resampled(src, sr_in, loaded.low_rate)
    length = output_length(src.length, sr_in, loaded.sr)
    if length < 1:
        raise AfilmError("input is too short to upsample")
    return Splined(lr, loaded.r, length), length


def simulate_pipeline(src: Stage, sr_in: int, loaded: Loaded) -> tuple[Stage, Stage, Stage, int]:
    """High-rate ground truth -> (HR at the model rate, LR by the recipe, spline, length)."""
    length = output_length(src.length, sr_in, loaded.sr)
    hr = Resampled(src, sr_in, loaded.sr, length)
    lr = Degraded(hr, loaded.r, loaded.recipe["degrade"])
    return hr, lr, Splined(lr, loaded.r, length), length


def low_rate_warning(path: Path, sr_in: int, loaded: Loaded) -> str | None:
    """Input below the model's low rate is accepted (resampled up) but the band between its Nyquist
    and the model's low-rate Nyquist is empty, which the model never saw in training. Input at or
    above the model's own rate loses its upper band to the resampling: probably --simulate was meant."""
    low = float(loaded.low_rate)
    if sr_in < low:
        return (f"{path}: {sr_in} Hz is below the model's input rate {low:g} Hz; "
                f"the band {sr_in / 2:g}-{low / 2:g} Hz stays empty")
    if sr_in >= loaded.sr:
        return (f"{path}: {sr_in} Hz is already at or above the model's output rate {loaded.sr} Hz; it is "
                f"band-limited to {low / 2:g} Hz and re-synthesised (use --simulate to compare with it)")
    return None


def check_simulate_rate(path: Path, sr_in: int, loaded: Loaded) -> None:
    if sr_in < loaded.sr:
        raise AfilmError(f"{path}: {sr_in} Hz is below the model's rate {loaded.sr} Hz, so it cannot serve "
                         "as high-rate ground truth (drop --simulate to upsample it)")


def predict(loaded: Loaded, spline: Stage, length: int, *, batch_size: int = 16, window: int | None = None,
            device: str | torch.device = "cpu", progress: Callable[[int], None] | None = None) -> np.ndarray:
    """In-memory convenience: the whole prediction as one (length, C) array."""
    plan = window_plan_for(loaded, length, window)
    blocks = list(run_windows(loaded.model, spline, length, plan, batch_size=batch_size, device=device,
                              progress=progress))
    return np.concatenate(blocks) if blocks else np.zeros((0, spline.channels), np.float32)


def _subtype(fmt_path: Path, like: str | None) -> str:
    fmt = "FLAC" if fmt_path.suffix.lower() == ".flac" else "WAV"
    if like and like in ("PCM_16", "PCM_24", "FLOAT") and sf.check_format(fmt, like):
        return like
    return "PCM_16"


def _write_blocks(path: Path, blocks: Iterator[np.ndarray], sr: int, channels: int, subtype: str) -> None:
    """Stream blocks into ``path`` atomically; PCM output is clipped (libsndfile would wrap)."""
    clip = subtype.startswith("PCM")
    with atomic_path(path) as tmp:
        with sf.SoundFile(str(tmp), "w", samplerate=int(sr), channels=channels, subtype=subtype,
                          format="FLAC" if path.suffix.lower() == ".flac" else "WAV") as f:
            for block in blocks:
                f.write(np.clip(block, -1.0, 1.0) if clip else block)


def _stage_blocks(stage: Stage) -> Iterator[np.ndarray]:
    for a in range(0, stage.length, BLOCK):
        yield stage.read(a, min(a + BLOCK, stage.length)).astype(np.float32)


def count_windows(path: Path, loaded: Loaded, window: int | None = None) -> int:
    src = FileSource(path)  # also the first check that the file is readable: one clear line if not
    src.close()
    length = output_length(src.length, src.sr, loaded.sr)
    return len(window_plan_for(loaded, max(length, 1), window).starts(length)) if length else 0


def upsample_file(path: str | os.PathLike, out: str | os.PathLike, loaded: Loaded, *, batch_size: int = 16,
                  window: int | None = None, device: str | torch.device = "cpu",
                  progress: Callable[[int], None] | None = None, warn: Callable[[str], None] | None = None
                  ) -> dict[str, Any]:
    """Real low-rate file -> ``out`` at the model rate with round(n * sr / sr_in) samples per channel."""
    src = FileSource(path)
    try:
        message = low_rate_warning(src.path, src.sr, loaded)
        if message:
            (warn or (lambda m: print(f"afilm: warning: {m}", file=sys.stderr)))(message)
        spline, length = real_pipeline(src, src.sr, loaded)
        plan = window_plan_for(loaded, length, window)
        blocks = run_windows(loaded.model, spline, length, plan, batch_size=batch_size, device=device,
                             progress=progress)
        _write_blocks(Path(out), blocks, loaded.sr, src.channels, _subtype(Path(out), src.subtype))
        return {"input": str(src.path), "output": str(out), "sr_in": src.sr, "sr_out": loaded.sr,
                "frames_in": src.length, "frames_out": length, "channels": src.channels}
    finally:
        src.close()


def simulate_paths(out_base: Path) -> dict[str, Path]:
    """``dir/name`` -> dir/name.lr.wav, .hr.wav, .pr.wav (as the reference, without its zero tail)."""
    return {k: out_base.with_name(f"{out_base.name}.{k}.wav") for k in ("lr", "hr", "pr")}


def simulate_file(path: str | os.PathLike, out_base: str | os.PathLike, loaded: Loaded, *,
                  batch_size: int = 16, window: int | None = None, device: str | torch.device = "cpu",
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """High-rate file -> <base>.lr.wav (at sr/r), <base>.hr.wav and <base>.pr.wav (at sr, same length)."""
    src = FileSource(path)
    try:
        check_simulate_rate(src.path, src.sr, loaded)
        hr, lr, spline, length = simulate_pipeline(src, src.sr, loaded)
        paths = simulate_paths(Path(out_base))
        low = loaded.low_rate
        if low.denominator != 1:
            raise AfilmError(f"the model's low rate {float(low):g} Hz is not a whole number; "
                             "a .lr.wav cannot be written at it")
        sub = _subtype(paths["pr"], src.subtype)
        _write_blocks(paths["lr"], _stage_blocks(lr), int(low), src.channels, sub)
        _write_blocks(paths["hr"], _stage_blocks(hr), loaded.sr, src.channels, sub)
        plan = window_plan_for(loaded, length, window)
        blocks = run_windows(loaded.model, spline, length, plan, batch_size=batch_size, device=device,
                             progress=progress)
        _write_blocks(paths["pr"], blocks, loaded.sr, src.channels, sub)
        return {"input": str(src.path), "outputs": {k: str(v) for k, v in paths.items()},
                "frames_hr": length, "frames_lr": lr.length, "channels": src.channels}
    finally:
        src.close()


# -------------------------------------------------------------------------------------- output paths
def default_output(path: Path) -> Path:
    suffix = path.suffix.lower() if path.suffix.lower() in (".wav", ".flac") else ".wav"
    return path.with_name(f"{path.stem}.afilm{suffix}")


def plan_outputs(inputs: list[Path], out: Path | None, simulate: bool) -> list[tuple[Path, Path]]:
    """(input file, output path) pairs; for --simulate the output is a base name for .lr/.hr/.pr.

    A folder input is searched recursively and mirrored into ``out`` (default ``<folder>.afilm``)."""
    from afilm_cli.audio import is_audio_file

    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        if item.is_dir():
            root = out if out is not None else item.with_name(item.name + ".afilm")
            files = sorted(p for p in item.rglob("*") if p.is_file() and is_audio_file(p)
                           and ".afilm" not in p.name and not _is_sim_output(p))
            if not files:
                raise AfilmError(f"{item}: no audio files in this folder")
            for f in files:
                rel = f.relative_to(item)
                target = root / rel.parent / (rel.stem if simulate else default_output(rel).name)
                pairs.append((f, target))
        else:
            if not item.exists():
                raise AfilmError(f"{item}: no such file")
            if out is not None and (len(inputs) > 1 or out.is_dir()):
                target = out / (item.stem if simulate else default_output(item).name)
            elif out is not None:
                target = out.with_suffix("") if simulate and out.suffix == ".wav" else out
            else:
                target = item.with_name(item.stem) if simulate else default_output(item)
            pairs.append((item, target))
    return pairs


def _is_sim_output(p: Path) -> bool:
    return any(p.name.endswith(f".{k}.wav") for k in ("lr", "hr", "pr"))


def existing_outputs(pairs: list[tuple[Path, Path]], simulate: bool) -> list[Path]:
    found = []
    for _, target in pairs:
        paths = list(simulate_paths(target).values()) if simulate else [target]
        found += [p for p in paths if p.exists()]
    return found
