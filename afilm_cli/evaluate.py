"""Evaluate a checkpoint and the cubic-spline baseline side by side (REFERENCE.md section 5).

Two sources of ground truth:
- an HDF5 patch file written by ``afilm prepare`` (or the reference): each patch is one row; the
  model sees the stored spline patches exactly as in training, the baseline *is* those patches;
- a folder of high-rate audio files: each file is one row; it is resampled (mono) to the model's
  rate, degraded with the checkpoint's recipe, spline-upsampled and run through the same windowed
  inference as ``afilm upsample --simulate``, and scored block by block as the model's output comes
  (metrics.Scores, metrics.Segmented): its memory does not grow with its length.

Metrics per row, for both the model and the spline: ``snr`` (whole signal), ``segsnr`` (the
reference's per-8192-patch SNR), ``lsd`` (log10 power, the later literature's convention) and
``lsd_ref`` (the reference code's convention). The summary is the mean over rows, but for an HDF5
split's ``lsd_ref``: one value over all its patches joined, as the reference computes it. Beside them, the
SNRs of the truth ideally low-passed at the low rate's Nyquist (``lowpass_truth``): what perfect
restoration of the input band scores without inventing anything above it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import shlex
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afilm_cli import __version__
from afilm_cli.atomic import atomic_path
from afilm_cli.audio import find_audio_files, is_audio_file, to_mono
from afilm_cli.errors import AfilmError
from afilm_cli.infer import (
    Loaded,
    check_degrade,
    check_positive,
    count_windows,
    model_windows,
    naming,
    placed,
    print_warning,
    simulate_pipeline,
    window_plan_for,
)
from afilm_cli.metrics import (
    ALL,
    LsdReference,
    Scores,
    Segmented,
    band_edges,
    band_energy,
    lowpass_truth,
    segmental_snr,
    snr,
)
from afilm_cli.plots import save_spectrograms
from afilm_cli.pretrained import bundled_name
from afilm_cli.stages import FileSource, Stage

SYSTEMS = ("model", "spline")
METRICS = tuple(ALL)
LOWPASS = "lowpass_truth"  # the truth low-passed at the low rate's Nyquist; SNRs only (its LSD: the floor's)
LOWPASS_METRICS = ("snr", "segsnr")


class BandTotals:
    """Signal and error energy per frequency band (metrics.band_edges), summed over every item.

    Where the model's gain over the spline comes from: the band the low-rate input still holds, the
    band its anti-aliasing filter attenuated, or the octaves above that the model must invent. Pooled
    over items (energies add), so the bands' errors sum to the pooled error energy."""

    def __init__(self, sr: int, r: int):
        self.sr = sr
        self.edges = band_edges(sr, r)
        self.energy = {k: np.zeros(len(self.edges) - 1) for k in ("signal", *SYSTEMS)}

    def add(self, hr: np.ndarray, **outputs: np.ndarray) -> None:
        self.energy["signal"] += band_energy(hr, self.sr, self.edges)
        for system, x in outputs.items():
            self.energy[system] += band_energy(np.asarray(hr, np.float64) - x, self.sr, self.edges)

    def add_energy(self, **energy: np.ndarray) -> None:
        """Energies per band already found (``signal`` and the systems' errors), as ``add`` adds them."""
        for key, e in energy.items():
            self.energy[key] += e

    def to_json(self) -> list[dict[str, float]]:
        """Per band: energies in dB relative to the signal's total energy, and the model's gain over
        the spline (dB; positive: less error)."""
        total = max(float(self.energy["signal"].sum()), 1e-20)
        def db(v: float) -> float:
            return float(10 * np.log10(max(v, 1e-20) / total))
        rows = []
        for i, (lo, hi) in enumerate(zip(self.edges[:-1], self.edges[1:], strict=True)):
            m, s = self.energy["model"][i], self.energy["spline"][i]
            rows.append({"lo_hz": lo, "hi_hz": hi, "signal_db": db(self.energy["signal"][i]),
                         "spline_error_db": db(s), "model_error_db": db(m),
                         "model_gain_db": float(10 * np.log10(max(s, 1e-20) / max(m, 1e-20)))})
        return rows


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    protocol: dict[str, Any]
    plots: list[Path] = field(default_factory=list)
    bands: BandTotals | None = None
    pooled: dict[str, dict[str, float]] = field(default_factory=dict)  # per system: taken over all rows

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        """Mean of every metric over the rows, per system (NaN-free: metrics are always finite), but
        for the values in ``pooled``, which are taken over all rows at once."""
        def mean(system: str, metrics: tuple[str, ...]) -> dict[str, float]:
            return {m: float(np.mean([row[f"{system}_{m}"] for row in self.rows])) for m in metrics}
        return {**{s: mean(s, METRICS) | self.pooled.get(s, {}) for s in SYSTEMS},
                LOWPASS: mean(LOWPASS, LOWPASS_METRICS)}

    def to_json(self) -> dict[str, Any]:
        out = {"summary": self.summary, "n_items": len(self.rows), "protocol": self.protocol}
        if self.bands is not None:
            out["bands"] = self.bands.to_json()
        return out


