"""The reference data recipe (REFERENCE.md section 1) as a streaming file -> patches pipeline.

Per file: read (mono float32) -> resample to ``sr`` (scipy resample_poly; with ``speed`` factors,
training files once per factor, played that much faster: see :func:`speed_rates`) -> crop to a multiple of
``r`` -> degrade (``decimate`` | ``resample`` | ``subsample``, or several joined by ``+``: the file's
patches once per method) -> cubic spline back to the high rate -> patches of
``patch`` samples every ``stride`` samples, each kept with probability ``sam`` (seeded). After all
files the patch count is cropped to a multiple of ``multiple`` (reference: 128, the batch multiple).

Files are processed one at a time and their patches appended to the HDF5 output through
:class:`~afilm_cli.data.h5.PatchWriter`, so memory is bounded by the longest file, not the corpus.

Output naming (what ``afilm train`` looks for by default)::

    <out>/<name>-r<r>-<degrade>[-sr<sr>]-train.h5
    <out>/<name>-r<r>-<degrade>[-sr<sr>]-val.h5

``name`` is the dataset and split (``vctk-single``, ``vctk-multi``, or a folder's name); ``-sr<sr>``
appears only when ``sr`` is not 16000. Different r/split/degrade therefore never share a file, and
the other recipe fields (patch, stride, sam, seed, split rule) are checked on a rerun. See
:func:`default_output_paths`, :data:`TRAIN_GLOB`/:data:`VAL_GLOB` and :func:`find_prepared`.
Whatever the stem, the rule is required of every dataset, plugins included (``cli.run_prepare`` checks it
before writing): a training output is named ``<stem>-train.h5`` and its validation output
``<stem>-val.h5`` in the same folder, the names ``afilm train`` finds and pairs them by.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from afilm_cli import audio
from afilm_cli.data.h5 import PatchWriter, locked
from afilm_cli.errors import AfilmError
from afilm_cli.interrupts import CtrlC

DEFAULT_SR = 16000
TRAIN_GLOB = "*-train.h5"
VAL_GLOB = "*-val.h5"
# Recipe fields a rerun compares with an existing output before skipping it.
CHECKED_ATTRS = ("r", "sr", "patch", "stride", "degrade", "sam", "seed", "multiple", "split", "speed")
# Values of recipe fields added after outputs were first written: a file without the attribute had it.
ATTR_DEFAULTS = {"speed": "1"}
# The multiple of which every built-in network takes its input length (UNetConfig.length_multiple in
# afilm_cli/models/unet.py: 256 for afilm, tfilm, each preset and the bundled models). A constant, so
# that prepare imports no torch; tests/test_prepare.py checks it against the models.
MODEL_LENGTH_MULTIPLE = 256


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the patches of one corpus (recorded in the HDF5 attributes)."""

    r: int
    sr: int = DEFAULT_SR
    patch: int = 8192
    stride: int = 4096
    degrade: str = "decimate"
    sam: float = 1.0
    seed: int = 0
    multiple: int = 128
    speed: str = "1"  # comma-separated factors for the training split (see speed_rates)

    def validate(self) -> Recipe:
        if self.r < 2:
            raise AfilmError(f"--r must be an integer >= 2, got {self.r}")
        if self.patch < 1 or self.patch % self.r:
            raise AfilmError(f"--r {self.r} does not divide the patch length {self.patch}; "
                             f"pick r dividing it (the paper uses 2, 4, 8) or change --patch")
        if self.sr < 1 or self.sr % self.r:
            raise AfilmError(f"--r {self.r} does not divide the sample rate {self.sr}: the low rate "
                             f"sr/r must be a whole number of Hz")
        if self.stride < 1:
            raise AfilmError(f"--stride must be >= 1, got {self.stride}")
        if not 0.0 < self.sam <= 1.0:
            raise AfilmError(f"--sam must be in (0, 1], got {self.sam}")
        audio.degrade_methods(self.degrade)
        if self.multiple < 1:
            raise AfilmError(f"--multiple must be >= 1, got {self.multiple}")
        speed_rates(self.speed, self.sr)
        return self

    def attrs(self) -> dict[str, Any]:
        return asdict(self)

    def for_part(self, part: str) -> Recipe:
        """The recipe one split is made with: validation is never speed-perturbed."""
        return self if part == "train" else replace(self, speed="1")


