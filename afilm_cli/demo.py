"""`afilm demo`: the whole loop on a bundled clip, in seconds on a CPU (about 8 s on 2 cores).

The clip (assets/demo, LibriSpeech, CC BY 4.0) is treated as high-rate ground truth: its low-rate
version is simulated with the checkpoint's recipe, upsampled by the model, and compared with the
cubic-spline baseline. Outputs: ``<name>.lr.wav`` / ``.hr.wav`` / ``.pr.wav`` (as ``afilm upsample
--simulate``), a spectrogram PNG, ``metrics.csv`` and ``summary.json`` (as ``afilm eval``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from afilm_cli.atomic import make_output_dir
from afilm_cli.errors import AfilmError

ASSETS = Path(__file__).parent / "assets" / "demo"
MARKER = ".afilm-demo"  # marks a folder the demo wrote, so a rerun may refresh it without --force


def demo_clips() -> list[Path]:
    return sorted(p for p in ASSETS.iterdir() if p.suffix == ".flac")


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to write into a folder that holds anything the demo did not write, unless --force."""
    if out.exists() and not out.is_dir():
        raise AfilmError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists() and not force:
        raise AfilmError(f"{out} already holds files that the demo did not write; pass --force or --out")


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder``, made by a run that did not finish, where nothing else was written into it."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def load_demo_model(ckpt: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """The checkpoint to demonstrate (default: the bundled model), refused at once when the demo clips
    are below its high rate: they are the ground truth its low-rate input is simulated from."""
    import soundfile as sf

    from afilm_cli import infer, pretrained

    loaded = infer.load_model(ckpt if ckpt is not None else pretrained.bundled_checkpoint_path(), device)
    clip_sr = min(sf.info(str(clip)).samplerate for clip in demo_clips())
    if loaded.sr > clip_sr:
        raise AfilmError(f"the demo clip is {clip_sr / 1000:g} kHz, but {loaded.path} is a {loaded.sr} Hz "
                         f"model: it needs higher-rate input; try 'afilm upsample --ckpt "
                         f"{shlex.quote(str(loaded.path))} --simulate FILE' on a recording of {loaded.sr} Hz "
                         "or more")
    return loaded


def run_demo(out: str | os.PathLike, ckpt: str | os.PathLike | None = None,
             device: str | torch.device = "cpu", force: bool = False, loaded=None,
             threads: int | str = "auto") -> dict[str, Any]:
    """Run the demo into ``out`` with ``loaded`` (from :func:`load_demo_model`; loaded from ``ckpt``
    when None); return the eval result, the wav paths and the checkpoint used. ``threads``: as
    ``afilm upsample --threads``. A run that does not finish (Ctrl-C) leaves ``out`` as it found it."""
    from afilm_cli import evaluate, infer

    out = Path(out)
    check_out_dir(out, force)
    loaded = loaded if loaded is not None else load_demo_model(ckpt, device)
    made = not out.exists()
    make_output_dir(out)
    marker = out / MARKER
    marked = marker.exists()
    marker.write_text("written by 'afilm demo'; the demo may overwrite this folder\n")
    # written into a hidden folder inside out, then renamed into it all at once: a run stopped part-way
    # (Ctrl-C) leaves the folder as it found it, not new wavs without their metrics or beside old ones
    stage = Path(tempfile.mkdtemp(prefix=".afilm-demo-tmp-", dir=out))
    try:
        wavs = [infer.simulate_file(clip, stage / clip.stem, loaded, device=device, threads=threads)
                for clip in demo_clips()]
        result = evaluate.evaluate_wavs(loaded, ASSETS, device=device, plots_dir=stage, threads=threads)
        evaluate.write_results(result, stage, force=True)
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if not marked:
            marker.unlink(missing_ok=True)
        if made:
            remove_if_empty(out)
        raise
    stage.rmdir()
    for w in wavs:
        w["outputs"] = {k: str(out / Path(v).name) for k, v in w["outputs"].items()}
    result.plots = [out / p.name for p in result.plots]
    csv_path, json_path = evaluate.result_paths(out)
    return {"result": result, "wavs": wavs, "checkpoint": loaded.path, "csv": csv_path, "json": json_path}
