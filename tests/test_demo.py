"""`afilm demo`: the quick-start command, end to end in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from afilm_cli import metrics, pretrained
from afilm_cli.audio import spline_up
from afilm_cli.checkpoint import make_checkpoint, save_checkpoint
from afilm_cli.demo import ASSETS, MARKER, demo_clips
from afilm_cli.models import create_model

RECIPE = {"r": 4, "sr": 16000, "degrade": "decimate", "patch": 8192}


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "afilm_cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "AFILM_DISABLE_PLUGINS": "1"})


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, make_checkpoint(create_model("afilm_tiny"), RECIPE))
    return path


def test_bundled_clip_is_attributed_16k_speech():
    clips = demo_clips()
    assert len(clips) == 1
    info = sf.info(clips[0])
    assert info.samplerate == 16000 and 4.0 < info.duration < 10.0
    attribution = (ASSETS.parent / "ATTRIBUTION.md").read_text()
    assert clips[0].name in attribution and "CC BY 4.0" in attribution


def test_demo_writes_wavs_png_and_metrics(tmp_path, tiny_ckpt):
    out = run_cli("demo", "--ckpt", str(tiny_ckpt), "--out", "demo-out", "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    d = tmp_path / "demo-out"
    stem = demo_clips()[0].stem
    lr, hr, pr = (sf.info(d / f"{stem}.{k}.wav") for k in ("lr", "hr", "pr"))
    assert (lr.samplerate, hr.samplerate, pr.samplerate) == (4000, 16000, 16000)
    assert hr.frames == pr.frames == sf.info(demo_clips()[0]).frames
    assert (d / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["protocol"]["r"] == 4
    assert summary["protocol"]["bundled"] is None  # a checkpoint of the user's: its architecture's name
    assert "SNR" in out.stdout and "spline" in out.stdout
    assert "on 1 held-out clip, 4 kHz -> 16 kHz" in " ".join(out.stdout.split())  # it said 'clip(s)'
    # stderr's lines are whole where it is no terminal (rich wrapped the last at 80 columns)
    assert out.stderr.splitlines()[-1] == ("listen: .lr.wav is the 4 kHz input, .pr.wav the afilm output, "
                                           ".hr.wav the original"), out.stderr
    # the metrics are those of the wavs written beside them: the prediction and the spline of the
    # written low-rate input against the written truth (16-bit files: within rounding)
    (x_lr, _), (x_hr, _), (x_pr, _) = (sf.read(d / f"{stem}.{k}.wav") for k in ("lr", "hr", "pr"))
    model, spline = summary["summary"]["model"], summary["summary"]["spline"]
    assert model["snr"] == pytest.approx(metrics.snr(x_pr, x_hr), abs=0.01)
    assert spline["snr"] == pytest.approx(metrics.snr(spline_up(x_lr, 4, len(x_hr)), x_hr), abs=0.01)
    assert abs(model["snr"] - spline["snr"]) > 0.5  # the untrained model's output is not the spline
    # a rerun refreshes the demo's own folder without --force: every output written again
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    for p in d.iterdir():
        os.utime(p, ns=(1, 1))
    again = run_cli("demo", "--ckpt", str(tiny_ckpt), "--out", "demo-out", "--device", "cpu",
                    "--threads", "1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert {p.name for p in d.iterdir()} == set(before)
    assert all(p.stat().st_mtime_ns > 1 for p in d.iterdir())
    # --threads as upsample's and eval's (the demo had none: on a shared machine it took every core)
    assert summary["protocol"]["threads"] == "auto"
    assert json.loads((d / "summary.json").read_text())["protocol"]["threads"] == 1
    bad = run_cli("demo", "--ckpt", str(tiny_ckpt), "--out", "demo-out", "--threads", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--threads takes a positive integer or 'auto', not '0'" in bad.stderr


def test_demo_refuses_a_foreign_folder(tmp_path, tiny_ckpt):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    out = run_cli("demo", "--ckpt", str(tiny_ckpt), "--out", "mine", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "afilm: error: mine already holds files that the demo did not write; pass --force or --out"]
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # --help says so: --force read 'Overwrite existing outputs', which a rerun does without it
    said = " ".join(run_cli("demo", "--help", cwd=tmp_path).stdout.replace("│", "").split())
    assert "a rerun refreshes a previous demo's, a folder holding other files needs --force" in said
    assert "Write into an --out folder that holds files the demo did not write (they are kept" in said


@pytest.mark.skipif(not pretrained.DEFAULT, reason="no bundled model in this build")
def test_default_demo_uses_the_bundled_model_and_beats_spline(tmp_path):
    out = run_cli("demo", "--out", "d", "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    model, spline = summary["summary"]["model"], summary["summary"]["spline"]
    assert model["snr"] > spline["snr"] + 0.4  # measured +1.08 dB on this clip (decimate input)
    assert model["lsd"] < 0.8 * spline["lsd"]  # measured 0.64x


def _ckpt(path, **recipe):
    torch.manual_seed(0)
    save_checkpoint(path, make_checkpoint(create_model("afilm_tiny"), {**RECIPE, **recipe}))
    return path


def test_demo_says_the_checkpoints_own_low_rate(tmp_path):
    r2 = _ckpt(tmp_path / "r2.pt", r=2)
    out = run_cli("demo", "--ckpt", str(r2), "--out", "d", "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sf.info(tmp_path / "d" / f"{demo_clips()[0].stem}.lr.wav").samplerate == 8000
    said = " ".join(out.stderr.split())
    assert "listen: .lr.wav is the 8 kHz input" in said and "4 kHz" not in said
    assert "8 kHz -> 16 kHz" in " ".join(out.stdout.split())


def test_demo_refuses_a_checkpoint_above_the_clips_rate_at_once(tmp_path):
    high = _ckpt(tmp_path / "k48.pt", sr=48000)
    out = run_cli("demo", "--ckpt", str(high), "--out", "d", "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"afilm: error: the demo clip is 16 kHz, but {high} is a 48000 Hz model: it needs higher-rate input; "
        f"try 'afilm upsample --ckpt {high} --simulate FILE' on a recording of 48000 Hz or more"]
    assert not (tmp_path / "d").exists()  # refused before any output


def test_demo_says_when_its_folder_cannot_be_made(tmp_path, tiny_ckpt):
    """'afilm demo --out /proc/x' ended in a generic "No such file or directory: /proc/x"."""
    (tmp_path / "notes.txt").write_text("keep me")
    out = run_cli("demo", "--ckpt", str(tiny_ckpt), "--out", "notes.txt/d", "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "afilm: error: cannot create folder notes.txt/d: notes.txt is a file"]  # said before any work
    assert (tmp_path / "notes.txt").read_text() == "keep me"


# the real CLI, stopped by a Ctrl-C as the metrics are written (the wavs and the PNG are done by then)
CTRL_C_AT_METRICS = ("import afilm_cli.evaluate as ev\n"
                     "def stop(*args, **kwargs):\n    raise KeyboardInterrupt\n"
                     "ev.write_results = stop\n"
                     "from afilm_cli.entry import run\nrun()\n")


def test_ctrl_c_leaves_the_folder_as_it_found_it(tmp_path, tiny_ckpt):
    """Ctrl-C part-way left the wavs without the PNG and metrics in a new folder, and in a previous
    demo's folder new wavs beside the old run's metrics: a new folder now goes, an old one is kept whole."""
    def interrupted(out):
        return subprocess.run([sys.executable, "-c", CTRL_C_AT_METRICS, "demo", "--ckpt", str(tiny_ckpt),
                               "--out", out, "--device", "cpu"], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env={**os.environ, "AFILM_DISABLE_PLUGINS": "1"})

    stopped = interrupted("new")
    said = stopped.stderr.splitlines()
    assert stopped.returncode == 130 and said[-1] == "afilm: interrupted", said
    assert "Traceback" not in stopped.stderr
    assert not (tmp_path / "new").exists()
    # a previous demo's folder (its outputs stand-ins), with a file of the user's: all as it was, nothing
    # hidden left behind
    old = tmp_path / "old"
    old.mkdir()
    stem = demo_clips()[0].stem
    (old / MARKER).write_text("a previous demo's")
    for name in (f"{stem}.lr.wav", f"{stem}.hr.wav", f"{stem}.pr.wav", f"{stem}.png", "metrics.csv",
                 "summary.json", "notes.txt"):
        (old / name).write_text(f"old {name}")
    before = {p.name: p.read_bytes() for p in old.iterdir() if p.name != MARKER}  # the marker is rewritten
    assert interrupted("old").returncode == 130
    assert {p.name: p.read_bytes() for p in old.iterdir() if p.name != MARKER} == before
    assert sorted(p.name for p in old.iterdir()) == sorted([*before, MARKER])