def patch_warning(recipe: Recipe) -> str | None:
    """The one-line warning for a patch length the built-in networks cannot train on, naming the nearest
    lengths that they and --r both take; None where they can. A warning, not an error: a plugin's model
    may take it."""
    if recipe.patch % MODEL_LENGTH_MULTIPLE == 0:
        return None
    step = math.lcm(MODEL_LENGTH_MULTIPLE, recipe.r)
    lower = recipe.patch // step * step
    near = f"{lower} or {lower + step}" if lower else f"{step}"
    return (f"--patch {recipe.patch} is not a multiple of {MODEL_LENGTH_MULTIPLE}: the built-in networks "
            "(afilm, tfilm, their presets and the bundled models) cannot train on it ('afilm train' refuses "
            f"it); nearest valid: {near} (a plugin model may take {recipe.patch})")


def speed_rates(speed: str, sr: int) -> list[int]:
    """The rates a file is resampled to, one per speed factor, before it is taken as ``sr`` audio.

    Speed perturbation (Ko et al., Interspeech 2015; Kaldi's and lhotse's 0.9,1.0,1.1): resampling
    to sr/f and playing at sr makes the file f times faster, pitch and formants scaled by f: new
    voices from the same speech, for corpora too small to generalise from. sr/f is rounded to 10 Hz
    (a factor off by at most 0.03%) so the polyphase filter stays short."""
    try:
        factors = [float(f) for f in str(speed).split(",")]
    except ValueError:
        raise AfilmError(f"--speed takes comma-separated factors such as 0.9,1,1.1, got {speed!r}") from None
    if not factors or any(not 0.5 <= f <= 2.0 for f in factors):
        raise AfilmError(f"--speed factors must be between 0.5 and 2, got {speed!r}")
    rates = [sr if f == 1.0 else max(10, round(sr / f / 10) * 10) for f in factors]
    if len(set(rates)) < len(rates):
        raise AfilmError(f"--speed {speed!r} repeats a factor")
    return rates


def file_signals(path: str | os.PathLike, recipe: Recipe) -> list[tuple[np.ndarray, np.ndarray]]:
    """Steps 1-4 on one file: (spline-upsampled LR, HR) pairs, float32 of the same length, one per
    speed factor of ``recipe.speed`` and method of ``recipe.degrade`` (``decimate+resample``: the
    same HR degraded both ways).

    Raises AfilmError for unreadable/empty/non-finite/silent files, files below the high rate and
    files shorter than one patch.
    """
    x, sr_in = audio.read_audio(path, mono=True)
    if not np.any(x):  # nothing to learn from, and all-zero patches score -160 dB segmental SNR
        raise AfilmError(f"{path}: silent (every sample is zero)")
    _check_rate(path, sr_in, recipe)
    pairs = []
    for rate in speed_rates(recipe.speed, recipe.sr):
        hr = audio.resample(x, sr_in, rate)  # taken as recipe.sr audio from here on
        if len(hr) < recipe.patch:
            continue  # a sped-up version can fall short where the others do not
        for method in audio.degrade_methods(recipe.degrade):
            hr_m, _, up = audio.simulate_lr(hr, recipe.r, method)
            pairs.append((up, hr_m))
    if not pairs:
        raise _too_short(path, len(x), sr_in, recipe)
    return pairs


