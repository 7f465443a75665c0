"""`afilm upsample` in a Unix pipe: `-` reads stdin and `-o -` writes stdout, through the real CLI in a
subprocess, on real speech (a LibriSpeech utterance at 8 kHz: the bundled afilm_speech_r2 takes it)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys

import cli_helpers
import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from afilm_cli.checkpoint import make_checkpoint, save_checkpoint
from afilm_cli.models import create_model

# --threads 1: byte-identical reruns (another thread count reorders the float sums)
SAME = ("--threads", "1")


def afilm(*args, cwd, input=None, stdin=None, stdout=subprocess.PIPE, timeout=180):
    """The CLI as a pipe runs it: bytes in, bytes out."""
    return subprocess.run([sys.executable, "-m", "afilm_cli", *map(str, args)], input=input, stdin=stdin,
                          stdout=stdout, stderr=subprocess.PIPE, cwd=cwd, timeout=timeout)


def run_main(capsys, *args):
    """The real entry point in-process, for refusals said before anything is read (output as bytes)."""
    out = cli_helpers.run_main(capsys, *args)
    return subprocess.CompletedProcess(out.args, out.returncode, out.stdout.encode(), out.stderr.encode())


def error_line(out) -> str:
    stderr = out.stderr.decode()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("afilm: error: ")
    assert not out.stdout  # nothing reached stdout
    return lines[0]


@pytest.fixture(scope="module")
def speech(tmp_path_factory, libri_mini):
    """in.wav (8 kHz, PCM_16) and in.flac (the same samples), and ref.wav and ref.flac, what the file
    path writes for them without --ckpt; the folder has no runs/, so the bundled models are chosen."""
    root = tmp_path_factory.mktemp("pipe")
    src = sorted((libri_mini / "test-other").rglob("*.flac"))[0]
    x, sr = sf.read(str(src), dtype="float64", frames=24000)
    assert sr == 16000
    x = signal.resample_poly(x, 1, 2)
    sf.write(str(root / "in.wav"), x, 8000, subtype="PCM_16")
    sf.write(str(root / "in.flac"), x, 8000, subtype="PCM_16")
    for ext in ("wav", "flac"):
        out = afilm("upsample", f"in.{ext}", "-o", f"ref.{ext}", "-q", *SAME, cwd=root)
        assert out.returncode == 0, out.stderr.decode()
    return root


def summary(out) -> str:
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_stdin_to_stdout_is_the_file_path_output(speech, tmp_path):
    ref = (speech / "ref.wav").read_bytes()
    data = (speech / "in.wav").read_bytes()
    out = afilm("upsample", "-", *SAME, input=data, cwd=tmp_path)  # a filter: no -o is stdout
    assert out.stdout == ref  # byte for byte: the same WAV, and nothing else on stdout
    # the model was chosen for the rate read from stdin (without one it would be afilm_speech_r4)
    line = summary(out)
    assert line.startswith("stdin upsampled to stdout with ") and "afilm_speech_r2.pt" in line, line
    y, sr = sf.read(io.BytesIO(out.stdout))
    info = sf.info(io.BytesIO(out.stdout))
    assert (sr, len(y), info.subtype) == (16000, 2 * 12000, "PCM_16")  # PCM_16 in, PCM_16 out
    assert afilm("upsample", "-", "-o", "-", "-q", *SAME, input=data, cwd=tmp_path).stdout == ref
    assert list(tmp_path.iterdir()) == []  # no file written


def test_stdin_to_a_file(speech, tmp_path):
    ref = (speech / "ref.wav").read_bytes()
    out = afilm("upsample", "-", "-o", "out.wav", *SAME, input=(speech / "in.wav").read_bytes(), cwd=tmp_path)
    assert summary(out).startswith("stdin upsampled to out.wav with ")
    assert not out.stdout and (tmp_path / "out.wav").read_bytes() == ref
    # FLAC read from memory, into a FLAC file
    out = afilm("upsample", "-", "-o", "out.flac", "-q", *SAME, input=(speech / "in.flac").read_bytes(),
                cwd=tmp_path)
    assert out.returncode == 0 and not out.stdout and not out.stderr, out.stderr.decode()
    assert (tmp_path / "out.flac").read_bytes() == (speech / "ref.flac").read_bytes()


def test_a_file_to_stdout_and_a_file_named_dash(speech, tmp_path):
    ref = (speech / "ref.wav").read_bytes()
    out = afilm("upsample", speech / "in.wav", "-o", "-", *SAME, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert out.stdout == ref
    assert summary(out).startswith(f"{speech / 'in.wav'} upsampled to stdout with ")
    # ./- is a file named -, read as a file (libsndfile takes the name "-" for its stdin)
    shutil.copy(speech / "in.wav", tmp_path / "-")
    out = afilm("upsample", "./-", "-o", "-", "-q", *SAME, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == ref, out.stderr.decode()


def test_clipped_samples_on_stdout_are_warned(tmp_path):
    """A full-scale square wave: the spline overshoots it, and the PCM_16 output (as the input) clips."""
    recipe = {"r": 4, "sr": 16000, "degrade": "decimate", "patch": 8192}
    ckpt = save_checkpoint(tmp_path / "spline.pt", make_checkpoint(create_model("spline"), recipe))
    buf = io.BytesIO()
    sf.write(buf, np.sign(np.sin(np.arange(4000) * 2 * np.pi * 300 / 4000)), 4000, format="WAV",
             subtype="PCM_16")
    out = afilm("upsample", "-", "--ckpt", ckpt, "-q", input=buf.getvalue(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("afilm: warning: stdout: "), lines
    assert "samples clipped to [-1, 1]" in lines[0] and "the output is PCM_16" in lines[0]
    y, sr = sf.read(io.BytesIO(out.stdout))
    assert sr == 16000 and len(y) == 16000 and np.abs(y).max() == 1.0


def test_a_terminal_is_refused_for_the_audio(speech, tmp_path):
    master, slave = os.openpty()
    try:
        out = afilm("upsample", speech / "in.wav", "-o", "-", stdin=subprocess.DEVNULL, stdout=slave,
                    cwd=tmp_path)
        assert "stdout is a terminal, and binary audio would go to it" in error_line(out)
        os.set_blocking(master, False)
        with pytest.raises(BlockingIOError):  # nothing was written to the terminal
            os.read(master, 1)
        line = error_line(afilm("upsample", "-", "-o", "x.wav", stdin=slave, cwd=tmp_path))
        assert "stdin is a terminal" in line
    finally:
        os.close(slave)
        os.close(master)
    assert list(tmp_path.iterdir()) == []


def test_a_reader_that_goes_away_is_one_line(speech, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "afilm_cli", "upsample", "-", "-q", *SAME], cwd=tmp_path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head -c 0` would
    _, err = proc.communicate((speech / "in.wav").read_bytes(), timeout=180)
    assert proc.returncode == 2 and err.decode().strip() == (
        "afilm: error: stdout: closed before all the audio was written (broken pipe)"), err.decode()


def piped(monkeypatch, data: bytes) -> None:
    """``data`` on stdin, for the CLI run in-process (pytest's own stdin cannot be read)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_empty_or_garbage_stdin_is_one_line(tmp_path, capsys, monkeypatch):
    piped(monkeypatch, b"")
    assert error_line(run_main(capsys, "upsample", "-")) == "afilm: error: stdin: no audio (empty)"
    piped(monkeypatch, b"not audio at all\n" * 8)
    line = error_line(run_main(capsys, "upsample", "-", "-o", tmp_path / "x.wav"))
    assert line == "afilm: error: stdin: not audio libsndfile can read: Format not recognised.", line
    assert list(tmp_path.iterdir()) == []


def test_refusals_before_anything_is_read(speech, tmp_path, capsys, monkeypatch):
    data = b"RIFF" + bytes(100)
    piped(monkeypatch, data)
    (tmp_path / "out.wav").write_bytes(b"old")
    wav = speech / "in.wav"
    (tmp_path / "dir").mkdir()
    cases = [
        (("-", wav), "- (stdin) can only be the one input (a file named - is ./-)"),
        ((wav, "-"), "- (stdin) can only be the one input"),
        ((wav, wav, "-o", "-"), "-o - (stdout) takes one input file, not several"),
        ((tmp_path / "dir", "-o", "-"), f"takes one input file, not a folder ({tmp_path / 'dir'})"),
        (("-", "--simulate"), "--simulate writes three files"),
        ((wav, "--simulate", "-o", "-"), "--simulate writes three files"),
        (("-", "-o", f"{tmp_path / 'dir'}/"), "stdin is one file's audio; name a .wav or .flac file"),
        (("-", "-o", tmp_path / "x.mp3"), "x.mp3: afilm writes WAV or FLAC"),
        (("-", "-o", tmp_path / "out.wav"), "out.wav exists; pass --force to overwrite"),
    ]
    for args, message in cases:
        assert message in error_line(run_main(capsys, "upsample", *args)), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "out.wav"]
    assert (tmp_path / "out.wav").read_bytes() == b"old"
    assert sys.stdin.buffer.read() == data  # stdin left unread


def test_a_reader_that_quits_part_way_is_one_line(speech, tmp_path):
    """`| head -c 100`: the reader takes the first bytes and goes. write() then returned short, without
    an error, and the run said 'stdin upsampled to stdout' and exited 0 with most of the audio lost."""
    proc = subprocess.Popen([sys.executable, "-m", "afilm_cli", "upsample", "-", "-q", *SAME], cwd=tmp_path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    x, sr = sf.read(str(speech / "in.wav"), dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, np.tile(x, 3), sr, format="WAV", subtype="FLOAT")  # out: 288 kB, beyond a pipe's 64 kB
    proc.stdin.write(buf.getvalue())
    proc.stdin.close()
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=180) == 2 and err.strip() == (
        "afilm: error: stdout: closed before all the audio was written (broken pipe)"), err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_stdout_is_one_line_naming_it(speech, tmp_path):
    with open("/dev/full", "wb") as full:
        out = afilm("upsample", speech / "in.wav", "-o", "-", "-q", *SAME, stdin=subprocess.DEVNULL,
                    stdout=full, cwd=tmp_path)
    err = out.stderr.decode()
    assert out.returncode == 2 and err.strip() == (
        "afilm: error: stdout: cannot write the audio: No space left on device"), err