def _row(name: str, pred: np.ndarray, spline: np.ndarray, hr: np.ndarray, loaded: Loaded,
         patch: int) -> dict[str, Any]:
    row: dict[str, Any] = {"item": name, "frames": len(hr)}
    for system, x in (("model", pred), ("spline", spline)):
        values = {m: (fn(x, hr, patch=patch) if m == "segsnr" else fn(x, hr)) for m, fn in ALL.items()}
        row.update({f"{system}_{m}": values[m] for m in METRICS})
    low = lowpass_truth(hr, loaded.sr, float(loaded.low_rate) / 2)
    row.update({f"{LOWPASS}_snr": snr(low, hr), f"{LOWPASS}_segsnr": segmental_snr(low, hr, patch=patch)})
    return row


def model_label(protocol: dict[str, Any]) -> str:
    """``afilm_speech_r4 (afilm_small)`` for a bundled model, the architecture's name for others."""
    bundled = protocol.get("bundled")
    return f"{bundled} ({protocol['model_name']})" if bundled else protocol["model_name"]


def _protocol(loaded: Loaded, source: dict[str, Any], device: str | torch.device, segment: int
              ) -> dict[str, Any]:
    """``segment``: the samples per segment segsnr was taken over (an --data split's patch length, the
    checkpoint's patch for --wavs), said as used: it was written as 8192 whatever it was."""
    import scipy

    from afilm_cli.models import count_parameters

    return {
        "r": loaded.r, "sr": loaded.sr, "degrade": loaded.recipe["degrade"], "patch": loaded.recipe["patch"],
        "checkpoint_degrade": loaded.recipe["degrade"],
        "checkpoint": str(loaded.path), "model_name": loaded.ckpt["model_name"],
        "bundled": bundled_name(loaded.path),  # the name the bundled models go by, None for others
        "parameters": count_parameters(loaded.model),
        "input_level_dbfs": loaded.level_dbfs,  # the training data's; level_matched: the input brought to it
        "segment": segment,
        **source,
        "metrics": {"snr": "10 log10(sum ref^2 / sum err^2) over the whole item",
                    "segsnr": f"reference: mean over {segment}-sample segments (the reference: 8192) of "
                              "20 log10(rms(ref) / sqrt(mean(err^2 + 1e-6)) + 1e-8)",
                    "lsd": "log10 power clamped at 1e-8, n_fft 2048, hop 512, periodic Hann, centred "
                           "(reflect); RMS over frequency, mean over frames",
                    "lsd_ref": "reference: natural-log power + 1e-8, same STFT; RMS over frames, mean over "
                               "frequency, capped at 10",
                    "lowpass_truth": "the truth with every DFT bin at or above the low rate's Nyquist "
                                     "zeroed: perfect restoration of the input band, nothing invented above "
                                     "(items over 2^20 samples: per overlapping 2^20-sample segment)",
                    "summary": "mean over items, silent ones (truth all zero) skipped; with --data, "
                               "lsd_ref over all non-silent patches joined end to end, as the reference "
                               "computes it (over all patches: the same where none is silent)",
                    "bands": "energy per band (DFT of each item, or of its overlapping 2^20-sample segments "
                             "beyond 2^20 samples; Parseval-scaled), summed over the items "
                             "evaluated; dB relative to the signal's total energy; model_gain_db = spline "
                             "error / model error"},
        "device": str(device),
        "versions": {"afilm": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def silent_patches(pf, n: int, chunk: int = 256) -> np.ndarray:
    """Whether each of the first ``n`` patches of ``pf`` has an all-zero label (read in chunks)."""
    silent = np.zeros(n, dtype=bool)
    for a in range(0, n, chunk):
        label = np.asarray(pf.label[a : min(a + chunk, n)]).reshape(min(chunk, n - a), -1)
        silent[a : a + len(label)] = ~np.any(label, axis=1)
    return silent


SPLIT = "--data takes an HDF5 split of patches written by 'afilm prepare'"


def check_patch_input(path: str | os.PathLike) -> None:
    """Refuse in one line an --data file that is no split of patches, saying what it is: a Keras model
    (to import with 'afilm convert keras'), an afilm checkpoint or an audio file given for one, or an
    HDF5 file without the 'data' and 'label' datasets. "missing dataset 'data'" said none of that."""
    import h5py

    from afilm_cli.data.h5 import check_patch_path
    from afilm_cli.keras_io import looks_like_keras

    path = Path(path)
    check_patch_path(path)  # missing, or a folder
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        with open(path, "rb") as raw:
            head = raw.read(4)
        if head == b"PK\x03\x04" or path.suffix.lower() == ".pt":
            raise AfilmError(f"{path}: a PyTorch file (an afilm checkpoint?), not a split of patches: a "
                             f"checkpoint goes to --ckpt; {SPLIT}") from None
        if head in (b"RIFF", b"fLaC", b"OggS") or is_audio_file(path):
            raise AfilmError(f"{path}: an audio file, not a split of patches: --wavs takes a folder of audio "
                             f"files; {SPLIT}") from None
        raise AfilmError(f"{path}: not a readable HDF5 file ({exc}); {SPLIT}") from None
    with f:
        if "data" in f and "label" in f:
            return
        if looks_like_keras(f):
            convert = f"afilm convert keras {shlex.quote(str(path))}"
            raise AfilmError(f"{path}: a Keras model or weights file, not a split of patches; to evaluate "
                             f"it, import it with '{convert}' and pass the .pt it writes to --ckpt; {SPLIT}")
        names = sorted(f.keys())
        held = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "") or "nothing"
        raise AfilmError(f"{path}: not a split of patches (it holds {held}, not the 'data' and 'label' "
                         f"datasets); {SPLIT}")


def evaluate_h5(loaded: Loaded | str | os.PathLike, path: str | os.PathLike, *, batch_size: int = 16,
                device: str | torch.device | None = None, limit: int | None = None,
                plots_dir: Path | None = None, max_plots: int = 10,
                progress: Callable[[int], None] | None = None, total: Callable[[int], None] | None = None,
                warn: Callable[[str], None] | None = None, threads: int | str = "auto",
                outputs: Callable[[list[Path]], None] | None = None) -> EvalResult:
    """Every patch of an HDF5 split is one row: the model on the stored spline patch vs its label.
    A patch whose label is all zero is skipped (as a silent file in :func:`evaluate_wavs`), with one
    warning giving their count. Before the work, ``total`` hears the number of patches that
    ``progress`` will add up to, ``outputs`` the plot paths the run will write (none without
    ``plots_dir``; called once the input is checked, before the work), and ``warn`` that the
    data was degraded otherwise than the checkpoint's. ``threads``: CPU threads for torch, a number or
    "auto" (afilm_cli/threads.py). ``loaded`` and ``device``: as :func:`evaluate_wavs`."""
    from afilm_cli.data.h5 import PatchFile
    from afilm_cli.models import check_length, check_output, model_name_of
    from afilm_cli.threads import num_threads, resolve_threads

    for name, value in (("batch_size", batch_size), ("limit", limit)):
        if value is not None:  # 0 was a bare 'range() arg 3 must not be zero' or 'every one of 0 patches'
            check_positive(name, value)
    loaded, device = placed(loaded, device)
    n_threads = resolve_threads(threads, device)

    check_patch_input(path)  # a Keras file or a checkpoint said as such, not as "missing dataset 'data'"
    with PatchFile(path) as pf:
        rec = pf.recipe
        for key in ("r", "sr"):
            if rec.get(key) is not None and int(rec[key]) != int(loaded.recipe[key]):
                raise AfilmError(f"{pf.path}: data has {key}={rec[key]} but the checkpoint was trained with "
                                 f"{key}={loaded.recipe[key]}")
        note = None  # data degraded a way the checkpoint never saw: 'decimate' is in 'decimate+resample'
        if rec.get("degrade") is not None and not (set(str(rec["degrade"]).split("+"))
                                                   <= set(str(loaded.recipe["degrade"]).split("+"))):
            note = (f"data degraded with {rec['degrade']!r}, checkpoint trained with "
                    f"{loaded.recipe['degrade']!r}")
        multiple = int(getattr(loaded.model, "length_multiple", 1))
        pad = -pf.patch % multiple  # zero-pad patches the model cannot take as they are
        try:  # as train does: a model may refuse lengths beyond its multiple
            check_length(loaded.model, pf.patch + pad)
        except AfilmError as exc:
            raise AfilmError(f"{pf.path}: patches of {pf.patch} samples do not fit "
                             f"{model_name_of(loaded.model)!r}: {exc}") from None
        n = len(pf) if limit is None else min(limit, len(pf))
        # found before the work (labels only): the count is said, the total and plot names known
        silent = silent_patches(pf, n)
        n_silent = int(silent.sum())
        if n_silent == n:
            which = "the one patch evaluated is" if n == 1 else f"every one of the {n} patches evaluated is"
            raise AfilmError(f"{pf.path}: {which} silent (label all zero); nothing to evaluate")
        plotted = np.flatnonzero(~silent)[:max_plots] if plots_dir is not None else []
        if outputs:
            outputs([plots_dir / f"patch_{i:06d}.png" for i in plotted] if plots_dir is not None else [])
        if note and warn:  # said once no error can follow before the work
            warn(note)
        if n_silent:
            are, their = ("is", "its") if n_silent == 1 else ("are", "their")
            (warn or print_warning)(f"{pf.path}: {n_silent} of {n} patches {are} silent (label all zero): "
                                    f"skipped, since {their} SNR would swamp the means")
        if total:
            total(n - n_silent)
        rows, plots = [], []
        bands = BandTotals(loaded.sr, loaded.r)
        # the reference's LSD is one value over the split's patches joined end to end, not a mean of
        # per-patch values (a root of a mean is not a mean of roots); the rows keep the per-patch value
        joined = {s: LsdReference() for s in SYSTEMS}
        for a in range(0, n, batch_size):
            keep = np.flatnonzero(~silent[a : min(a + batch_size, n)])
            if not len(keep):
                continue
            data, label = pf.read(slice(a, min(a + batch_size, n)))  # one slice: faster than a selection
            data, label = data[keep], label[keep]
            if not (np.isfinite(data).all() and np.isfinite(label).all()):
                bad = a + int(keep[np.flatnonzero(~(np.isfinite(data) & np.isfinite(label)).all(axis=1))[0]])
                raise AfilmError(f"{pf.path}: patch {bad} holds NaN or Inf samples")
            x = torch.from_numpy(np.pad(data, ((0, 0), (0, pad)))[:, None, :]).to(device)
            with torch.inference_mode(), num_threads(n_threads):
                out = loaded.model(x)
                check_output(loaded.model, x, out)  # (B, 2, T) would be sliced to channel 0 unseen
                pred = out.float().cpu().numpy()[:, 0, : pf.patch]
            for i, index in enumerate(a + keep):
                name = f"patch_{index:06d}"
                rows.append(_row(name, pred[i], data[i], label[i], loaded, pf.patch))
                bands.add(label[i], model=pred[i], spline=data[i])
                if index in plotted:
                    lr = data[i][:: loaded.r]  # the spline passes through the LR samples at k*r
                    plots.append(_plot(plots_dir / f"{name}.png", lr, pred[i], label[i], loaded, name))
            for system, arr in (("model", pred), ("spline", data)):
                joined[system].add(arr.ravel(), label.ravel())
            if progress:
                progress(len(data))
        pooled = {s: {"lsd_ref": joined[s].value()} for s in SYSTEMS}
        source = {"data": str(pf.path), "data_kind": "h5", "data_recipe": {k: rec.get(k) for k in
                                                                           ("r", "sr", "degrade", "patch")},
                  "n_items": len(rows), "n_skipped_silent": n_silent,
                  "degrade": rec.get("degrade") or loaded.recipe["degrade"], "threads": threads,
                  "level_matched": False}  # patches scored as they are, as training validates
        if note:
            source["note"] = note
    return EvalResult(rows, _protocol(loaded, source, device, pf.patch), plots, bands, pooled)


def find_audio(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise AfilmError(f"{folder}: not a folder")
    files = sorted(find_audio_files(folder))
    if not files:
        raise AfilmError(f"{folder}: no audio files in this folder")
    return files


SILENT = "silent (every sample is zero)"
CANCELLED = "silent once its channels are mixed to mono (they cancel)"
SCAN_BLOCK = 1 << 18  # frames per read of the check's pass over a file


@dataclass
class WavCheck:
    windows: int  # model windows its evaluation takes
    channels: int
    silent: str | None  # why it is silent (SILENT or CANCELLED), None if not


def check_wav(path: Path, loaded: Loaded, window: int | None = None, degrade: str | None = None
              ) -> WavCheck:
    """What evaluating a high-rate file takes, or an AfilmError naming it and why it cannot be
    evaluated. Read through once: opening it says nothing of a truncated body, NaN samples or silence,
    which would otherwise show only when its turn came, after the files before it."""
    windows = count_windows(path, loaded, window, simulate=True, degrade=degrade)
    loud = mixed_loud = False
    with contextlib.closing(FileSource(path)) as src:
        for a in range(0, src.length, SCAN_BLOCK):
            block = src.read(a, min(a + SCAN_BLOCK, src.length)).astype(np.float32)
            loud = loud or bool(np.any(block))
            mixed_loud = mixed_loud or bool(np.any(to_mono(block)))  # as read_audio(mono=True) will see it
        channels = src.channels
    return WavCheck(windows, channels, None if mixed_loud else CANCELLED if loud else SILENT)


def plot_names(items: list[str]) -> dict[str, str]:
    """The PNG of each --wavs item: its path below the folder, separators as ``__``, no extension;
    where that would give two items one name (``a.wav`` and ``a.flac``), those keep their extension
    (``a.wav.png``), and a name still taken gets a number."""
    def stem(item: str) -> str:
        return item.replace(os.sep, "__").rsplit(".", 1)[0]
    counts = Counter(stem(item) for item in items)
    names, taken = {}, set()
    for item in items:
        base = stem(item) if counts[stem(item)] == 1 else item.replace(os.sep, "__")
        name, n = base, 1
        while name in taken:  # e.g. "x/y.wav" and "x__y.wav"
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        names[item] = name + ".png"
    return names


def evaluate_wavs(loaded: Loaded | str | os.PathLike, folder: str | os.PathLike, *, batch_size: int = 16,
                  device: str | torch.device | None = None, window: int | None = None,
                  limit: int | None = None, plots_dir: Path | None = None, max_plots: int = 10,
                  progress: Callable[[int], None] | None = None, total: Callable[[int], None] | None = None,
                  degrade: str | None = None, warn: Callable[[str], None] | None = None,
                  threads: int | str = "auto", outputs: Callable[[list[Path]], None] | None = None,
                  match_level: bool = True) -> EvalResult:
    """Every high-rate file is one row, simulated exactly as ``afilm upsample --simulate`` does, the
    low rate made by ``degrade`` (default: the checkpoint's recipe). Before the work, every file is
    checked (:func:`check_wav`); one that cannot be evaluated (unreadable, below the model's rate, too
    short, ...) or is silent is skipped and ``warn`` told why: a silent one because any output scores
    about -80 dB SNR against silence, which would swamp the means. Only a folder with no usable file
    is an error. Then ``total`` hears the number of model windows that ``progress`` will add up to (per
    window, so that a long file moves a bar) and ``outputs`` the plot paths the run will write (none
    without ``plots_dir``; called once the files are checked, before the work). A file that cannot be
    read when its turn comes (changed since the check) is skipped and said as the others.
    ``threads``: as ``afilm upsample --threads`` (afilm_cli/windows.py); ``match_level``: as
    ``afilm upsample`` does, the model's input at its training level (afilm_cli/level.py).
    ``loaded``: load_model's result, a bundled model's name or a checkpoint path (infer.as_loaded);
    ``device``: default, the one the model is on (infer.placed)."""
    for name, value in (("batch_size", batch_size), ("window", window), ("limit", limit)):
        if value is not None:  # said as such up front: 0 skipped every file, -1 left the last one out
            check_positive(name, value)
    if degrade is not None:
        check_degrade(degrade)
    from afilm_cli.threads import resolve_threads

    loaded, device = placed(loaded, device)  # a bad device is one line, not torch's list of device types
    resolve_threads(threads, device)  # a bad setting is the run's error, not each file's
    folder = Path(folder)
    files = find_audio(folder)[:limit]
    # every file checked first: a bad one is known before the long part, and one bad file among
    # thousands costs its row, not the run
    usable: list[tuple[Path, int]] = []
    skipped: list[dict[str, str]] = []  # every file left out, with why
    failures: list[AfilmError] = []
    multichannel = 0
    for path in files:
        item = str(path.relative_to(folder))
        try:
            check = check_wav(path, loaded, window, degrade)
        except AfilmError as exc:
            failures.append(exc)
            skipped.append({"item": item, "reason": str(exc).removeprefix(f"{path}: ")})
            continue
        if check.silent:
            skipped.append({"item": item, "reason": check.silent})
        else:
            usable.append((path, check.windows))
            multichannel += check.channels > 1
    if not usable:
        if not failures:
            raise AfilmError(f"{folder}: every file is silent; nothing to evaluate")
        if len(files) == 1:
            raise failures[0]
        raise AfilmError(f"{folder}: none of the {len(files)} files can be evaluated ({len(failures)} "
                         f"unusable, {len(skipped) - len(failures)} silent); the first: {failures[0]}")
    names = [str(path.relative_to(folder)) for path, _ in usable]
    plotted = plot_names(names[:max_plots]) if plots_dir is not None else {}
    if outputs:
        outputs([plots_dir / png for png in plotted.values()])
    for s in skipped:
        why = f"{s['reason']}: skipped" + (", since its SNR would swamp the means"
                                           if s["reason"] in (SILENT, CANCELLED) else "")
        (warn or print_warning)(f"{folder / s['item']}: {why}")
    if multichannel:  # said once: a folder of stereo files would otherwise warn per file
        which = ("its one file has" if len(usable) == 1 else  # "1 of the 1 files have"
                 f"{multichannel} of the {len(usable)} files {'has' if multichannel == 1 else 'have'}")
        each = "it" if multichannel == 1 else "each"
        (warn or print_warning)(f"{folder}: {which} several channels; {each} is scored as the mean of its "
                                "channels (mono)")
    if total:
        total(sum(n for _, n in usable))
    rows, plots = [], []
    bands = BandTotals(loaded.sr, loaded.r)
    said = 0  # windows of the current file told to ``progress``: one failing part-way still says all

    def step(k: int) -> None:
        nonlocal said
        said += k
        if progress:
            progress(k)

    for (path, n_windows), name in zip(usable, names, strict=True):
        said = 0
        try:
            row, energy, head = _score_wav(path, loaded, degrade, window, name in plotted,
                                           batch_size=batch_size, device=device, progress=step,
                                           threads=threads, match_level=match_level)
        except AfilmError as exc:  # changed since the check: its row is lost, not the run's
            skipped.append({"item": name, "reason": str(exc).removeprefix(f"{path}: ")})
            (warn or print_warning)(f"{exc}: skipped")
            if progress and n_windows > said:
                progress(n_windows - said)
            continue
        rows.append({"item": name, **row})
        bands.add_energy(**energy)
        if head is not None:
            lr, pred, hr, whole = head
            title = name if whole else f"{name} (first {PLOT_SECONDS:g} s)"
            plots.append(_plot(plots_dir / plotted[name], lr, pred, hr, loaded, title))
    if not rows:  # every usable file failed when its turn came: no summary of nothing
        which = ("the one usable file could not" if len(usable) == 1 else
                 f"none of the {len(usable)} usable files could")
        raise AfilmError(f"{folder}: {which} be read when evaluated; see the warnings above")
    plan = window_plan_for(loaded, 1 << 30, window)
    source = {"data": str(folder), "data_kind": "wavs", "n_items": len(rows),
              # skipped_silent: the names alone, as before `skipped` (every file left out, with why)
              "skipped_silent": [s["item"] for s in skipped if s["reason"] in (SILENT, CANCELLED)],
              "skipped": skipped,
              "mono": True, "degrade": degrade or loaded.degrade,
              "window": {"window": plan.window, "context": plan.context, "fade": plan.fade, "hop": plan.hop},
              "resampler": "scipy.signal.resample_poly (Kaiser 5.0)", "threads": threads,
              "level_matched": match_level and loaded.level_dbfs is not None}
    return EvalResult(rows, _protocol(loaded, source, device, int(loaded.recipe["patch"])), plots, bands)


PLOT_SECONDS = 30.0  # of a file, at most, in its --plots spectrograms: they are held whole


class MonoFile(Stage):
    """A file's samples as ``read_audio(path, mono=True)`` gives them (float32, channels averaged),
    read in blocks."""

    def __init__(self, src: FileSource):
        self.src, self.length, self.channels = src, src.length, 1

    def _read(self, start, stop):
        return to_mono(self.src.read(start, stop).astype(np.float32)).reshape(-1, 1)


def _score_wav(path: Path, loaded: Loaded, degrade: str | None, window: int | None, plot: bool, **run: Any
               ) -> tuple[dict[str, Any], dict[str, np.ndarray], tuple | None]:
    """One --wavs file's row (but its name), its band energies, and with ``plot`` (LR, prediction,
    HR, whether whole) for its spectrograms: up to PLOT_SECONDS. The file is read, simulated, run
    through the model and scored block by block (the model's output blocks), so its memory does not
    grow with its length. ``run``: model_windows's options."""
    with naming(path), contextlib.closing(FileSource(path)) as src:
        hr_stage, lr_stage, spline_stage, length = simulate_pipeline(MonoFile(src), src.sr, loaded, degrade)
        patch = int(loaded.recipe["patch"])
        scores = {s: Scores(patch) for s in SYSTEMS}
        low = Scores(patch, spectral=False)
        spectra = Segmented(length, 1 + len(SYSTEMS), loaded.sr, band_edges(loaded.sr, loaded.r),
                            float(loaded.low_rate) / 2)
        shown = min(length, round(PLOT_SECONDS * loaded.sr)) if plot else 0
        heads: list[tuple[np.ndarray, np.ndarray]] = []
        plan = window_plan_for(loaded, length, window)
        a = 0
        for block in model_windows(loaded, spline_stage, length, plan, **run):
            b = a + len(block)
            pred, hr, spline = block[:, 0], hr_stage.read(a, b)[:, 0], spline_stage.read(a, b)[:, 0]
            scores["model"].add(pred, hr)
            scores["spline"].add(spline, hr)
            for lowpassed, truth in spectra.add(np.stack([hr, hr - pred, hr - spline], axis=1)):
                low.add(lowpassed, truth)
            if a < shown:
                heads.append((pred[: shown - a], hr[: shown - a]))
            a = b
        row: dict[str, Any] = {"frames": length}
        for system in SYSTEMS:
            row |= {f"{system}_{m}": v for m, v in scores[system].values().items()}
        row |= {f"{LOWPASS}_{m}": v for m, v in low.values().items()}
        energy = dict(zip(("signal", *SYSTEMS), spectra.energy, strict=True))
        head = None
        if plot:
            lr = lr_stage.read(0, -(-shown // loaded.r))[:, 0]
            head = (lr, *(np.concatenate(x) for x in zip(*heads, strict=True)), shown == length)
    return row, energy, head


def _plot(path: Path, lr: np.ndarray, pred: np.ndarray, hr: np.ndarray, loaded: Loaded, title: str) -> Path:
    return save_spectrograms(path, [("LR input", lr, float(loaded.low_rate)), ("prediction", pred, loaded.sr),
                                    ("HR truth", hr, loaded.sr)], title=title)


def result_paths(out_dir: Path) -> tuple[Path, Path]:
    return out_dir / "metrics.csv", out_dir / "summary.json"


def write_results(result: EvalResult, out_dir: str | os.PathLike, *,
                  force: bool = False) -> tuple[Path, Path]:
    """metrics.csv (one row per item) and summary.json (summary + protocol), atomically."""
    csv_path, json_path = result_paths(Path(out_dir))
    existing = [p for p in (csv_path, json_path) if p.exists()]
    if existing and not force:
        raise AfilmError(f"{existing[0]} exists; pass --force to overwrite or --out for another folder")
    columns = (["item", "frames"] + [f"{s}_{m}" for s in SYSTEMS for m in METRICS]
               + [f"{LOWPASS}_{m}" for m in LOWPASS_METRICS])
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in result.rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return csv_path, json_path


__all__ = ["EvalResult", "evaluate_h5", "evaluate_wavs", "write_results"]