def _check_rate(path, sr_in: int, recipe: Recipe) -> None:
    if sr_in < recipe.sr:  # upsampled, its labels would be empty above sr_in / 2: a model learns silence
        raise AfilmError(f"{path}: {sr_in} Hz is below the high rate --sr {recipe.sr} Hz, so it cannot give "
                         f"labels (nothing above {sr_in / 2:g} Hz)")


def _too_short(path, n: int, sr_in: int, recipe: Recipe) -> AfilmError:
    return AfilmError(f"{path}: {n / sr_in:.2f} s is shorter than one patch "
                      f"({recipe.patch} samples at {recipe.sr} Hz)")


def check_usable(path: str | os.PathLike, recipe: Recipe, *, header_only: bool = False) -> None:
    """Raise the AfilmError :func:`file_signals` would for ``path`` (unreadable, empty, NaN, silent, below
    the high rate, shorter than one patch), without resampling or degrading it. ``header_only``: from
    the header alone, reading no sample (silence and NaN go unseen): a quick pass over a corpus."""
    if header_only:
        from afilm_cli.stages import FileSource  # opening it reads the header and says what is wrong

        with contextlib.closing(FileSource(path)) as src:
            n, sr_in = src.length, src.sr
    else:
        x, sr_in = audio.read_audio(path, mono=True)
        n = len(x)
        if not np.any(x):
            raise AfilmError(f"{path}: silent (every sample is zero)")
    _check_rate(path, sr_in, recipe)
    if all(_resampled_length(n, sr_in, rate) < recipe.patch for rate in speed_rates(recipe.speed, recipe.sr)):
        raise _too_short(path, n, sr_in, recipe)


