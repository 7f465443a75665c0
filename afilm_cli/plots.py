"""Spectrogram figures: low-rate input, prediction and high-rate truth side by side.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global state), so it is
safe in tests, on servers and in threads.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from afilm_cli.atomic import atomic_path
from afilm_cli.metrics import stft

N_FFT, HOP = 512, 128
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MARK = "afilm "  # how the PNG's Software text starts: what tells a PNG written here from any other


def log_spectrogram(x: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """Power in dB, (freq, frames); floored at -120 dB so silence plots as a flat dark field."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if len(x) == 0:
        x = np.zeros(1)
    return 10.0 * np.log10(np.abs(stft(x, n_fft, hop)) ** 2 + 1e-12)


def save_spectrograms(path: str | os.PathLike, panels: list[tuple[str, np.ndarray, float]], *,
                      title: str | None = None, max_freq: float | None = None) -> Path:
    """One PNG with a spectrogram per (label, signal, sample rate) panel, on a shared frequency axis
    up to ``max_freq`` (default: the highest Nyquist), so a low-rate panel shows its empty band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    max_freq = max_freq or max(sr for *_, sr in panels) / 2
    specs = []
    for label, x, sr in panels:  # same frequency resolution in every panel: n_fft scales with the rate
        n_fft = max(16, int(N_FFT * sr / (2 * max_freq)) // 2 * 2)
        specs.append((label, log_spectrogram(x, n_fft, n_fft // 4), len(x), sr))
    top = max(float(s.max()) for _, s, _, _ in specs)
    fig = Figure(figsize=(4.2 * len(panels), 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    image = None
    for ax, (label, spec, n, sr) in zip(axes, specs, strict=True):
        duration = n / sr
        image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=top - 100, vmax=top,
                          extent=(0.0, duration, 0.0, sr / 2), interpolation="nearest")
        ax.set_ylim(0, max_freq)
        ax.set_facecolor("black")  # above a panel's own Nyquist: nothing, drawn as silence
        ax.set_title(f"{label} ({sr / 1000:g} kHz)")
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("frequency (Hz)")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="dB", fraction=0.03)
    if title:  # as written: a file's name with two '$' was mathtext (mangled, or a traceback)
        fig.suptitle(title, parse_math=False)
    path = Path(path)
    import matplotlib

    from afilm_cli import __version__

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png",
                    metadata={"Software": f"{MARK}{__version__} (matplotlib {matplotlib.__version__})"})
    return path


def written_here(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG that :func:`save_spectrograms` wrote: its Software text (read from the
    chunks before the image data) starts with :data:`MARK`. False for any other file, or one unreadable."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_MAGIC:
                return False
            while len(head := f.read(8)) == 8:
                size, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND") or size > 1 << 16:  # the image data, or no metadata chunk
                    return False
                body = f.read(size + 4)[:size]  # and its CRC
                if kind == b"tEXt":
                    key, _, text = body.partition(b"\0")
                    if key == b"Software":
                        return text.startswith(MARK.encode())
    except OSError:
        return False
    return False


def remove_stale(folder: str | os.PathLike, keep: Iterable[str | os.PathLike],
                 warn: Callable[[str], None] | None = None) -> list[Path]:
    """Remove the PNGs in ``folder`` (not below it) that :func:`save_spectrograms` wrote (``written_here``)
    and whose names are not in ``keep``: an earlier run's plots, where a run with --force writes its own.
    Nothing else goes: another file of the same name, a hidden one, a link, a folder. A PNG that cannot be
    removed is told to ``warn`` (the results are written by then). Returns the paths removed."""
    keep = {Path(p).name for p in keep}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:  # no folder: nothing of an earlier run in it
        return []
    removed = []
    for entry in entries:
        if (not entry.name.endswith(".png") or entry.name.startswith(".") or entry.name in keep
                or not entry.is_file(follow_symlinks=False) or not written_here(entry.path)):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if warn:
                warn(f"cannot remove {entry.path}, a plot of an earlier run: {exc.strerror or exc}")
            continue
        removed.append(Path(entry.path))
    return removed
