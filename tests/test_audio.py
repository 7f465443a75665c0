"""afilm_cli/audio.py against scipy directly, on real VCTK audio and on bad files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import interpolate, signal

from afilm_cli import audio
from afilm_cli.errors import AfilmError


@pytest.fixture(scope="module")
def speech(vctk_mini) -> np.ndarray:
    x, sr = sf.read(vctk_mini / "wav48" / "p225" / "p225_001.wav", dtype="float32")
    assert sr == 48000
    return x


def test_read_resample_match_scipy(vctk_mini, speech):
    x, sr = audio.read_audio(vctk_mini / "wav48" / "p225" / "p225_001.wav")
    assert sr == 48000 and x.dtype == np.float32
    np.testing.assert_array_equal(x, speech)
    y = audio.resample(x, 48000, 16000)
    assert y.dtype == np.float32 and len(y) == -(-len(x) // 3)  # ceil, as resample_poly
    np.testing.assert_allclose(y, signal.resample_poly(speech.astype(np.float64), 1, 3), atol=1e-6)
    np.testing.assert_array_equal(audio.resample(y, 16000, 16000), y)
    assert len(audio.resample(y, 16000, 22050)) == -(-len(y) * 441 // 320)


def test_degrade_and_spline_match_scipy(speech):
    hr = audio.crop_to_multiple(audio.resample(speech, 48000, 16000), 4)
    assert len(hr) % 4 == 0
    np.testing.assert_allclose(audio.degrade(hr, 4, "decimate"), signal.decimate(hr.astype(np.float64), 4),
                               atol=1e-6)
    np.testing.assert_array_equal(audio.degrade(hr, 4, "subsample"), hr[::4])
    lr = audio.degrade(hr, 4, "decimate")
    up = audio.spline_up(lr, 4, len(hr))
    tck = interpolate.splrep(np.arange(len(lr)) * 4, lr.astype(np.float64))
    np.testing.assert_allclose(up, interpolate.splev(np.arange(len(hr)), tck), atol=1e-6)
    np.testing.assert_allclose(up[::4], lr, atol=1e-6)  # passes through the LR samples at k*r
    hr2, lr2, up2 = audio.simulate_lr(hr[:-1], 4, "subsample")
    assert len(hr2) == len(hr) - 4 and len(lr2) * 4 == len(hr2) == len(up2)
    # the spline is a good low-pass reconstruction of band-limited input: a 500 Hz tone
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 500 * t).astype(np.float32)
    rec = audio.spline_up(audio.degrade(tone, 4, "subsample"), 4, len(tone))
    assert np.max(np.abs(rec[100:-100] - tone[100:-100])) < 1e-2


def test_resample_degradation_keeps_more_of_the_band_than_decimate():
    x = np.random.default_rng(3).standard_normal(1 << 16).astype(np.float32)
    lr = audio.degrade(x, 4, "resample")
    np.testing.assert_allclose(lr, signal.resample_poly(x.astype(np.float64), 1, 4), atol=1e-6)

    def level(y, lo, hi):  # mean power in [lo, hi) as a fraction of the low rate (Nyquist 0.5)
        p = np.abs(np.fft.rfft(y)) ** 2
        f = np.fft.rfftfreq(len(y))
        return 10 * np.log10(p[(f >= lo) & (f < hi)].mean() / p[(f >= 0.1) & (f < 0.3)].mean())

    dec = audio.degrade(x, 4, "decimate")
    # 0.8-0.85 of the low-rate Nyquist: both flat; 0.9-0.95: decimate's Chebyshev filter has cut
    # deep, resample_poly's FIR has only begun to roll off
    assert abs(level(dec, 0.4, 0.425)) < 2.5 and abs(level(lr, 0.4, 0.425)) < 0.5
    assert level(dec, 0.45, 0.475) < -20 and level(lr, 0.45, 0.475) > -3


def test_degrade_methods():
    assert audio.degrade_methods("decimate") == ("decimate",)
    assert audio.degrade_methods("decimate+resample") == ("decimate", "resample")
    for bad in ("", "lowpass", "decimate+decimate", "decimate+", "decimate,resample"):
        with pytest.raises(AfilmError, match="unknown degradation"):
            audio.degrade_methods(bad)


def test_degrade_and_spline_errors():
    with pytest.raises(AfilmError, match="unknown degradation"):
        audio.degrade(np.zeros(100, np.float32), 2, "bicubic")
    with pytest.raises(AfilmError, match="too short"):
        audio.degrade(np.zeros(20, np.float32), 2, "decimate")
    with pytest.raises(AfilmError, match="too short"):
        audio.spline_up(np.zeros(3, np.float32), 2)


def test_read_audio_formats_and_bad_files(tmp_path, speech):
    stereo = np.stack([speech, 0.5 * speech], axis=1)
    sf.write(tmp_path / "s.flac", stereo, 48000, subtype="PCM_24")
    x, sr = audio.read_audio(tmp_path / "s.flac", mono=True)
    assert x.ndim == 1 and sr == 48000
    np.testing.assert_allclose(x, 0.75 * speech, atol=1e-4)
    assert audio.read_audio(tmp_path / "s.flac")[0].shape == stereo.shape
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF1234WAVEjunkjunk")
    (tmp_path / "empty.flac").write_bytes(b"")
    sf.write(tmp_path / "zero.wav", np.zeros((0,), np.float32), 16000)
    nan = np.zeros(1000, np.float32)
    nan[5] = np.inf
    sf.write(tmp_path / "inf.wav", nan, 16000, subtype="FLOAT")
    for name, match in (("missing.wav", "no such file"), ("corrupt.wav", "cannot read audio"),
                        ("empty.flac", "cannot read audio"), ("zero.wav", "empty audio"),
                        ("inf.wav", "NaN or Inf"), (".", "is a folder")):
        with pytest.raises(AfilmError, match=match) as exc:
            audio.read_audio(tmp_path / name)
        assert "\n" not in str(exc.value)
    assert audio.is_audio_file("a/B.FLAC") and not audio.is_audio_file("notes.txt")


def test_write_audio_is_atomic_and_clips(tmp_path):
    x = np.array([0.0, 0.5, 2.0, -3.0] * 100, np.float32)
    out = audio.write_audio(tmp_path / "o.wav", x, 16000)
    y, sr = sf.read(out, dtype="float32")
    assert sr == 16000 and sf.info(out).subtype == "PCM_16"
    assert y[2] == 32767 / 32768 and y[3] == -1.0  # 2.0 and -3.0 clipped to full scale, not wrapped
    assert [p.name for p in tmp_path.iterdir()] == ["o.wav"]  # no temporary left behind
    audio.write_audio(tmp_path / "f.wav", x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(sf.read(tmp_path / "f.wav", dtype="float32")[0], x)


def test_atomic_outputs_reach_the_disk_before_their_name(tmp_path, monkeypatch):
    import os

    from afilm_cli import atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    with atomic.atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"data")
    assert events == ["fsync", "replace"] and (tmp_path / "x.bin").read_bytes() == b"data"
    (tmp_path / "a_file").write_text("")
    with pytest.raises(AfilmError, match="a_file is a file, not a folder"):
        with atomic.atomic_path(tmp_path / "a_file" / "y.bin"):
            pass


def test_an_atomic_output_may_have_the_longest_name_the_file_system_takes(tmp_path):
    """The temporary name (.NAME.tmp-XXXXXXXX) was 14 bytes longer than the output's: a checkpoint, patch
    file or table named with 242-255 bytes failed with 'File name too long' after the work."""
    from afilm_cli import atomic

    for name in ("c" * 251 + ".csv", "c" * 240 + "\u00e9\u00e9\u00e9\u00e9\u00e9" + ".h5", "d" * 255):
        assert len(name.encode()) in (253, 255)
        with atomic.atomic_path(tmp_path / name) as tmp:
            assert len(tmp.name.encode()) <= 255 and tmp.name.endswith((tmp_path / name).suffix)
            tmp.write_bytes(b"data")
        assert (tmp_path / name).read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["c" * 251 + ".csv", "c" * 240 + "\u00e9" * 5 + ".h5", "d" * 255])


@pytest.mark.parametrize("r", [2, 3, 4, 8])
@pytest.mark.parametrize("m", [4, 9, 11, 12, 50])
def test_spline_fast_path_equals_splev_at_every_length(r, m):
    """spline_up's uniform-knot shortcut must equal splev everywhere, ends and extrapolation included."""
    lr = np.random.default_rng(m * r).standard_normal(m)
    tck = interpolate.splrep(np.arange(m) * r, lr)
    for n in (m * r - r + 1, m * r, m * r + 3):
        np.testing.assert_allclose(audio.spline_up(lr, r, n), interpolate.splev(np.arange(n), tck),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("r", [2, 3, 4])
def test_spline_segment_equals_splev_on_any_range(r):
    """Any slice start..stop (inside, across the ends, past the last knot) equals splev there."""
    m = 23
    lr = np.random.default_rng(r).standard_normal(m)
    tck = interpolate.splrep(np.arange(m) * r, lr)
    for start, stop in [(0, 1), (0, m * r + 2), (5, 6), (r - 1, 3 * r + 1), (7, 40), ((m - 2) * r, m * r + 3),
                        ((m - 1) * r, (m - 1) * r + 1), (m * r, m * r + 5)]:
        np.testing.assert_allclose(audio.spline_segment(lr, r, start, stop),
                                   interpolate.splev(np.arange(start, stop), tck), rtol=1e-9, atol=1e-9)
    assert audio.spline_segment(lr, r, 9, 9).shape == (0,)


def test_find_audio_files_follows_folder_links_once_and_skips_hidden(tmp_path):
    from afilm_cli.audio import find_audio_files

    (tmp_path / "real" / "sub").mkdir(parents=True)
    for rel in ("real/a.wav", "real/sub/b.FLAC", "real/notes.txt", "real/._a.wav", "real/.DS_Store"):
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.wav").write_bytes(b"")
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "z.wav").write_bytes(b"")
    (tmp_path / "top" / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real" / "sub" / "loop").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "top" / "file_link.wav").symlink_to(tmp_path / "real" / "a.wav")
    found = [p.relative_to(tmp_path / "top").as_posix() for p in find_audio_files(tmp_path / "top")]
    # the folder's own files first, then its subfolders; the loop back to real/ is not walked again
    assert found == ["file_link.wav", "z.wav", "linked/a.wav", "linked/sub/b.FLAC"]


@pytest.mark.parametrize("free", [0, 1 << 30])
def test_a_write_failing_on_a_full_disk_is_one_clear_error(tmp_path, monkeypatch, free):
    """libsndfile says 'System error.' and torch.save 'unexpected pos' when the disk fills: afilm says
    the disk is full (checked before the temporary file is removed); other failures pass unchanged."""
    import types

    from afilm_cli import atomic
    from afilm_cli.errors import AfilmError

    monkeypatch.setattr(atomic.os, "statvfs", lambda p: types.SimpleNamespace(f_bavail=free // 4096,
                                                                            f_frsize=4096))
    expected = (AfilmError, "out.pt: the disk is full") if free == 0 else (RuntimeError, "unexpected pos")
    with pytest.raises(expected[0], match=expected[1]):
        with atomic.atomic_path(tmp_path / "out.pt") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")
    assert list(tmp_path.iterdir()) == []



def test_make_output_dir_creates_or_says_why_not(tmp_path):
    from afilm_cli.atomic import make_output_dir

    made = make_output_dir(tmp_path / "a" / "b")
    assert made.is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(AfilmError, match=r"cannot create folder .*f/sub: .*f is a file"):
        make_output_dir(tmp_path / "f" / "sub")
    # a file system that refuses new folders, even to root (Linux's /proc)
    if Path("/proc/self").is_dir():
        with pytest.raises(AfilmError, match="cannot create folder /proc/afilm-x: "):
            make_output_dir("/proc/afilm-x")


def test_make_output_dir_needs_write_permission(tmp_path):
    from afilm_cli.atomic import make_output_dir

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as root: folder permissions are not enforced")
    with pytest.raises(AfilmError, match="cannot write in folder"):
        make_output_dir(locked)


def test_make_output_dir_on_a_read_only_file_system(tmp_path):
    """An existing folder on a file system mounted read-only was said to be "permission denied", which
    sent a user to chmod. A real read-only tmpfs, where the machine lets this process mount one."""
    from afilm_cli.atomic import make_output_dir

    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                             capture_output=True) if shutil.which("mount") else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount rights)")
    try:
        with pytest.raises(AfilmError, match=f"cannot write in folder {ro}: its file system is read-only"):
            make_output_dir(ro)
        with pytest.raises(AfilmError, match=f"cannot create folder {ro / 'sub'}: Read-only file system"):
            make_output_dir(ro / "sub")
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_a_wav_cut_short_is_refused_by_every_reader(vctk_mini, tmp_path):
    """libsndfile reads a truncated WAV as far as its data goes, silently; its header says how long it
    was. A WAV streamed to a pipe (sizes 0xFFFFFFFF: length unknown) is not cut and still reads."""
    import struct

    from afilm_cli.stages import FileSource

    whole = (vctk_mini / "wav48" / "p225" / "p225_001.wav").read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: len(whole) // 2])
    assert len(sf.read(cut)[0]) > 0  # what afilm must not take on trust
    for read in (audio.read_audio, FileSource):
        with pytest.raises(AfilmError, match=r"cut\.wav: file is shorter than its header says \(truncated\? "
                                             r"its audio data has \d+ of the \d+ bytes declared\)"):
            read(cut)
    streamed = bytearray(whole)
    data = streamed.index(b"data")
    streamed[4:8] = streamed[data + 4 : data + 8] = struct.pack("<I", 0xFFFFFFFF)
    (tmp_path / "streamed.wav").write_bytes(bytes(streamed))
    x, _ = audio.read_audio(tmp_path / "streamed.wav")
    np.testing.assert_array_equal(x, audio.read_audio(vctk_mini / "wav48" / "p225" / "p225_001.wav")[0])
    assert FileSource(tmp_path / "streamed.wav").length == len(x)


def test_a_codec_libsndfile_cannot_seek_in_is_read_whole(tmp_path, libri_mini):
    """GSM 6.10 WAV (telephone audio): libsndfile cannot seek in it, and soundfile's read() without a
    frame count refused it ('frames must be specified for non-seekable files'), so prepare and eval
    skipped such files as unreadable. Real speech at 8 kHz, written as GSM 6.10."""
    x, sr = sf.read(sorted((libri_mini / "test-other").rglob("*.flac"))[0], frames=32000)
    path = tmp_path / "phone.wav"
    sf.write(path, signal.resample_poly(x, 1, 2) * 0.5, sr // 2, subtype="GSM610", format="WAV")
    assert not sf.SoundFile(path).seekable()
    y, rate = audio.read_audio(path)
    assert rate == 8000 and len(y) == sf.info(path).frames and np.abs(y).max() > 0.01