def _resampled_length(n: int, sr_in: int, sr_out: int) -> int:
    """len(audio.resample(x, sr_in, sr_out)) for len(x) == n: resample_poly gives ceil(n * up / down)."""
    g = math.gcd(sr_in, sr_out)
    return -(-n * (sr_out // g) // (sr_in // g))


def extract_patches(up: np.ndarray, hr: np.ndarray, recipe: Recipe,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Step 5: patches at offsets range(0, len - patch + 1, stride), each kept with prob. ``sam``.

    One uniform draw per candidate patch, in order (as the reference, but from a seeded generator).
    """
    starts = np.arange(0, len(hr) - recipe.patch + 1, recipe.stride)
    keep = starts[rng.random(len(starts)) <= recipe.sam]
    idx = keep[:, None] + np.arange(recipe.patch)[None, :]
    return up[idx], hr[idx]


@dataclass
class SplitPlan:
    """One output file: which sources go into it. ``sources`` are (path, speaker) pairs."""

    part: str  # "train" or "val"
    out: Path
    sources: list[tuple[Path, str]]


@dataclass
class SplitResult:
    part: str
    out: Path
    files: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    speakers: int = 0
    seconds_audio: float = 0.0
    patches: int = 0
    seconds: float = 0.0
    status: str = "written"  # written | exists | empty


class _NoPatches(Exception):
    """Raised inside the writer to discard an output that would be empty."""


Warn = Callable[[str], None]


def prepare_split(plan: SplitPlan, recipe: Recipe, *, root: Path | None = None,
                  extra_attrs: dict[str, Any] | None = None, warn: Warn | None = None,
                  advance: Callable[[], None] | None = None) -> SplitResult:
    """Run the recipe over ``plan.sources`` and write ``plan.out`` atomically.

    A file that cannot be used (corrupt, empty, too short, NaN/Inf, silent) is skipped with a
    warning and listed in the result. With no patch at all nothing is written (status "empty").
    Fewer than ``recipe.multiple`` patches are kept uncropped, with a warning, rather than cropped to 0.
    """
    warn = warn or (lambda msg: None)
    result = SplitResult(plan.part, plan.out)
    rng = np.random.default_rng(recipe.seed)  # per output, so a skipped train does not shift val
    speakers: set[str] = set()
    used: list[str] = []
    t0 = time.perf_counter()
    recipe = recipe.for_part(plan.part)
    attrs = {**recipe.attrs(), **(extra_attrs or {}), "part": plan.part}
    methods = len(audio.degrade_methods(recipe.degrade))
    if root is not None:
        attrs["source_root"] = str(Path(root).resolve())
    try:
        with CtrlC() as stop, PatchWriter(plan.out, recipe.patch, attrs) as writer:
            for path, speaker in plan.sources:
                if stop.flag:  # acted on between files (afilm_cli/interrupts.py says why)
                    raise KeyboardInterrupt
                try:
                    pairs = file_signals(path, recipe)
                except AfilmError as exc:
                    result.skipped.append((str(path), str(exc)))
                    warn(f"skipped {exc}")
                else:
                    for up, hr in pairs:
                        writer.append(*extract_patches(up, hr, recipe, rng))
                    result.files += 1
                    # high-rate audio the patches come from: each speed version once, not per method
                    result.seconds_audio += sum(len(hr) for _, hr in pairs) / methods / recipe.sr
                    speakers.add(speaker)
                    used.append(_rel(path, root))
                if advance:
                    advance()
            if writer.count == 0:
                raise _NoPatches
            if writer.count < recipe.multiple:
                warn(f"{plan.out.name}: only {writer.count} patches, fewer than --multiple "
                     f"{recipe.multiple}; keeping all of them instead of none")
            else:
                writer.finish(recipe.multiple)
            writer.attrs["sources"] = used
            writer.attrs["skipped"] = [_rel(Path(f), root) for f, _ in result.skipped]  # as "sources"
            result.patches = writer.count
    except _NoPatches:
        result.status = "empty"
    result.speakers = len(speakers)
    result.seconds = time.perf_counter() - t0
    return result


def _rel(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def existing_output_ok(out: Path, attrs: dict[str, Any]) -> bool:
    """True if ``out`` is a finished output of the same recipe (so a rerun may skip it).

    Raises AfilmError when it exists with a different recipe: silently reusing it would train on
    data the user did not ask for.
    """
    if not out.exists():
        return False
    if out.is_dir():  # "not readable, --force to rebuild it" misled: --force cannot write over a folder
        raise AfilmError(f"{out}: is a folder, where this run writes its output; move it away or use another "
                         "--out")
    try:
        with h5py.File(out, "r") as f:
            found = {k: _plain(f.attrs[k]) if k in f.attrs else ATTR_DEFAULTS.get(k) for k in CHECKED_ATTRS}
            listed = _plain(f.attrs["split_sources"]) if "split_sources" in f.attrs else None
            source_root = _plain(f.attrs["source_root"]) if "source_root" in f.attrs else None
    except OSError as exc:
        if locked(exc):  # the file is fine: "not readable, --force to rebuild it" misled
            raise AfilmError(f"{out}: exists, and another process has it open for writing (HDF5 file "
                             "lock), so its recipe cannot be checked; close it there and run this again, "
                             "or pass --force to write a new one in its place (that process keeps the old "
                             "one)") from None
        raise AfilmError(f"{out}: exists but is not a readable HDF5 file; "
                         "use --force to rebuild it") from None
    want = {k: _plain(attrs[k]) for k in CHECKED_ATTRS if k in attrs}
    diff = [f"{k}={found.get(k)!r} (asked {v!r})" for k, v in want.items() if found.get(k) != v]
    if diff:
        raise AfilmError(f"{out} exists with a different recipe: {', '.join(diff)}; "
                         f"use --force to rebuild it or --out for another folder")
    # another folder's files under the same names (two 'clips' folders into one --out) fingerprint alike
    if source_root is not None and attrs.get("source_root") not in (None, source_root):
        raise AfilmError(f"{out} was prepared from the files in {source_root}, not {attrs['source_root']}; "
                         "use --force to rebuild it from these, or another --out to keep both")
    # outputs written before this attribute existed carry none: they are taken on their recipe alone
    if listed is not None and "split_sources" in attrs and listed != attrs["split_sources"]:
        raise AfilmError(f"{out} was prepared from another list of files (files added, removed or split "
                         "otherwise since): reusing it beside a rebuilt split could put a file in both "
                         "train and val; use --force to rebuild every split")
    return True


def split_fingerprint(plans: list[SplitPlan], root: Path | None) -> str:
    """SHA-256 of every split's file list: outputs of one run share it, so a rerun can tell whether a
    kept output came from the same division of the same files as the one it is about to rebuild."""
    lists = {plan.part: sorted(_rel(path, root) for path, _ in plan.sources) for plan in plans}
    return hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.dumps(json.loads(value), sort_keys=True)
        except ValueError:
            return value
    return value


def output_stem(name: str, r: int, degrade: str, sr: int = DEFAULT_SR) -> str:
    stem = f"{name}-r{r}-{degrade}"
    return stem if sr == DEFAULT_SR else f"{stem}-sr{sr}"


def default_output_paths(name: str, r: int, degrade: str, sr: int = DEFAULT_SR,
                         out: str | os.PathLike = "data") -> dict[str, Path]:
    """``{"train": <out>/<name>-r<r>-<degrade>-train.h5, "val": ...-val.h5}`` (see module doc)."""
    stem = output_stem(name, r, degrade, sr)
    return {part: Path(out) / f"{stem}-{part}.h5" for part in ("train", "val")}


def val_path_for(train_path: str | os.PathLike) -> Path:
    """The validation file that goes with a training file (``...-train.h5`` -> ``...-val.h5``)."""
    p = Path(train_path)
    if not p.name.endswith("-train.h5"):
        raise AfilmError(f"{p}: expected a name ending in -train.h5")
    return p.with_name(p.name[: -len("-train.h5")] + "-val.h5")


def read_split_sources(path: str | os.PathLike) -> str | None:
    """The file-list fingerprint of the run that wrote ``path`` (:func:`split_fingerprint`); None for an
    output written before it was recorded, or an unreadable file (PatchFile says why when it opens it)."""
    try:
        with h5py.File(path, "r") as f:
            return _plain(f.attrs["split_sources"]) if "split_sources" in f.attrs else None
    except OSError:
        return None


def find_prepared(out: str | os.PathLike = "data") -> list[tuple[Path, Path | None]]:
    """(train, val or None) pairs under ``out``, newest training file first."""
    trains = sorted(Path(out).glob(TRAIN_GLOB), key=lambda p: p.stat().st_mtime, reverse=True)
    return [(t, v if (v := val_path_for(t)).exists() else None) for t in trains]


def pick_fraction(items: Sequence, fraction: float, seed: int,
                  usable: Callable[[Any], bool] | None = None) -> set:
    """A deterministic (by seed) subset of about ``fraction`` of ``items`` (at least 1, at most n-1).

    Used to hold out validation files or speakers of a corpus without the reference split. With
    ``usable``, only items it passes are picked: it is asked in the seeded order until the subset is
    complete and one more usable item is left for training (fewer picks where too few pass), so only
    about ``fraction`` of the items are tested. Where every item passes, the subset is the one picked
    without ``usable``.
    """
    if not 0.0 <= fraction < 1.0:
        raise AfilmError(f"--val-fraction must be in [0, 1), got {fraction}")
    n = len(items)
    if fraction == 0.0 or n < 2:
        return set()
    k = min(max(1, math.floor(fraction * n + 0.5)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    if usable is None:
        return {items[i] for i in order[:k]}
    picked: list = []
    for i in order:
        if usable(items[i]):
            if len(picked) == k:  # one usable item is left for training: the subset stands
                return set(picked)
            picked.append(items[i])
    return set(picked[:-1])  # every usable item was picked: the last goes back to training
