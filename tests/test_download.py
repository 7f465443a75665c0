"""Resumable download + extraction against a real HTTP server on 127.0.0.1 (a thread in this process)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import pytest

from afilm_cli.data.download import Archive, download, extract, fetch_and_extract
from afilm_cli.errors import AfilmError


class Server:
    """Serves ``files`` (name -> bytes) with HTTP Range support; records what it was asked."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        self.sent = 0
        self.honour_range = True
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = 0
                etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
                if self.headers.get("If-Range") not in (None, etag):
                    rng = None  # the client's part is of another version of the file: send it whole
                if rng and outer.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                outer.sent += len(body) - start  # before writing: the client may finish first
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def vctk_zip(vctk_mini: Path) -> bytes:
    """A small VCTK-shaped zip: VCTK-Corpus/wav48/<spk>/<files> for two speakers, 3 files each."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for spk in ("p225", "p226"):
            for f in sorted((vctk_mini / "wav48" / spk).glob("*.wav"))[:3]:
                zf.write(f, f"VCTK-Corpus/wav48/{spk}/{f.name}")
    return buf.getvalue()


def test_download_verifies_and_resumes_after_partial(server, tmp_path):
    body = os.urandom(300_000)
    server.files["a.bin"] = body
    sha = hashlib.sha256(body).hexdigest()
    dest = tmp_path / "a.bin"
    dest.with_name("a.bin.part").write_bytes(body[:120_000])  # an interrupted earlier run
    seen = []
    path = download(f"{server.url}/a.bin", dest, size=len(body), sha256=sha, chunk=50_000,
                    progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == body and not dest.with_name("a.bin.part").exists()
    assert server.ranges == ["bytes=120000-"] and server.sent == len(body) - 120_000
    assert seen[-1] == (len(body), len(body))
    assert download(f"{server.url}/a.bin", dest, size=len(body), sha256=sha) == dest  # done: no request
    assert len(server.ranges) == 1


def test_server_without_range_restarts_and_checks_fail_clearly(server, tmp_path):
    body = os.urandom(100_000)
    server.files["b.zip"] = body
    server.honour_range = False
    part = tmp_path / "b.zip.part"
    part.write_bytes(b"x" * 10_000)
    path = download(f"{server.url}/b.zip", tmp_path / "b.zip", sha256=hashlib.sha256(body).hexdigest())
    assert path.read_bytes() == body
    with pytest.raises(AfilmError, match="SHA-256 mismatch"):
        download(f"{server.url}/b.zip", tmp_path / "c.zip", sha256="0" * 64)
    assert not (tmp_path / "c.zip.part").exists() and not (tmp_path / "c.zip").exists()
    with pytest.raises(AfilmError, match="expected 100001"):
        download(f"{server.url}/b.zip", tmp_path / "d.zip", size=100_001)
    assert (tmp_path / "d.zip.part").stat().st_size == 100_000  # kept for a later resume
    with pytest.raises(AfilmError, match="HTTP 404"):
        download(f"{server.url}/missing.zip", tmp_path / "e.zip")
    with pytest.raises(AfilmError, match="cannot download"):
        download("http://127.0.0.1:1/x.zip", tmp_path / "f.zip", timeout=5)


def test_resume_checks_that_the_part_belongs_to_the_file(server, tmp_path):
    """With no size or checksum to check (VCTK 0.80, a bare --url) the server's answers must do it."""
    body = os.urandom(200_000)
    server.files["v.zip"] = body
    url = f"{server.url}/v.zip"
    # a stale part longer than the file: 416 names the file's size, which is not ours: start over
    (tmp_path / "v.zip.part").write_bytes(os.urandom(300_000))
    assert download(url, tmp_path / "v.zip").read_bytes() == body
    assert server.ranges == ["bytes=300000-", None]
    # a part that is the whole file: 416 with our size, nothing fetched
    (tmp_path / "w.zip.part").write_bytes(body)
    assert download(url, tmp_path / "w.zip").read_bytes() == body and server.ranges[-1] == "bytes=200000-"
    # interrupted, then the file changed on the server: If-Range with the old ETag brings it whole
    (tmp_path / "x.zip.part").write_bytes(body[:50_000])
    (tmp_path / "x.zip.part.validator").write_text(f'"{hashlib.sha256(body).hexdigest()[:16]}"')
    new = os.urandom(120_000)
    server.files["v.zip"] = new
    assert download(url, tmp_path / "x.zip").read_bytes() == new
    assert not (tmp_path / "x.zip.part.validator").exists()
    # and with the file unchanged it resumes: the validator written by the first request is sent back
    server.files["y.zip"] = body
    with pytest.raises(AfilmError, match="expected 200001"):
        download(f"{server.url}/y.zip", tmp_path / "y.zip", size=200_001)
    (tmp_path / "y.zip.part").write_bytes(body[:70_000])  # as if the first run had stopped there
    server.sent = 0
    assert download(f"{server.url}/y.zip", tmp_path / "y.zip").read_bytes() == body
    assert server.sent == 130_000


