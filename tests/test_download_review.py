"""`afilm prepare vctk --download` used as a demanding user would: bad URLs, redirect loops, a full disk,
a stopped extraction, odd archive members. A real HTTP server on 127.0.0.1 (a thread in this process)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from http_server import Server

from afilm_cli.data import download as dl
from afilm_cli.data.download import Archive, extract, fetch_and_extract
from afilm_cli.data.vctk import _download_corpus
from afilm_cli.errors import AfilmError


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def afilm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "afilm_cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


def vctk_tar(vctk_mini: Path, speakers=("p225", "p226"), n: int = 3) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for spk in speakers:
            for f in sorted((vctk_mini / "wav48" / spk).glob("*.wav"))[:n]:
                tf.add(f, f"VCTK-Corpus/wav48/{spk}/{f.name}")
    return buf.getvalue()


def test_a_url_that_is_not_one_is_refused_in_one_line_before_anything(server, tmp_path):
    """--url without a scheme (a host and path pasted as they show in a browser) was urllib's ValueError
    'unknown url type', shown as a traceback; --url '' (an unset "$MIRROR") silently downloaded the
    default 11 GB archive instead."""
    root = tmp_path / "vctk"
    proc = afilm("prepare", "vctk", "--download", "--root", str(root), "--url", "example.org/VCTK.zip",
                 cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "afilm: error: --url 'example.org/VCTK.zip' is not a URL: expected one starting with http:// or "
        "https:// (or ftp://, file://)"], proc.stderr
    assert not root.exists()  # nothing made before the URL was checked
    for bad in ("", "   ", "notaurl", "http://", "mailto:a@b.c"):
        with pytest.raises(AfilmError, match=r"^--url .* is not a URL"):
            _download_corpus(root, None, bad, None)
    assert server.requests == [] and not root.exists()


def test_a_redirect_loop_is_one_line(server, tmp_path):
    """urllib's message for a redirect loop spans three lines ('... infinite loop.\\nThe last 30x error
    message was:\\nFound')."""
    server.redirect_loop = True
    url = f"{server.url}/VCTK-Corpus.tar.gz"
    proc = afilm("prepare", "vctk", "--download", "--root", str(tmp_path / "vctk"), "--url", url,
                 cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[1:] == [
        f"afilm: error: cannot download {url}: HTTP 302: the server redirects in a loop (or more than 10 "
        "times)"], proc.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_during_the_download_says_so(server, tmp_path):
    """A write that fails for want of space was 'interrupted at N bytes (OSError(28, 'No space left on
    device')); rerun to resume': a Python repr, and a rerun on the same full disk fails the same way."""
    server.files["v.tar"] = b"x" * 300_000
    dest = tmp_path / "v.tar"
    dest.with_name("v.tar.part").symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(AfilmError) as info:
        dl.download(f"{server.url}/v.tar", dest)
    assert str(info.value) == (f"cannot write {dest}.part: the disk is full (0 bytes of {server.url}/v.tar "
                               "downloaded, kept); free some space and rerun to resume")


def test_extraction_checks_the_free_space_first(vctk_mini, tmp_path, monkeypatch):
    """An archive whose files do not fit was extracted until the disk was full, then
    'afilm: error: No space left on device (AFILM_DEBUG=1 shows where)', a corpus half there."""
    archive = tmp_path / "VCTK-Corpus.tar.gz"
    archive.write_bytes(vctk_tar(vctk_mini))
    need = sum(m.size for m in tarfile.open(archive).getmembers())
    real = shutil.disk_usage
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: real(p)._replace(free=need // 2))
    with pytest.raises(AfilmError, match=rf"^{archive}: its files need {need / 1e6:.1f} MB, and "
                       rf"{tmp_path / 'x'} has {need // 2 / 1e6:.1f} MB free: free some space"):
        extract(archive, tmp_path / "x")
    assert not (tmp_path / "x" / "VCTK-Corpus").exists()
    monkeypatch.setattr(dl.shutil, "disk_usage", real)

    def full(*args, **kwargs):  # the space went while extracting (another process wrote too)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(tarfile.TarFile, "extractall", full)
    with pytest.raises(AfilmError, match=rf"^cannot extract {archive} into {tmp_path / 'y'}: the disk is "
                       "full; free some space and rerun"):
        extract(archive, tmp_path / "y")


def test_a_stopped_extraction_is_said_by_a_later_prepare(server, vctk_mini, tmp_path, monkeypatch):
    """Ctrl-C during the extraction left a corpus half there, which `afilm prepare vctk` without
    --download then prepared without a word, as if it were the whole archive."""
    body = vctk_tar(vctk_mini)
    server.files["VCTK-Corpus.tar.gz"] = body
    url = f"{server.url}/VCTK-Corpus.tar.gz"
    root = tmp_path / "vctk"
    real = tarfile.TarFile.extractall

    def stopped(self, path=".", members=None, **kwargs):  # the first speaker's files, then Ctrl-C
        real(self, path, [m for m in self.getmembers() if "/p225/" in m.name], **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(tarfile.TarFile, "extractall", stopped)
    with pytest.raises(KeyboardInterrupt):
        fetch_and_extract(Archive(url, "VCTK-Corpus.tar.gz"), root, progress=lambda *a: None)
    monkeypatch.undo()
    audio = root / "VCTK-Corpus" / "wav48"
    assert (audio / "p225").is_dir() and not (audio / "p226").exists()
    args = ["prepare", "vctk", "--root", str(root), "--r", "2", "--multiple", "1", "--out", str(tmp_path)]
    proc = afilm(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (f"warning: the extraction of VCTK-Corpus.tar.gz into {root} by --download was stopped before it "
            "finished: the corpus there may be incomplete (add --download to finish it)") in proc.stderr
    proc = afilm(*args, "--download", "--url", url, "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "stopped before it finished" not in proc.stderr and len(server.requests) == 1  # the kept archive
    assert len(list((audio / "p226").iterdir())) == 3
    hidden = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert hidden == [".afilm-extracted-VCTK-Corpus.tar.gz"], hidden


def _tar(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w") as tf:
        for m in members:
            tf.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


def test_odd_members_are_refused_before_anything_is_extracted(tmp_path):
    """'a/../../x' (inside the folder once resolved) was passed to tarfile, whose makedirs failed with
    'File exists: .../wav48/../..' (an OSError, exit 1); a FIFO or device member was refused only when
    reached, the files before it written, as a 'corrupt archive'; and a member written outside the
    folder was said without naming the archive."""
    out = tmp_path / "out"
    odd = _tar(tmp_path / "odd.tar", _member("VCTK-Corpus/a.wav"), _member("VCTK-Corpus/wav48/../../x.wav"))
    with pytest.raises(AfilmError, match=rf"^{odd}: refusing member 'VCTK-Corpus/wav48/../../x.wav': a path "
                       r"with '\.\.' in it \(nothing was extracted; not an archive "
                       r"to extract: delete it, or give another --url\)"):
        extract(odd, out)
    fifo = _tar(tmp_path / "fifo.tar", _member("VCTK-Corpus/a.wav"),
                _member("VCTK-Corpus/f", tarfile.FIFOTYPE))
    with pytest.raises(AfilmError, match=rf"^{fifo}: refusing member 'VCTK-Corpus/f': a FIFO, not a file or "
                       r"folder \(nothing was extracted; not an archive "
                       r"to extract: delete it, or give another --url\)"):
        extract(fifo, out)
    up = _tar(tmp_path / "up.tar", _member("VCTK-Corpus/a.wav"), _member("../x.wav"))
    with pytest.raises(AfilmError, match=rf"^{up}: refusing member '\.\./x\.wav': it would be written "
                       rf"outside {out.resolve()} \(nothing was extracted; not an archive "
                       r"to extract: delete it, or give another --url\)"):
        extract(up, out)
    assert not any(out.rglob("*")) and not (tmp_path / "x.wav").exists()


def test_help_says_where_download_puts_the_corpus_by_default(tmp_path):
    """--download without --root (or AFILM_VCTK) extracts into data/VCTK, which neither --help nor the
    README said."""
    proc = afilm("prepare", "vctk", "--help", cwd=tmp_path)
    text = " ".join(proc.stdout.replace("│", " ").split())
    assert "or where --download puts it (default with --download: data/VCTK)" in text, text


def test_a_download_into_a_log_file_says_how_far_it_is(server, vctk_mini, tmp_path, monkeypatch, capsys):
    """Where stderr is no terminal (nohup, a log file) no bar shows, and an 11 GB download passed in
    silence from 'downloading ...' to its end: now a line every minute (here every block)."""
    body = vctk_tar(vctk_mini)
    server.files["VCTK-Corpus.tar.gz"] = body
    monkeypatch.setattr(dl, "PLAIN_EVERY", 0.0)
    fetch_and_extract(Archive(f"{server.url}/VCTK-Corpus.tar.gz", "VCTK-Corpus.tar.gz", len(body)),
                      tmp_path / "vctk")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("download: ")]
    assert len(lines) >= 2, lines  # blocks of 1 MiB
    total = f"{len(body) / 1e6:.1f} MB"
    assert lines[-1].startswith(f"download: {total} of {total} (100%), ") and lines[-1].endswith("B/s"), lines


def test_the_plain_progress_lines_come_at_most_every_interval():
    said, now = [], [100.0]
    plain = dl.PlainProgress(said.append, every=60.0, first=10.0, clock=lambda: now[0])
    for t, done in ((100.0, 1_000_000), (105.0, 6_000_000), (110.0, 11_000_000), (150.0, 51_000_000),
                    (170.0, 71_000_000)):
        now[0] = t
        plain(done, 1_001_000_000)
    # the first at 10 s (1 MB/s since the first block), the next not before 60 s after it
    assert said == ["download: 11.0 MB of 1.0 GB (1%), 1.0 MB/s, about 17 min left",
                    "download: 71.0 MB of 1.0 GB (7%), 1.0 MB/s, about 16 min left"]
    now[0] = 300.0
    plain(1_000_000_000, 1_001_000_000)
    assert said[-1] == "download: 1.0 GB of 1.0 GB (100%), 5.0 MB/s, under a minute left"


def test_a_failed_download_leaves_no_empty_root(server, tmp_path):
    """A download that failed before its first byte (a 404) left the --root folder it had made, empty."""
    root = tmp_path / "new" / "vctk"
    proc = afilm("prepare", "vctk", "--root", str(root), "--download", "--url", f"{server.url}/missing.zip",
                 cwd=tmp_path)
    assert proc.returncode == 2 and "HTTP 404" in proc.stderr, proc.stderr
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    proc = afilm("prepare", "vctk", "--root", str(tmp_path / "kept"), "--download", "--url",
                 f"{server.url}/missing.zip", cwd=tmp_path)
    assert proc.returncode == 2 and (tmp_path / "kept").is_dir()


def test_a_line_of_sha256sum_output_is_taken_for_its_sum():
    """'HASH  VCTK-Corpus.zip', pasted from sha256sum or a mirror's SHA256SUMS, was refused."""
    h = "ab" * 32
    assert dl.parse_sha256(f"{h}  VCTK-Corpus-0.92.zip") == h
    assert dl.parse_sha256(f" {h.upper()} *VCTK-Corpus-0.92.zip\n") == h
    with pytest.raises(AfilmError, match="is not a SHA-256"):
        dl.parse_sha256(f"{h}0  x.zip")  # 65 digits


def test_ctrl_c_during_the_download_says_the_part_is_kept(server, tmp_path, capsys):
    """Ctrl-C said only 'afilm: interrupted': nothing about the partial download a rerun resumes."""
    body = os.urandom(3 << 20)
    server.files["v.zip"] = body

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch_and_extract(Archive(f"{server.url}/v.zip", "v.zip", len(body)), tmp_path / "r", progress=stop)
    part = tmp_path / "r" / "v.zip.part"
    assert part.is_file()
    assert (f"download stopped: {part} ({part.stat().st_size / 1e6:.1f} MB) is kept; rerun the same command "
            "to resume it") in capsys.readouterr().err


def _stop_at(n: int):
    """A progress callback that stops the download (Ctrl-C) once ``n`` bytes are there."""
    def stop(done, total):
        if done >= n:
            raise KeyboardInterrupt
    return stop


NOT_RESUMED = ("not resuming {part}: the server sent no ETag or Last-Modified to tell whether the file "
               "changed there since, and no --sha256 was given to check it (a resume could splice two "
               "versions); downloading it again from the start")
AGAIN = ("rerun to download it again from the start (the server sent no ETag or Last-Modified to resume it "
         "by safely; with --sha256 a rerun resumes it)")


def test_a_part_the_server_gave_no_validator_for_is_not_spliced(server, tmp_path, capsys):
    """A server that sends no ETag or Last-Modified leaves If-Range nothing to check: the part was resumed
    blind, and a file changed on the server in between (a mirror updated) came back spliced from two
    versions, with no sum to notice it (VCTK 0.80, a bare --url). It is downloaded again, and said so."""
    server.validators = False
    old, new = os.urandom(300_000), os.urandom(300_000)  # the same size: no size check could tell either
    server.files["v.zip"] = old
    url, dest = f"{server.url}/v.zip", tmp_path / "v.zip"
    part = tmp_path / "v.zip.part"
    with pytest.raises(KeyboardInterrupt):
        dl.download(url, dest, chunk=50_000, progress=_stop_at(1))
    assert part.read_bytes() == old[:50_000] and not (tmp_path / "v.zip.part.validator").exists()
    server.files["v.zip"] = new
    capsys.readouterr()
    assert dl.download(url, dest).read_bytes() == new
    assert server.ranges[-1] is None  # asked for whole, not from byte 50000
    assert NOT_RESUMED.format(part=part) in capsys.readouterr().err.splitlines()
    # and what a stopped download says of a rerun is what the rerun does
    with pytest.raises(AfilmError) as info:
        dl.download(url, tmp_path / "w.zip", size=300_001)
    assert str(info.value) == (
        f"download of {url} is incomplete: 300000 of the expected 300001 bytes (the partial file "
        f"{tmp_path / 'w.zip.part'} is kept); {AGAIN}")


def test_ctrl_c_says_a_part_without_validator_is_downloaded_again(server, tmp_path, capsys):
    """It said 'rerun the same command to resume it', which a rerun without --sha256 no longer does."""
    server.validators = False
    body = os.urandom(3 << 20)
    server.files["v.zip"] = body
    with pytest.raises(KeyboardInterrupt):
        fetch_and_extract(Archive(f"{server.url}/v.zip", "v.zip"), tmp_path / "r", progress=_stop_at(1))
    part = tmp_path / "r" / "v.zip.part"
    assert (f"download stopped: {part} ({part.stat().st_size / 1e6:.1f} MB) is kept; "
            f"{AGAIN.replace('rerun', 'rerun the same command', 1)}") in capsys.readouterr().err
    # with a sum to check, the same stop says that a rerun resumes
    with pytest.raises(KeyboardInterrupt):
        fetch_and_extract(Archive(f"{server.url}/v.zip", "v.zip", None, hashlib.sha256(body).hexdigest()),
                          tmp_path / "s", progress=_stop_at(1))
    part = tmp_path / "s" / "v.zip.part"
    assert (f"download stopped: {part} ({part.stat().st_size / 1e6:.1f} MB) is kept; rerun the same command "
            "to resume it") in capsys.readouterr().err


def test_with_sha256_a_part_without_validator_is_resumed_and_checked(server, tmp_path, capsys):
    """With --sha256 the end result is checked, so a resume without a validator is safe: an unchanged file
    is resumed; a changed one comes spliced, fails the check, is deleted, and a rerun fetches it whole."""
    server.validators = False
    old, new = os.urandom(300_000), os.urandom(300_000)
    server.files["v.zip"] = old
    url, dest, part = f"{server.url}/v.zip", tmp_path / "v.zip", tmp_path / "v.zip.part"
    part.write_bytes(old[:120_000])  # an interrupted earlier run
    server.sent = 0
    assert dl.download(url, dest, sha256=hashlib.sha256(old).hexdigest()).read_bytes() == old
    assert server.ranges == ["bytes=120000-"] and server.sent == 180_000
    assert "not resuming" not in capsys.readouterr().err
    dest.unlink()
    part.write_bytes(old[:120_000])
    server.files["v.zip"] = new  # changed on the server since
    sha = hashlib.sha256(new).hexdigest()
    with pytest.raises(AfilmError) as info:
        dl.download(url, dest, sha256=sha)
    spliced = hashlib.sha256(old[:120_000] + new[120_000:]).hexdigest()
    assert str(info.value) == (f"{url}: the downloaded file did not match the expected SHA-256 (got "
                               f"{spliced}, expected {sha}) and was deleted; rerun to download it again")
    assert not part.exists() and not dest.exists()
    assert dl.download(url, dest, sha256=sha).read_bytes() == new and server.ranges[-1] is None


def test_a_server_that_ignores_if_range_does_not_splice(server, tmp_path, capsys):
    """A server that honours Range but ignores If-Range (some object stores do) answered a part of an older
    version with 206 and the new file's bytes after it; that 206 names the new file's ETag, which the
    download now compares with the part's: another one is the whole file asked for again."""
    server.if_range = False
    old, new = os.urandom(300_000), os.urandom(300_000)
    server.files["v.zip"] = old
    url, dest, part = f"{server.url}/v.zip", tmp_path / "v.zip", tmp_path / "v.zip.part"
    with pytest.raises(KeyboardInterrupt):
        dl.download(url, dest, chunk=50_000, progress=_stop_at(1))
    assert part.read_bytes() == old[:50_000] and (tmp_path / "v.zip.part.validator").exists()
    server.files["v.zip"] = new
    capsys.readouterr()
    assert dl.download(url, dest).read_bytes() == new
    assert server.ranges[-2:] == ["bytes=50000-", None]
    assert (f"not resuming {part}: the server answered with another version of the file than the one it is "
            "part of (it ignored If-Range); downloading it again from the start") in capsys.readouterr().err
    # unchanged, it resumes as before
    part.write_bytes(new[:50_000])
    (tmp_path / "v.zip.part.validator").write_text(f'"{hashlib.sha256(new).hexdigest()[:16]}"')
    dest.unlink()
    server.sent = 0
    assert dl.download(url, dest).read_bytes() == new and server.sent == 250_000


def test_prepare_vctk_download_says_why_a_part_is_not_resumed(server, vctk_mini, tmp_path):
    """Through the CLI: a .part of an archive that changed on a server without validators was resumed into
    an archive spliced from two versions (here a corrupt tar.gz); it is now downloaded whole, and said."""
    server.validators = False
    old, new = vctk_tar(vctk_mini, n=2), vctk_tar(vctk_mini, n=3)
    server.files["VCTK-Corpus.tar.gz"] = new
    root = tmp_path / "vctk"
    root.mkdir()
    part = root / "VCTK-Corpus.tar.gz.part"
    part.write_bytes(old[: len(old) // 2])  # an earlier run's, stopped; the mirror updated since
    proc = afilm("prepare", "vctk", "--download", "--url", f"{server.url}/VCTK-Corpus.tar.gz", "--root",
                 str(root), "--r", "2", "--multiple", "1", "--out", str(tmp_path / "data"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert NOT_RESUMED.format(part=part) in proc.stderr.splitlines(), proc.stderr
    assert server.ranges == [None] and len(list((root / "VCTK-Corpus" / "wav48" / "p226").iterdir())) == 3
