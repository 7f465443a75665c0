"""Upsampling real files: signal stages (afilm_cli/stages.py) into windowed overlap-add inference
(afilm_cli/windows.py), streamed to the output file.

- real low-rate input:  file -> Resampled(to sr/r) -> Splined(r) -> model windows
- ``--simulate``:       file -> Resampled(to sr) = HR -> Degraded(recipe) = LR -> Splined(r) -> model

Real low-rate input is already band-limited (its recorder's anti-alias filter, and the polyphase
resampler's own low-pass when its rate is above sr/r), so the recipe's degradation is *not* applied
again; ``--simulate`` applies the checkpoint's recipe (decimate or subsample) to make its LR version.
The spline signal goes through the model at the level of the model's training data (afilm_cli/level.py).
Speed settings (precision, threads, compile, CUDA graphs) are documented in afilm_cli/windows.py.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import torch

from afilm_cli.atomic import atomic_path
from afilm_cli.audio import DEGRADE_METHODS, degrade_methods
from afilm_cli.cuda_graphs import GraphedForward, graphed, use_graphs
from afilm_cli.errors import AfilmError
from afilm_cli.level import matching_gains, output_gains, stage_level, unscaled

# re-exported: the stages and windows were part of this module and are used through it
from afilm_cli.stages import (  # noqa: F401
    DECIMATE_MARGIN,
    SPLINE_MARGIN,
    ArraySource,
    Degraded,
    FileSource,
    Resampled,
    Splined,
    Stage,
)
from afilm_cli.windows import (  # noqa: F401
    BF16_MIN_SNR_DB,
    FP32_ATOL,
    PRECISIONS,
    WindowPlan,
    compile_model,
    plan_windows,
    resolve_precision,
    run_windows,
)
from afilm_cli.wording import counted

BLOCK = 1 << 16  # samples per block when copying a stage to a file


# ----------------------------------------------------------------------------------------- model I/O
def resolve_device(device: str | int | torch.device = "auto", *, via: str = "--device") -> torch.device:
    """A device as the CLI's ``--device`` takes it (``via``) or the Python API's ``device=``
    (``via="device"``: a torch.device, a name as torch takes it, or 'auto'): 'auto' is CUDA where there
    is one; one AfilmError line, in the caller's words, where it is no device or a CUDA device this
    machine lacks (torch raised an AssertionError, 'Torch not compiled with CUDA enabled', or a
    RuntimeError listing every device type it knows)."""
    cli = via.startswith("--")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise AfilmError(f"unknown device {device!r} (use auto, cpu or cuda)" if cli else
                         f"device {device!r} is not a device: pass 'cpu', 'cuda', 'cuda:N' or 'auto'"
                         ) from None
    if dev.type == "cuda":
        shown = repr(str(device) if isinstance(device, torch.device) else device)  # 'cuda:1', not device(...)
        named = f"{via} {device}" if cli else f"device {shown}"
        if not torch.cuda.is_available():
            raise AfilmError(f"{named}: no CUDA device is available "
                             + ("(use --device cpu)" if cli else "(pass device='cpu')"))
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise AfilmError(f"{named}: this machine has {counted(count, 'CUDA device')} "
                             f"(cuda:0 to cuda:{count - 1})")
    return dev


def default_checkpoint(sr_in: int | None = None) -> Path:
    """The newest runs/*/best.pt under the current folder, else the bundled pretrained model: the one
    made for real input at ``sr_in`` Hz where given (pretrained.for_input_rate), else the default."""
    found = sorted(Path("runs").glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1]
    import importlib.util

    if importlib.util.find_spec("afilm_cli.pretrained") is not None:
        from afilm_cli import pretrained

        try:
            name = None if sr_in is None else pretrained.for_input_rate(sr_in)
            path = pretrained.bundled_checkpoint_path(name)
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
    compiled: torch.nn.Module | None = field(default=None, repr=False)  # built on first use
    graphs: dict = field(default_factory=dict, repr=False)  # CUDA graphs by batch shape (cuda_graphs.py)

    @property
    def r(self) -> int:
        return int(self.recipe["r"])

    @property
    def sr(self) -> int:
        return int(self.recipe["sr"])

    @property
    def low_rate(self) -> Fraction:
        return Fraction(self.sr, self.r)

    @property
    def level_dbfs(self) -> float | None:
        """The RMS level of the training data (level.py), where the checkpoint records it."""
        return self.ckpt.get("input_level_dbfs")

    @property
    def degrade(self) -> str:
        """How --simulate and eval make the low-rate input by default: the recipe's (first) method."""
        return degrade_methods(self.recipe["degrade"])[0]


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Loaded:
    """Load a checkpoint (a file, a run folder or a bundled model's name: pretrained.checkpoint_path;
    default: :func:`default_checkpoint`) and rebuild its model in eval mode."""
    from afilm_cli.checkpoint import load_checkpoint, model_from_checkpoint
    from afilm_cli.pretrained import checkpoint_path

    if not (path is None or isinstance(path, (str, os.PathLike))):  # a Loaded, a module: torch's TypeError
        raise AfilmError(f"load_model takes a checkpoint file, a run folder or a bundled model's name, not "
                         f"{type(path).__name__}" + (" (it is loaded: pass it on as it is)"
                                                     if isinstance(path, Loaded) else ""))
    device = resolve_device(device, via="device")  # a missing device: said without the file
    path = default_checkpoint() if path is None else checkpoint_path(path)
    ckpt = load_checkpoint(path)
    recipe = dict(ckpt["recipe"])
    if not isinstance(recipe.get("r"), int) or not isinstance(recipe.get("sr"), int) or recipe["r"] < 1:
        raise AfilmError(f"{path}: checkpoint recipe lacks integer r and sr ({recipe})")
    try:
        degrade_methods(recipe.get("degrade"))
    except AfilmError:
        raise AfilmError(f"{path}: checkpoint recipe has unknown degradation "
                         f"{recipe.get('degrade')!r}") from None
    level = ckpt.get("input_level_dbfs")
    if level is not None and (isinstance(level, bool) or not isinstance(level, (int, float))
                              or not math.isfinite(level)):
        raise AfilmError(f"{path}: damaged checkpoint (input_level_dbfs {level!r} is not a finite number)")
    try:
        model = model_from_checkpoint(ckpt, device)
    except AfilmError as exc:  # weights that do not fit: said with the file they came from
        raise AfilmError(f"{path}: {exc}") from None
    return Loaded(model, recipe, path, ckpt)


def as_loaded(model: Loaded | str | os.PathLike, device: str | torch.device = "cpu") -> Loaded:
    """The model argument of the Python API: a :class:`Loaded` as it is, a bundled model's name, a .pt or
    a run folder loaded as ``--ckpt`` loads it (:func:`load_model`; once per call, so load it yourself
    for many calls)."""
    if isinstance(model, Loaded):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device)
    raise AfilmError(f"model: pass load_model(...)'s result, a bundled model's name (e.g. afilm_speech_r4) "
                     f"or a checkpoint path, not {type(model).__name__}")


def window_plan_for(loaded: Loaded, length: int, window: int | None = None) -> WindowPlan:
    if window is not None:  # 0 was taken as the default and a negative one as the shortest window
        check_positive("window", window)
    multiple = int(getattr(loaded.model, "length_multiple", 1))
    return plan_windows(length, multiple, window or int(loaded.recipe.get("patch") or 8192))


# ---------------------------------------------------------------------------------------- pipelines
# model_windows's settings that the Python API passes on (autograd=, a bench-only switch, is not one)
SPEED = ("precision", "threads", "compile", "graphs", "match_level", "stats")


def check_speed(func: str, speed: dict[str, Any], known: tuple[str, ...] = ()) -> None:
    """The ``**speed`` keywords of a Python API function: a misspelt one is one line naming ``func``
    (it was a TypeError naming model_windows, which the user never called)."""
    for key in speed:
        if key not in SPEED and key not in known:
            raise AfilmError(f"{func}() got an unknown keyword {key!r}; it takes "
                             f"{', '.join((*known, *SPEED))}")


def check_positive(name: str, value: Any) -> None:
    """A count argument of the Python API (``window``, ``batch_size``): a positive integer, or one line."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AfilmError(f"{name} must be a positive integer, not {value!r}")


def output_length(n_in: int, sr_in: int, sr_out: int) -> int:
    """round(n_in * sr_out / sr_in), exactly (halves round up)."""
    return (2 * n_in * sr_out + sr_in) // (2 * sr_in)


# the cubic spline needs 4 low-rate samples; decimate's filtfilt needs more than 27 high-rate ones
SPLINE_MIN = 4
DECIMATE_MIN = 28


def _too_short(n: int, sr_in: int, minimum: int, why: str) -> AfilmError:
    """Said in the file's own frames and rate, not in the internal signals' samples."""
    return AfilmError(f"{counted(n, 'frame')} at {sr_in} Hz ({1000 * n / sr_in:.3g} ms) is too "
                      f"short: {why}, so at least {minimum} frames at {sr_in} Hz are needed")


def _spline_needs(loaded: Loaded) -> str:
    low = float(loaded.low_rate)
    return f"the cubic spline needs {SPLINE_MIN} samples at the model's input rate {low:g} Hz"


def real_pipeline(src: Stage, sr_in: int, loaded: Loaded) -> tuple[Stage, int]:
    """Real low-rate input -> (spline stage at the model rate, exact output length)."""
    low = loaded.low_rate
    # frames at sr_in whose resampling to the low rate gives SPLINE_MIN samples: ceil(n * low / sr_in) >= 4
    minimum = int((SPLINE_MIN - 1) * sr_in / low) + 1
    if src.length < minimum:
        raise _too_short(src.length, sr_in, minimum, _spline_needs(loaded))
    lr = Resampled(src, sr_in, low)
    length = output_length(src.length, sr_in, loaded.sr)
    return Splined(lr, loaded.r, length), length


def simulate_pipeline(src: Stage, sr_in: int, loaded: Loaded, degrade: str | None = None
                      ) -> tuple[Stage, Stage, Stage, int]:
    """High-rate ground truth -> (HR at the model rate, LR by ``degrade`` (default: the recipe's),
    spline, length)."""
    method = degrade or loaded.degrade
    need = (SPLINE_MIN - 1) * loaded.r + 1  # model-rate samples giving SPLINE_MIN low-rate ones
    why = _spline_needs(loaded)
    if method == "decimate" and loaded.r > 1 and DECIMATE_MIN > need:
        need, why = DECIMATE_MIN, f"decimate needs {DECIMATE_MIN} samples at the model's rate {loaded.sr} Hz"
    minimum = -(-(2 * need - 1) * sr_in // (2 * loaded.sr))  # the least n with output_length >= need
    if src.length < minimum:
        raise _too_short(src.length, sr_in, minimum, why)
    length = output_length(src.length, sr_in, loaded.sr)
    hr = Resampled(src, sr_in, loaded.sr, length)
    lr = Degraded(hr, loaded.r, method)
    return hr, lr, Splined(lr, loaded.r, length), length


def low_rate_warning(sr_in: int, loaded: Loaded) -> str | None:
    """Input below the model's low rate is accepted (resampled up) but the band between its Nyquist
    and the model's low-rate Nyquist is empty, which the model never saw in training. Input above the
    low rate loses the band above the low rate's Nyquist to the resampling, and the model invents it
    again: at or above the model's own rate probably --simulate was meant; between the two (8 kHz
    telephone audio into a 4 kHz -> 16 kHz model) a model trained for that rate would keep it."""
    low = float(loaded.low_rate)
    if sr_in < low:
        return (f"{sr_in} Hz is below the model's input rate {low:g} Hz; "
                f"the band {sr_in / 2:g}-{low / 2:g} Hz stays empty")
    if sr_in >= loaded.sr:
        return (f"{sr_in} Hz is already at or above the model's output rate {loaded.sr} Hz; it is "
                f"band-limited to {low / 2:g} Hz and re-synthesised (use --simulate to compare with it)")
    if sr_in > low:
        keeps = (f"a model trained with --r {loaded.sr // sr_in}" if loaded.sr % sr_in == 0
                 else "a model for this rate")
        from afilm_cli.pretrained import made_for

        bundled = made_for(sr_in, loaded.sr)
        if bundled is not None:
            keeps = f"the bundled {bundled}, made for {sr_in} Hz input (--ckpt {bundled}),"
        return (f"{sr_in} Hz is above the model's input rate {low:g} Hz: the input's band "
                f"{low / 2:g}-{sr_in / 2:g} Hz is dropped and predicted again ({keeps} keeps it)")
    return None


def check_degrade(method: str) -> None:
    """A single degradation method, for --degrade of --simulate and eval."""
    if method not in DEGRADE_METHODS:
        raise AfilmError(f"--degrade {method!r}: use one of {', '.join(DEGRADE_METHODS)}")


def check_simulate_rate(path: Path, sr_in: int, loaded: Loaded) -> None:
    if sr_in < loaded.sr:
        raise AfilmError(f"{path}: {sr_in} Hz is below the model's rate {loaded.sr} Hz, so it cannot serve "
                         "as high-rate ground truth (to upsample it: afilm upsample without --simulate)")


def model_windows(loaded: Loaded, spline: Stage, length: int, plan: WindowPlan, *, batch_size: int = 16,
                  device: str | torch.device = "cpu", progress: Callable[[int], None] | None = None,
                  precision: str = "fp32", threads: int | str | None = "auto", compile: bool = False,
                  graphs: str | bool | None = "auto", stats: dict | None = None, match_level: bool = True,
                  autograd: bool = False) -> Iterator[np.ndarray]:
    """:func:`run_windows` with the loaded model, compiled once (and kept) when ``compile``; on CUDA its
    forward is captured as a CUDA graph (once per batch shape and precision, kept) unless ``graphs`` is off or
    ``compile`` is on (compile's reduce-overhead mode makes its own graphs). With ``match_level``, each window
    of each channel goes through the model at the level of the model's training data and comes back at its
    own, centred and its mean added back (level.py; models that record no level run as they are), and a
    channel or window of digital silence (below level.SILENCE_DBFS) comes out silent. The model runs in eval
    mode and is left in the mode it was in (a model in training mode goes back to it)."""
    from afilm_cli.models import check_length, model_name_of

    check_positive("batch_size", batch_size)  # 0 or a negative one ran one window per batch
    try:  # a model may refuse lengths beyond its multiple (the windows are multiples of it)
        check_length(loaded.model, plan.window)
    except AfilmError as exc:
        raise AfilmError(f"windows of {plan.window} samples do not fit {model_name_of(loaded.model)!r} "
                         f"(upsample --window sets them): {exc}") from None
    device = torch.device(device)
    model = loaded.model
    training = model.training  # it runs in eval mode, and is left in the mode it was given in
    fixed = compile
    if compile:
        if loaded.compiled is None:
            loaded.compiled = compile_model(loaded.model.eval(), device)
        model = loaded.compiled
    elif use_graphs(graphs, device):
        shape = (max(1, batch_size // spline.channels) * spline.channels, 1, plan.window)
        model = graphed(loaded.model, loaded.graphs, shape, device, resolve_precision(precision, device))
        fixed = True
        if stats is not None:
            stats["cuda_graph"] = isinstance(model, GraphedForward)
    back = None
    if match_level:  # also for a checkpoint without a level: a silent channel comes out silent
        levels = stage_level(spline, length)
        back = output_gains(levels, np.ones(len(levels)))
        if loaded.level_dbfs is not None and stats is not None:  # how far each channel is from it
            gains = matching_gains(levels, loaded.level_dbfs)
            stats["gain_db"] = [round(20 * math.log10(g), 2) for g in gains]
    # the gains themselves are per window (run_windows): a whole channel's gain alone brought a passage
    # far quieter than the rest of its file (a distant voice) to the model below its level, and it was
    # upsampled below the spline
    window_level = loaded.level_dbfs if match_level else None
    blocks = run_windows(model, spline, length, plan, batch_size=batch_size, device=device, progress=progress,
                         precision=precision, threads=threads, fixed_shapes=fixed, stats=stats,
                         level_dbfs=window_level, autograd=autograd)
    blocks = blocks if back is None else unscaled(blocks, back)
    return _training_after(blocks, loaded.model) if training else blocks


def _training_after(blocks: Iterator[np.ndarray], model: torch.nn.Module) -> Iterator[np.ndarray]:
    """``blocks``, then ``model`` back in training mode (run_windows, CUDA graphs and compile put it
    in eval mode): a model being fine-tuned goes on training with its dropout."""
    try:
        yield from blocks
    finally:
        model.train()


def predict(loaded: Loaded, spline: Stage, length: int, *, batch_size: int = 16, window: int | None = None,
            device: str | torch.device = "cpu", progress: Callable[[int], None] | None = None,
            **speed: Any) -> np.ndarray:
    """In-memory convenience: the whole prediction as one (length, C) array. ``speed``: precision,
    threads, compile, graphs, stats, match_level (see :func:`model_windows`)."""
    plan = window_plan_for(loaded, length, window)
    blocks = list(model_windows(loaded, spline, length, plan, batch_size=batch_size, device=device,
                                progress=progress, **speed))
    return np.concatenate(blocks) if blocks else np.zeros((0, spline.channels), np.float32)


# the output keeps the input's sample format, or the nearest the output format has that holds the
# model's float32 output as well (FLAC has no 32-bit or float samples); 8-bit and unknown become 16-bit
_SUBTYPES = {"PCM_16": ("PCM_16",), "PCM_24": ("PCM_24",), "PCM_32": ("PCM_32", "PCM_24"),
             "FLOAT": ("FLOAT", "PCM_24"), "DOUBLE": ("FLOAT", "PCM_24")}


def _subtype(fmt_path: Path, like: str | None) -> str:
    fmt = "FLAC" if fmt_path.suffix.lower() == ".flac" else "WAV"
    return next((s for s in _SUBTYPES.get(like or "", ()) if sf.check_format(fmt, s)), "PCM_16")


def _write_blocks(path: Path | BinaryIO, blocks: Iterator[np.ndarray], sr: int, channels: int, subtype: str
                  ) -> tuple[int, float]:
    """Stream blocks into ``path`` atomically; PCM output is clipped (libsndfile would wrap). Returns
    the number of samples clipped (all channels) and the largest magnitude among them (0 if none).
    ``path`` a binary stream (stdout): a WAV built in memory (its header is written last, and a pipe
    cannot be sought back to) and written to it whole at the end."""
    if not isinstance(path, Path):
        buf = io.BytesIO()
        found = _encode(buf, "WAV", blocks, sr, channels, subtype)
        write_stream(path, buf.getbuffer())
        return found
    with atomic_path(path) as tmp:
        found = _encode(str(tmp), "FLAC" if path.suffix.lower() == ".flac" else "WAV", blocks, sr, channels,
                        subtype)
    return found


def _encode(target: str | BinaryIO, fmt: str, blocks: Iterator[np.ndarray], sr: int, channels: int,
            subtype: str) -> tuple[int, float]:
    clip = subtype.startswith("PCM")
    clipped, peak = 0, 0.0
    with sf.SoundFile(target, "w", samplerate=int(sr), channels=channels, subtype=subtype, format=fmt) as f:
        for block in blocks:
            if clip:
                over = np.abs(block) > 1.0  # counted per block: the file never exists in memory
                if over.any():
                    clipped += int(over.sum())
                    peak = max(peak, float(np.abs(block[over]).max()))
                block = np.clip(block, -1.0, 1.0)
            f.write(block)
    return clipped, peak


def write_stream(stream: BinaryIO, data: bytes | memoryview) -> None:
    """Write ``data`` to ``stream`` (stdout); a reader that has gone (``| head``) is one line. A reader
    that goes part-way (``| head -c 100``) makes write() return short, without an error: what is left
    is written again, and that fails with the broken pipe."""
    view = memoryview(data).cast("B")
    try:
        while view:
            n = stream.write(view)
            if not n:  # a stream that takes nothing (no error said): not all the audio went out
                raise BrokenPipeError
            view = view[n:]
        stream.flush()
    except BrokenPipeError:
        # what is still buffered would fail again at exit, as a traceback: it goes to /dev/null instead
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        raise AfilmError(f"{stream_name(stream)}: closed before all the audio was written (broken pipe)"
                         ) from None
    except OSError as exc:  # > /dev/full: said for stdout, not as a bare 'No space left on device'
        raise AfilmError(f"{stream_name(stream)}: cannot write the audio: {exc.strerror or exc}") from None


def clip_warning(path: Path | str, clipped: int, peak: float, like: str | None, subtype: str) -> str | None:
    """The warning for PCM samples clipped while writing ``path`` (None if none were): how many, and
    what would have kept them, as :func:`_subtype` chooses the output's sample format."""
    if not clipped:
        return None
    if like in ("FLOAT", "DOUBLE"):  # float input: only FLAC, which has no float samples, clips it
        hint = "FLAC has no float samples: -o NAME.wav writes float, as the input, and keeps them"
    else:
        hint = (f"the output is {subtype}, chosen from the input's {like or 'unknown'} format: "
                "a float WAV input, written to .wav, keeps them")
    return f"{path}: {clipped} samples clipped to [-1, 1] (peak {peak:.5g}); {hint}"


def _stage_blocks(stage: Stage) -> Iterator[np.ndarray]:
    for a in range(0, stage.length, BLOCK):
        yield stage.read(a, min(a + BLOCK, stage.length)).astype(np.float32)


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Prefix an error about a file's signal (too short for a spline, ...) with the file's name."""
    try:
        yield
    except AfilmError as exc:
        if str(path) in str(exc):
            raise
        raise AfilmError(f"{path}: {exc}") from None


# -------------------------------------------------------------------------------- stdin and stdout
STDIO = "-"  # the CLI's name for stdin (an input) and stdout (-o -); a file named - is ./-


class AudioBytes:
    """A whole audio file in memory, for the functions that take a file path: stdin, the CLI's ``-``.
    ``data``: its bytes, or a binary stream (sys.stdin.buffer) read whole the first time they are needed,
    after the run's checks. A pipe cannot be sought, and the streamed path seeks: it does in a BytesIO."""

    def __init__(self, data: bytes | BinaryIO, name: str = "stdin"):
        self._data, self.name = data, name

    @property
    def data(self) -> bytes:
        if not isinstance(self._data, bytes):
            self._data = self._data.read()
        return self._data

    def __str__(self) -> str:
        return self.name


class BytesSource(FileSource):
    """:class:`FileSource` over :class:`AudioBytes`: any format libsndfile reads from memory."""

    def __init__(self, audio: AudioBytes):  # FileSource's, less its checks of a path
        self.path = Path(audio.name)  # names it in messages
        if not audio.data:
            raise AfilmError(f"{audio.name}: no audio (empty)")
        try:
            f = sf.SoundFile(io.BytesIO(audio.data))
        except Exception as exc:  # LibsndfileError's own words, without the BytesIO's repr
            reason = getattr(exc, "error_string", None) or str(exc).splitlines()[0] or type(exc).__name__
            raise AfilmError(f"{audio.name}: not audio libsndfile can read: {reason}") from None
        self._take(f)


def open_source(path: str | os.PathLike | AudioBytes) -> FileSource:
    """A file, or :class:`AudioBytes`, as a stage; a file named - by its full path (libsndfile would
    take the name ``-`` for its own stdin)."""
    if isinstance(path, AudioBytes):
        return BytesSource(path)
    return FileSource(Path(path).absolute() if str(path) == STDIO else path)


def stream_name(stream: BinaryIO) -> str:
    return "stdout" if getattr(stream, "name", None) in ("<stdout>", 1) else "the output stream"


def check_stdio(inputs: list[str], out: str | None, simulate: bool) -> bool:
    """Whether the CLI's ``-`` is in the run: an input reads stdin, ``-o -`` writes stdout, and so does
    stdin without -o. What it cannot do is refused in one line before anything is read."""
    reads = STDIO in inputs
    writes = out == STDIO or (reads and out is None)
    if not (reads or writes):
        return False
    if simulate:
        raise AfilmError("--simulate writes three files (NAME.lr.wav, NAME.hr.wav, NAME.pr.wav): it does not "
                         "read stdin or write stdout (-); save the audio to a file first")
    if reads and len(inputs) > 1:
        raise AfilmError("- (stdin) can only be the one input (a file named - is ./-)")
    if writes and len(inputs) > 1:
        raise AfilmError("-o - (stdout) takes one input file, not several")
    if writes and not reads and Path(inputs[0]).is_dir():
        raise AfilmError(f"-o - (stdout) takes one input file, not a folder ({inputs[0]})")
    if writes and sys.stdout.isatty():
        raise AfilmError("stdout is a terminal, and binary audio would go to it: redirect it (> out.wav, "
                         "| ffmpeg -i - ...) or pass -o FILE")
    if reads and sys.stdin.isatty():
        raise AfilmError("stdin is a terminal: pipe audio in (< in.wav, ffmpeg ... -f wav - |) or name "
                         "a file")
    return True


def stdio_pairs(inputs: list[str], out: str | None) -> list[tuple[Path | AudioBytes, Path | BinaryIO]]:
    """The one (input, output) of a run that :func:`check_stdio` let through: stdin (read when first
    needed) or the file, to stdout or the -o file."""
    src = AudioBytes(sys.stdin.buffer) if inputs[0] == STDIO else Path(inputs[0])
    if out is None or out == STDIO:
        return [(src, sys.stdout.buffer)]
    target = Path(out)
    if out.endswith(("/", os.sep)) or target.is_dir():
        raise AfilmError(f"-o {out}: stdin is one file's audio; name a .wav or .flac file (or - for stdout)")
    if target.suffix.lower() not in (".wav", ".flac"):
        raise AfilmError(f"{out}: afilm writes WAV or FLAC; end the output name with .wav or .flac "
                         "(or -o - for stdout)")
    return [(src, target)]


def input_rate(path: Path | AudioBytes) -> int:
    """The sample rate of an audio file (one clear line naming it if it cannot be read)."""
    with contextlib.closing(open_source(path)) as src:
        return int(src.sr)


def count_windows(path: Path | AudioBytes, loaded: Loaded, window: int | None = None, *,
                  simulate: bool = False, degrade: str | None = None) -> int:
    """The model windows ``path`` will take; also the check, before any output is written, that it can
    be upsampled (readable, long enough, at a usable rate): one clear line naming it if not."""
    with naming(path), contextlib.closing(open_source(path)) as src:
        if simulate:
            check_simulate_rate(src.path, src.sr, loaded)
            length = simulate_pipeline(src, src.sr, loaded, degrade)[3]
        else:
            length = real_pipeline(src, src.sr, loaded)[1]
    return len(window_plan_for(loaded, length, window).starts(length))


def plan_models(pairs: list[tuple[Path | AudioBytes, Any]], fixed: Loaded | None, device: torch.device, *,
                window: int | None = None, simulate: bool = False, degrade: str | None = None,
                fail: Callable[[Path | AudioBytes, AfilmError], None]) -> tuple[dict, dict]:
    """Each input's model (``fixed``, else default_checkpoint's for its rate, each loaded once) and its
    count of model windows: the check, before anything is written, that every input can be upsampled
    (readable, long enough, at a usable rate). An input that cannot is given to ``fail`` (which may
    raise) and left out of both."""
    if fixed is not None:
        models = {src: fixed for src, _ in pairs}
    else:
        paths = {}
        for src, _ in pairs:
            try:
                rate = input_rate(src)
            except AfilmError as exc:
                fail(src, exc)
                continue
            paths[src] = default_checkpoint(rate)  # no model at all is no one file's fault
        by_path = {path: load_model(path, device) for path in dict.fromkeys(paths.values())}
        models = {src: by_path[path] for src, path in paths.items()}
    totals = {}
    for src, model in models.items():
        try:
            totals[src] = count_windows(src, model, window, simulate=simulate, degrade=degrade)
        except AfilmError as exc:
            fail(src, exc)
    return models, totals


def upsample_file(path: str | os.PathLike | AudioBytes | BinaryIO, out: str | os.PathLike | BinaryIO,
                  loaded: Loaded | str | os.PathLike, *, batch_size: int = 16, window: int | None = None,
                  device: str | torch.device | None = None, progress: Callable[[int], None] | None = None,
                  warn: Callable[[str], None] | None = None, **speed: Any) -> dict[str, Any]:
    """Real low-rate file -> ``out`` at the model rate with round(n * sr / sr_in) samples per channel.
    ``path``: a file, :class:`AudioBytes` (stdin) or an open binary file (read whole); ``out``: a .wav or
    .flac path, or a binary stream (sys.stdout.buffer) that gets a WAV, written whole at the end.
    ``loaded``: see :func:`as_loaded`; ``device``: see :func:`placed`."""
    check_speed("upsample_file", speed, ("batch_size", "window", "device", "progress", "warn"))
    if hasattr(path, "read"):  # open(..., "rb"), a BytesIO: a TypeError from Path() before
        path = AudioBytes(path, str(getattr(path, "name", "the input stream")))
    loaded, device = placed(loaded, device)
    target = out if hasattr(out, "write") else Path(out)
    if isinstance(target, Path) and target.suffix.lower() not in (".wav", ".flac"):  # WAV went under any name
        raise AfilmError(f"{target}: upsample_file writes WAV or FLAC; end the output name with .wav or "
                         ".flac")
    name = str(target) if isinstance(target, Path) else stream_name(target)
    with contextlib.closing(open_source(path)) as src:
        if isinstance(target, Path) and not isinstance(path, AudioBytes):
            check_not_input(target, src.path)
        message = low_rate_warning(src.sr, loaded)
        if message:
            (warn or print_warning)(f"{src.path}: {message}")
        with naming(path):
            spline, length = real_pipeline(src, src.sr, loaded)
        plan = window_plan_for(loaded, length, window)
        blocks = model_windows(loaded, spline, length, plan, batch_size=batch_size, device=device,
                               progress=progress, **speed)
        sub = _subtype(target if isinstance(target, Path) else Path("stdout.wav"), src.subtype)
        message = clip_warning(name, *_write_blocks(target, blocks, loaded.sr, src.channels, sub),
                               src.subtype, sub)
        if message:
            (warn or print_warning)(message)
        return {"input": str(src.path), "output": name, "sr_in": src.sr, "sr_out": loaded.sr,
                "frames_in": src.length, "frames_out": length, "channels": src.channels}


def placed(loaded: Loaded | str | os.PathLike, device: str | torch.device | None
           ) -> tuple[Loaded, torch.device]:
    """``loaded`` (see :func:`as_loaded`) and the device to run it on: ``device``, or where None, the
    one the model was loaded on (the CPU for a name or path), so that a model loaded on CUDA is run
    there without naming the device again."""
    if device is not None:
        device = resolve_device(device, via="device")
    loaded = as_loaded(loaded, "cpu" if device is None else device)
    if device is None:
        tensors = [*loaded.model.parameters(), *loaded.model.buffers()]
        device = tensors[0].device if tensors else "cpu"
    return loaded, torch.device(device)


def upsample_array(x: np.ndarray, sr_in: int, loaded: Loaded | str | os.PathLike, *, batch_size: int = 16,
                   window: int | None = None, device: str | torch.device | None = None,
                   warn: Callable[[str], None] | None = None, **speed: Any) -> np.ndarray:
    """Real low-rate audio in memory -> the prediction at ``loaded.sr``, as :func:`upsample_file` makes
    it: ``x`` of shape (frames,) or (frames, channels) at ``sr_in`` Hz in (float, or int16 / int32 PCM
    scaled as soundfile does; int64, numpy's default integer, is refused), float32 of the same shape
    with round(frames * loaded.sr / sr_in) frames out.
    ``loaded``: see :func:`as_loaded`. ``device``: default, the one the model was loaded on (the CPU
    for a name or path). ``speed``: see :func:`model_windows`. ``x`` may be a torch tensor (on a GPU,
    bf16 or requiring grad too); ``sr_in`` an int (a numpy one too), not a float."""
    check_speed("upsample_array", speed, ("batch_size", "window", "device", "warn", "progress"))
    if isinstance(x, torch.Tensor):  # np.asarray refused one that requires grad, on a GPU, or bf16
        x = x.detach().cpu()
        x = (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    x = np.asarray(x)
    if x.ndim not in (1, 2) or x.dtype.kind not in "fi" or (x.ndim == 2 and x.shape[1] < 1):
        raise AfilmError(f"audio must be a real array of shape (frames,) or (frames, channels), of float, or "
                         f"int16 / int32 PCM, not {x.dtype} {x.shape}")
    check_frames_first(x)
    if isinstance(sr_in, bool) or not isinstance(sr_in, (int, np.integer)) or sr_in < 1:
        whole = isinstance(sr_in, (float, np.floating)) and float(sr_in).is_integer() and sr_in >= 1
        raise AfilmError(f"sample rate must be a positive integer, not {sr_in!r}"
                         + (f" (pass int(sr): {int(sr_in)})" if whole else ""))
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise AfilmError("audio holds NaN or infinite samples")
    if x.dtype == np.int64:  # numpy's default integer (np.array of a list of ints), not a PCM format
        raise AfilmError("int64 audio is ambiguous (no PCM format has 64-bit samples; an array of "
                         "16-bit samples made from Python ints is int64): pass int16 or int32 PCM, as "
                         "soundfile reads it, or float (x / 32768 for 16-bit samples)")
    if x.dtype.kind == "i":  # integer PCM, as soundfile reads it with dtype='int16' / 'int32'
        x = x / float(2 ** (8 * x.dtype.itemsize - 1))
    loaded, device = placed(loaded, device)
    message = low_rate_warning(int(sr_in), loaded)
    if message:
        (warn or print_warning)(message)
    spline, length = real_pipeline(ArraySource(x), int(sr_in), loaded)
    y = predict(loaded, spline, length, batch_size=batch_size, window=window, device=device, **speed)
    return y[:, 0] if x.ndim == 1 else y


def check_frames_first(x: np.ndarray) -> None:
    """A channels-first array, (2, n) for stereo, would be taken as 2 frames of n channels: too short
    for a spline or, from 4 rows up, n channels of garbage. No real audio has that few frames and more
    channels than frames, so it is refused naming the shape to pass."""
    if x.ndim == 2 and x.shape[0] <= 8 and x.shape[1] > x.shape[0]:
        raise AfilmError(f"audio of shape {x.shape} looks channels-first: pass (frames, channels), as "
                         f"soundfile.read gives it (x.T, of shape {x.T.shape})")


def print_warning(message: str) -> None:
    print(f"afilm: warning: {message}", file=sys.stderr)


def simulate_paths(out_base: Path) -> dict[str, Path]:
    """``dir/name`` -> dir/name.lr.wav, .hr.wav, .pr.wav (as the reference, without its zero tail)."""
    return {k: out_base.with_name(f"{out_base.name}.{k}.wav") for k in ("lr", "hr", "pr")}


def simulate_file(path: str | os.PathLike, out_base: str | os.PathLike, loaded: Loaded | str | os.PathLike, *,
                  batch_size: int = 16, window: int | None = None, device: str | torch.device | None = None,
                  progress: Callable[[int], None] | None = None, degrade: str | None = None,
                  warn: Callable[[str], None] | None = None, **speed: Any) -> dict[str, Any]:
    """High-rate file -> <base>.lr.wav (at sr/r), <base>.hr.wav and <base>.pr.wav (at sr, same length);
    the low rate made by ``degrade`` (default: the checkpoint's recipe). ``warn``: for clipped samples.
    ``loaded``: see :func:`as_loaded`; ``device``: see :func:`placed`."""
    check_speed("simulate_file", speed, ("batch_size", "window", "device", "progress", "degrade", "warn"))
    loaded, device = placed(loaded, device)
    with contextlib.closing(open_source(path)) as src:
        check_simulate_rate(src.path, src.sr, loaded)
        with naming(path):
            hr, lr, spline, length = simulate_pipeline(src, src.sr, loaded, degrade)
        paths = simulate_paths(Path(out_base))
        for p in paths.values():
            check_not_input(p, src.path)
        low = loaded.low_rate
        if low.denominator != 1:
            raise AfilmError(f"the model's low rate {float(low):g} Hz is not a whole number; "
                             "a .lr.wav cannot be written at it")
        sub = _subtype(paths["pr"], src.subtype)
        plan = window_plan_for(loaded, length, window)
        written, clips = [], {}
        try:  # the three files are one result: a failure (disk full, Ctrl-C) removes those written
            clips["lr"] = _write_blocks(paths["lr"], _stage_blocks(lr), int(low), src.channels, sub)
            written.append(paths["lr"])
            clips["hr"] = _write_blocks(paths["hr"], _stage_blocks(hr), loaded.sr, src.channels, sub)
            written.append(paths["hr"])
            blocks = model_windows(loaded, spline, length, plan, batch_size=batch_size, device=device,
                                   progress=progress, **speed)
            clips["pr"] = _write_blocks(paths["pr"], blocks, loaded.sr, src.channels, sub)
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
        for key, found in clips.items():  # said once the set is complete (a failure removes it all)
            message = clip_warning(paths[key], *found, src.subtype, sub)
            if message:
                (warn or print_warning)(message)
        return {"input": str(src.path), "outputs": {k: str(v) for k, v in paths.items()},
                "frames_hr": length, "frames_lr": lr.length, "channels": src.channels}


# -------------------------------------------------------------------------------------- output paths
def default_output(path: Path) -> Path:
    suffix = path.suffix.lower() if path.suffix.lower() in (".wav", ".flac") else ".wav"
    return path.with_name(f"{path.stem}.afilm{suffix}")


def plan_outputs(inputs: list[Path], out: str | Path | None, simulate: bool) -> list[tuple[Path, Path]]:
    """(input file, output path) pairs; for --simulate the output is a base name for .lr/.hr/.pr.

    A folder input is searched recursively and mirrored into ``out`` (default ``<folder>.afilm``).
    ``out`` is a folder when it exists as one or, given as a string, ends with a path separator
    (``-o new_dir/``: Path() would drop the slash that says so)."""
    from afilm_cli.audio import find_audio_files, is_audio_file

    out_is_dir = isinstance(out, str) and out.endswith(("/", os.sep))
    out = Path(out) if out is not None else None
    several = len(inputs) > 1 or any(item.is_dir() for item in inputs)
    if out is not None and out.is_file() and (several or out_is_dir):  # said once, not once per input
        raise AfilmError(f"-o {out} is a file, not a folder" + ("; several inputs (or a folder) need a folder"
                                                                 if several else ""))
    if out is not None and not out_is_dir and not out.is_dir():
        # several outputs go into a folder: one named x.wav would be made and hold them all
        if several and is_audio_file(out):
            raise AfilmError(f"{out}: several inputs (or a folder) need a folder for -o, not an audio file "
                             "name (end it with / to make a new folder)")
        # the three outputs are WAV at their own rates: a .flac name would not be honoured
        if simulate and is_audio_file(out) and out.suffix.lower() != ".wav":
            raise AfilmError(f"{out}: --simulate writes WAV files (NAME.lr.wav, NAME.hr.wav, NAME.pr.wav); "
                             "give -o NAME or NAME.wav")
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        if item.is_dir():
            root = out if out is not None else _folder_output(item)
            found = find_audio_files(item)
            files = sorted(p for p in found if not _is_output(p))
            if files and len(files) < len(found):  # a rerun on a folder that holds a run's outputs
                left = len(found) - len(files)
                print_warning(f"{item}: {counted(left, 'file')} named as afilm's outputs "
                              "(*.afilm.wav, *.afilm.flac, *.lr/.hr/.pr.wav) left out; name "
                              f"{'them' if left != 1 else 'it'} to upsample {'them' if left != 1 else 'it'}")
            if not files and found:  # it held only afilm's outputs (DIR.afilm/): they are not taken again
                raise AfilmError(f"{item}: its {counted(len(found), 'audio file')} "
                                 f"{'are' if len(found) != 1 else 'is'} named as afilm's outputs (*.afilm.*, "
                                 "*.lr/.hr/.pr.wav), which a folder run leaves out; name the files to "
                                 "upsample them")
            if not files:
                raise AfilmError(f"{item}: no audio files in this folder")
            # x.wav and x.ogg side by side keep their extension in the name (x.ogg.afilm.wav): a folder
            # run has no -o per file to tell them apart
            stems = Counter(f.with_suffix("") for f in files)
            for f in files:
                rel = f.relative_to(item)
                named = rel if stems[f.with_suffix("")] == 1 else rel.with_name(rel.name + rel.suffix)
                target = root / rel.parent / (named.stem if simulate else default_output(named).name)
                pairs.append((f, target))
        else:
            if not item.exists():
                raise AfilmError(f"{item}: no such file")
            if not item.is_file():  # /dev/stdin, <(ffmpeg ...), a FIFO: it would be read once only
                raise AfilmError(f"{item}: a pipe or device, not a file, and a file is read more than "
                                 "once; give the audio on stdin as - (... | afilm upsample - -o out.wav) or "
                                 "save it to a file first")
            if out is not None and (len(inputs) > 1 or out_is_dir or out.is_dir()):
                target = out / (item.stem if simulate else default_output(item).name)
            elif out is not None:
                target = out.with_suffix("") if simulate and out.suffix.lower() == ".wav" else out
                if not simulate and out.suffix.lower() not in (".wav", ".flac"):
                    raise AfilmError(f"{out}: afilm writes WAV or FLAC; end the output name with .wav or "
                                     ".flac (or with / for a folder)")
            else:
                system = item.absolute().parts[1:2]
                if system in (("dev",), ("proc",)):  # /dev/stdin < x.wav is a file: its output went to /dev
                    raise AfilmError(f"{item}: its output would go beside it, into /{system[0]}; give "
                                     "-o OUT, or read stdin as - (afilm upsample - -o out.wav < in.wav)")
                target = item.with_name(item.stem) if simulate else default_output(item)
            pairs.append((item, target))
    # by the files, not their spelling (x.wav and $PWD/x.wav): the same input named twice, or in a folder
    # given too, is done once (its first output); two inputs for one output (a.wav, a.ogg) are refused
    done: set[Path] = set()
    writer: dict[Path, Path] = {}
    unique = []
    for src, target in pairs:
        if src.resolve() in done:
            continue
        if (first := writer.setdefault(target.resolve(), src)) is not src:
            raise AfilmError(f"{first} and {src} would both be written to {target}; upsample one of "
                             "them on its own with -o")
        done.add(src.resolve())
        unique.append((src, target))
    for src, target in unique:
        for path in (simulate_paths(target).values() if simulate else [target]):
            _check_name_length(src, path)
    _refuse_inputs_as_outputs(unique, simulate)  # up front, --force or not: nothing of the run is written
    return unique


def _check_name_length(src: Path, out: Path) -> None:
    """An output name longer than the file system takes (255 bytes on most; a long input name with
    .afilm.wav added) is refused up front; it was a bare 'File name too long' OSError."""
    try:
        limit = os.pathconf(next(p for p in out.absolute().parents if p.is_dir()), "PC_NAME_MAX")
    except (OSError, ValueError, StopIteration):
        limit = 255
    size = len(os.fsencode(out.name))
    if size > limit:
        raise AfilmError(f"{out}: the output's name is {size} bytes, and the file system takes at most "
                         f"{limit}; upsample {src} on its own with a shorter -o name")


def _refuse_inputs_as_outputs(pairs: list[tuple[Path, Path]], simulate: bool) -> None:
    """Any output that is any input (not only its own: a.wav a.afilm.wav) is refused; by file identity,
    as os.path.samefile compares, so a folder of many files is one stat per path."""
    # one that is not there (a dangling link in a folder) is no output's input: it is said, as unreadable,
    # when the inputs are read, and the others go on
    inputs = {_file_id(src): src for src, _ in pairs if src.exists()}
    for writer, target in pairs:
        for path in (simulate_paths(target).values() if simulate else [target]):
            src = inputs.get(_file_id(path)) if path.exists() else None
            if src is not None:
                raise _own_input_error(path, src, writer)


def check_not_input(out: Path, src: Path) -> None:
    """Refuse to write over an input: --force is for old outputs, and the input would be read while its
    replacement is written. The same file by any name (a symlink, a hard link, ./x.wav)."""
    if out.exists() and os.path.samefile(out, src):
        raise _own_input_error(out, src, src)


def _file_id(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _own_input_error(out: Path, src: Path, writer: Path) -> AfilmError:
    """``out``, written for the input ``writer``, is the input ``src`` (``writer`` itself, or another)."""
    what = f"the output of {writer} is the input itself ({out})" if src is writer else (
        f"the output of {writer}, {out}, is another input ({src})")
    return AfilmError(f"{what}: afilm does not write over an input, even with --force; "
                      "name another output with -o")


def _folder_output(folder: Path) -> Path:
    """DIR -> DIR.afilm beside it; "." and ".." by the folder's real name (they have none to extend)."""
    named = folder.resolve() if folder.name in ("", "..") else folder
    if not named.name:
        raise AfilmError(f"{folder}: name an output folder with -o (the root folder has no name to "
                         "put .afilm after)")
    return named.with_name(named.name + ".afilm")


def _is_output(p: Path) -> bool:
    """Named as an output of upsample (x.afilm.wav, x.ogg.afilm.flac) or --simulate (x.lr.wav ...)."""
    return p.name.lower().endswith((".afilm.wav", ".afilm.flac")) or p.name.endswith((".lr.wav", ".hr.wav",
                                                                                        ".pr.wav"))


def existing_outputs(pairs: list[tuple[Path, Path]], simulate: bool) -> list[Path]:
    found = []
    for _, target in pairs:
        if not isinstance(target, Path):  # stdout
            continue
        paths = list(simulate_paths(target).values()) if simulate else [target]
        found += [p for p in paths if p.exists()]
    return found
