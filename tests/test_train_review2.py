"""Review by use: training one's own model on a folder of LibriSpeech files with the real CLI."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LIBRI_MINI

AFILM = [sys.executable, "-m", "afilm_cli"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Three LibriSpeech speakers to train on, a fourth to validate: 2048-sample patches."""
    if not LIBRI_MINI.is_dir():
        pytest.fail(f"test data missing: {LIBRI_MINI} (see ../shared/data/SOURCES.md)")
    base = tmp_path_factory.mktemp("libri")
    speakers = sorted(p for p in (LIBRI_MINI / "test-other").iterdir() if p.is_dir())
    for spk in speakers[:3]:
        shutil.copytree(spk, base / "train" / spk.name)
    shutil.copytree(speakers[3], base / "val" / speakers[3].name)
    subprocess.run([*AFILM, "prepare", "folder", str(base / "train"), "--val-dir", str(base / "val"),
                    "--patch", "2048", "--stride", "2048", "--multiple", "16", "--out", str(base / "data")],
                   check=True, capture_output=True, text=True, cwd=base)
    return base


def test_plain_progress_line_says_the_epoch_count_and_the_run_time_left(prepared):
    """In a log (no terminal) the progress line said 'epoch 2: step 1/107 ... 0:00:09 left': the
    time left of that one epoch, with neither the epochs in all nor --max-steps counted (a run of
    20 epochs read as nearly done; one stopped by --max-steps 43 steps into that epoch read 0:00:09
    where it ended 4 s later). It now names the epoch of N and the run's time left up to its end,
    --max-steps included."""
    max_steps = 1000
    proc = subprocess.Popen([*AFILM, "train", "--model", "afilm_tiny", "--epochs", "20", "--max-steps",
                             str(max_steps), "--threads", "1", "--data-dir", "data", "--out", "runs/p"],
                            cwd=prepared, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = None
    try:
        for text in proc.stdout:
            if "patches/s" in text and " left" in text:
                line = text.strip()
                proc.send_signal(signal.SIGINT)  # Ctrl-C: saves and stops
                break
        rest = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert line is not None, "no progress line"
    m = re.fullmatch(r"epoch (\d+)/20: step (\d+)/(\d+)  loss \S+  ([\d.]+) patches/s  "
                     r"(\d+):(\d\d):(\d\d) left in the epoch, (\d+):(\d\d):(\d\d) in the run", line)
    assert m, line
    epoch, step, n_batches, rate = int(m[1]), int(m[2]), int(m[3]), float(m[4])
    epoch_left = int(m[5]) * 3600 + int(m[6]) * 60 + int(m[7])
    run_left = int(m[8]) * 3600 + int(m[9]) * 60 + int(m[10])
    done = (epoch - 1) * n_batches + step
    expected = (max_steps - done) * 16 / rate  # to --max-steps, not to the 20th epoch's end
    assert run_left > epoch_left
    assert 0.6 * expected < run_left < 1.6 * expected, (line, expected)
    assert proc.returncode == 130 and "continue with: afilm train --resume" in rest


def test_init_from_a_run_folder_says_which_checkpoint_it_took(prepared):
    """--init RUN takes RUN/best.pt, else RUN/last.pt, but nothing said which: the output named
    neither and the log kept only "init": "RUN" (a best.pt replaced later by that run's own
    training left no trace of the weights this run started from). The file, its model and how
    far it had trained are now printed, and the log's start record holds init_file."""
    import json

    def train(*args):
        return subprocess.run([*AFILM, "train", "--threads", "1", "--no-progress", "--data-dir", "data",
                               *args], cwd=prepared, capture_output=True, text=True, timeout=60)

    first = train("--model", "afilm_tiny", "--max-steps", "2", "--out", "runs/src")
    assert first.returncode == 0, first.stderr
    tuned = train("--init", "runs/src", "--max-steps", "1", "--out", "runs/tuned")
    assert tuned.returncode == 0, tuned.stderr
    best = str(Path("runs/src/best.pt"))
    said = f"init:  {best} (afilm_tiny weights, after 0 epochs and 2 steps; a fresh optimizer)"
    assert said in tuned.stdout
    start = json.loads((prepared / "runs/tuned/log.jsonl").read_text().splitlines()[0])
    assert start["type"] == "start" and start["config"]["init"] == "runs/src" and start["init_file"] == best


def test_resume_over_a_file_changed_in_place_does_not_advise_the_same_path(prepared, tmp_path):
    """A run stopped inside an epoch whose training file was then prepared again in place (--force,
    other patches) was refused with 'resume with --train data/x-train.h5': the very path that had
    just been refused. The same for a validation file changed in place ('resume with --val' that
    path). The refusal now says the file has changed since the run used it."""
    import os

    def train(*args):
        return subprocess.run([*AFILM, "train", "--threads", "1", "--no-progress", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)

    shutil.copytree(prepared / "data", tmp_path / "data")
    tr, va = tmp_path / "data" / "train-r4-decimate-train.h5", tmp_path / "data" / "train-r4-decimate-val.h5"
    first = train("--model", "afilm_tiny", "--max-steps", "3", "--train", str(tr), "--val", str(va),
                  "--out", "runs/r")
    assert first.returncode == 0, first.stderr
    for changed, other, flag in ((va, tr, "--val"), (tr, va, "--train")):
        keep = changed.with_suffix(".keep")
        os.replace(changed, keep)
        shutil.copy(other, changed)  # other patches at the same path
        again = train("--resume", "runs/r", "--max-steps", "0")
        os.replace(keep, changed)
        assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
        err = " ".join(again.stderr.split())
        assert f"resume with {flag} {changed}" not in err, err
        assert "has changed since" in err, err