def test_extract_tar_and_refuse_escaping_members(tmp_path):
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tf:
        data = b"hello"
        info = tarfile.TarInfo("corpus/wav48/p1/a.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    assert (extract(good, tmp_path / "x") / "corpus/wav48/p1/a.txt").read_bytes() == b"hello"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.txt", "no")
    with pytest.raises(AfilmError, match="outside"):
        extract(evil, tmp_path / "y")
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(AfilmError, match="(corrupt archive|not a zip).*delete it and rerun"):
        extract(tmp_path / "junk.zip", tmp_path / "z")
    whole = good.read_bytes()  # a download cut in half: the gzip stream ends early
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AfilmError, match="delete it and rerun"):
        extract(cut, tmp_path / "w")


def test_fetch_and_extract_resumes_then_prepares_via_cli(server, vctk_mini, tmp_path):
    body = vctk_zip(vctk_mini)
    server.files["VCTK-Corpus.zip"] = body
    sha = hashlib.sha256(body).hexdigest()
    root = tmp_path / "vctk"
    root.mkdir()
    (root / "VCTK-Corpus.zip.part").write_bytes(body[: len(body) // 2])
    fetch_and_extract(Archive(f"{server.url}/VCTK-Corpus.zip", "VCTK-Corpus.zip", len(body), sha), root,
                      progress=lambda *a: None)
    assert server.ranges == [f"bytes={len(body) // 2}-"]
    assert sorted(p.name for p in (root / "VCTK-Corpus" / "wav48").iterdir()) == ["p225", "p226"]
    assert not (root / "VCTK-Corpus.zip").exists()  # deleted after extraction

    # the real CLI: --download with --url into a fresh root, then the recipe runs on it
    root2 = tmp_path / "vctk2"
    args = ["prepare", "vctk", "--download", "--url", f"{server.url}/VCTK-Corpus.zip", "--sha256", sha,
            "--root", str(root2), "--r", "2", "--multiple", "1", "--out", str(tmp_path / "data")]
    proc = subprocess.run([sys.executable, "-m", "afilm_cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "data" / "vctk-single-r2-decimate-train.h5", "r") as f:
        assert len(json.loads(f.attrs["sources"])) == 3 and f["data"].shape[0] > 0
    # a rerun neither downloads nor extracts again
    n = len(server.ranges)
    proc = subprocess.run([sys.executable, "-m", "afilm_cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and len(server.ranges) == n
    bad = [*args[:5], "--sha256", "0" * 64, "--root", str(tmp_path / "vctk3"), *args[9:]]
    proc = subprocess.run([sys.executable, "-m", "afilm_cli", *bad], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "SHA-256 mismatch" in proc.stderr


def afilm(*args: str, cwd: Path, columns: int = 200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "afilm_cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": str(columns)})


def prepare_args(url: str, root: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "vctk", "--download", "--url", url, "--root", str(root), "--r", "2", "--multiple", "1",
            "--out", str(out), *extra]


def test_deleted_corpus_is_extracted_or_downloaded_again(server, vctk_mini, tmp_path):
    """The marker of a finished extraction no longer stands for a corpus that was deleted since."""
    body = vctk_zip(vctk_mini)
    server.files["VCTK-Corpus.zip"] = body
    url, sha = f"{server.url}/VCTK-Corpus.zip", hashlib.sha256(body).hexdigest()
    root = tmp_path / "vctk"
    fetch_and_extract(Archive(url, "VCTK-Corpus.zip", len(body), sha), root, progress=lambda *a: None)
    shutil.rmtree(root / "VCTK-Corpus")
    n = len(server.ranges)
    proc = afilm(*prepare_args(url, root, tmp_path / "data", "--force"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "its files are gone: downloading it again" in proc.stderr and len(server.ranges) == n + 1
    assert (tmp_path / "data" / "vctk-single-r2-decimate-train.h5").exists()
    assert not (root / "VCTK-Corpus.zip").exists()  # this run's download: deleted after extraction
    # deleted again, but the archive is back (the user's copy): checked, extracted, kept, no request
    shutil.rmtree(root / "VCTK-Corpus")
    (root / "VCTK-Corpus.zip").write_bytes(body)
    proc = afilm(*prepare_args(url, root, tmp_path / "data", "--sha256", sha), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"its files are gone: extracting {root / 'VCTK-Corpus.zip'} again" in proc.stderr
    assert "reusing" in proc.stderr and len(server.ranges) == n + 1
    assert (root / "VCTK-Corpus.zip").read_bytes() == body and (root / "VCTK-Corpus" / "wav48").is_dir()


def test_a_marker_without_its_entries_is_redone(server, vctk_mini, tmp_path, capsys):
    """Without ``present``: the top-level entries the marker names decide, or for a marker of an
    older afilm (the URL alone), whether anything but the archive is left in the folder."""
    body = vctk_zip(vctk_mini)
    server.files["c.zip"] = body
    archive = Archive(f"{server.url}/c.zip", "c.zip")
    root = tmp_path / "r"
    root.mkdir()
    (root / ".afilm-extracted-c.zip").write_text(archive.url + "\n")  # an older marker, nothing extracted
    fetch_and_extract(archive, root, progress=lambda *a: None)
    assert len(server.ranges) == 1 and (root / "VCTK-Corpus" / "wav48" / "p225").is_dir()
    assert (root / ".afilm-extracted-c.zip").read_text().splitlines() == [archive.url, "VCTK-Corpus"]
    fetch_and_extract(archive, root, progress=lambda *a: None)
    assert len(server.ranges) == 1  # there: nothing done
    shutil.rmtree(root / "VCTK-Corpus")
    fetch_and_extract(archive, root, progress=lambda *a: None)
    assert len(server.ranges) == 2 and "downloading it again" in capsys.readouterr().err


def test_malformed_sha256_is_refused_before_any_request(server, tmp_path):
    server.files["v.zip"] = b"x" * 1000
    url = f"{server.url}/v.zip"
    for bad in ("abc", "g" * 64, "0" * 63):
        with pytest.raises(AfilmError, match="is not a SHA-256: expected 64 hexadecimal digits"):
            download(url, tmp_path / "v.zip", sha256=bad)
        with pytest.raises(AfilmError, match="--sha256 .* is not a SHA-256"):
            fetch_and_extract(Archive(url, "v.zip", None, bad), tmp_path / "r", progress=lambda *a: None)
    root = tmp_path / "cli"
    proc = afilm(*prepare_args(url, root, tmp_path / "data", "--sha256", "f96258be9fdc"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "afilm: error: --sha256 'f96258be9fdc' is not a SHA-256" in proc.stderr
    assert server.ranges == [] and not root.exists() and not (tmp_path / "v.zip").exists()
    # upper case is a SHA-256 too
    body = server.files["v.zip"]
    assert download(url, tmp_path / "v.zip", sha256=hashlib.sha256(body).hexdigest().upper()).exists()


def test_an_archive_already_there_is_checked_and_reused(server, vctk_mini, tmp_path, capsys):
    body = vctk_zip(vctk_mini)
    server.files["VCTK-Corpus.zip"] = body
    url, sha = f"{server.url}/VCTK-Corpus.zip", hashlib.sha256(body).hexdigest()
    good = tmp_path / "good"
    good.mkdir()
    (good / "VCTK-Corpus.zip").write_bytes(body)
    fetch_and_extract(Archive(url, "VCTK-Corpus.zip", len(body), sha), good)  # the default progress bar
    err = capsys.readouterr().err
    assert f"reusing {good / 'VCTK-Corpus.zip'}, already there (not downloaded); checking its SHA-256" in err
    assert "downloading" not in err and "bytes" not in err and server.ranges == []
    assert (good / "VCTK-Corpus" / "wav48" / "p226").is_dir()
    assert (good / "VCTK-Corpus.zip").read_bytes() == body and "kept" in err  # the user's file stays
    # another file under the archive's name: refused, named, and left where it was
    for archive, match in ((Archive(url, "VCTK-Corpus.zip", None, sha), f"its SHA-256 is .*, expected {sha}"),
                           (Archive(url, "VCTK-Corpus.zip", len(body), sha), f"expected {len(body)}")):
        bad = tmp_path / f"bad{archive.size}"
        bad.mkdir()
        (bad / "VCTK-Corpus.zip").write_bytes(body[:-10] + b"0123456789"[: 9 if archive.size else 10])
        with pytest.raises(AfilmError, match=match) as exc:
            fetch_and_extract(archive, bad, progress=lambda *a: None)
        assert str(bad / "VCTK-Corpus.zip") in str(exc.value) and "left in place" in str(exc.value)
        assert (bad / "VCTK-Corpus.zip").exists() and not (bad / "VCTK-Corpus").exists()
    assert server.ranges == []
    # download() on its own checks an existing file too
    with pytest.raises(AfilmError, match="SHA-256 is"):
        download(url, tmp_path / "badNone" / "VCTK-Corpus.zip", sha256="0" * 64)


def test_an_archive_afilm_downloaded_is_deleted_after_a_later_extraction(server, vctk_mini, tmp_path, capsys,
                                                                         monkeypatch):
    """A download whose extraction was stopped (Ctrl-C, disk full) left its archive: the rerun called
    it the user's ("not downloaded") and kept it (11 GB for VCTK 0.92). It is afilm's and goes."""
    from afilm_cli.data import download as dl

    body = vctk_zip(vctk_mini)
    server.files["VCTK-Corpus.zip"] = body
    sha = hashlib.sha256(body).hexdigest()
    archive = Archive(f"{server.url}/VCTK-Corpus.zip", "VCTK-Corpus.zip", len(body), sha)
    root = tmp_path / "root"

    def stopped(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(dl, "_extract_members", stopped)
        with pytest.raises(KeyboardInterrupt):
            fetch_and_extract(archive, root, progress=lambda *a: None)
    assert (root / "VCTK-Corpus.zip").read_bytes() == body
    capsys.readouterr()
    fetch_and_extract(archive, root, progress=lambda *a: None)
    err = capsys.readouterr().err
    assert f"reusing {root / 'VCTK-Corpus.zip'}, downloaded by an earlier run" in err and "kept" not in err
    assert (root / "VCTK-Corpus" / "wav48" / "p226").is_dir()
    assert sorted(p.name for p in root.iterdir()) == [".afilm-extracted-VCTK-Corpus.zip", "VCTK-Corpus"]


def test_sha256_line_is_one_line(server, vctk_mini, tmp_path):
    """No published sum (VCTK 0.80, a bare --url): the SHA-256 is printed whole, never wrapped."""
    body = vctk_zip(vctk_mini)
    server.files["VCTK-Corpus.zip"] = body
    proc = afilm(*prepare_args(f"{server.url}/VCTK-Corpus.zip", tmp_path / "deep" / "folder" / "vctk",
                               tmp_path / "data"), cwd=tmp_path, columns=60)
    assert proc.returncode == 0, proc.stderr
    assert f"VCTK-Corpus.zip: SHA-256 {hashlib.sha256(body).hexdigest()} (no published" in proc.stderr


def test_download_root_that_is_a_file_or_cannot_be_made(server, tmp_path):
    server.files["v.zip"] = b"x" * 1000
    url = f"{server.url}/v.zip"
    (tmp_path / "afile").write_text("not a folder")
    proc = afilm(*prepare_args(url, tmp_path / "afile", tmp_path / "data"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"afilm: error: --root {tmp_path / 'afile'} is a file, not a folder" in proc.stderr
    with pytest.raises(AfilmError, match=f"cannot create folder {tmp_path / 'afile' / 'sub'}: .* is a file"):
        fetch_and_extract(Archive(url, "v.zip"), tmp_path / "afile" / "sub", progress=lambda *a: None)
    assert server.ranges == []
