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
import zipfile
from pathlib import Path

import h5py
import pytest
from http_server import Server

from afilm_cli.data.download import Archive, download, extract, fetch_and_extract
from afilm_cli.errors import AfilmError


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
    # the whole file came and was checked: not a "partial file"
    with pytest.raises(AfilmError) as info:
        download(f"{server.url}/b.zip", tmp_path / "c.zip", sha256="0" * 64)
    assert str(info.value) == (
        f"{server.url}/b.zip: the downloaded file did not match the expected SHA-256 (got "
        f"{hashlib.sha256(body).hexdigest()}, expected {'0' * 64}) and was deleted; rerun to download it "
        "again")
    assert not (tmp_path / "c.zip.part").exists() and not (tmp_path / "c.zip").exists()
    with pytest.raises(AfilmError) as info:
        download(f"{server.url}/b.zip", tmp_path / "d.zip", size=100_001)
    assert str(info.value) == (f"download of {server.url}/b.zip is incomplete: 100000 of the expected 100001 "
                               f"bytes; rerun to resume (the partial file {tmp_path / 'd.zip.part'} is kept)")
    assert (tmp_path / "d.zip.part").stat().st_size == 100_000  # kept for a later resume
    # more than expected is not a part to resume (a rerun would start over): deleted, and said so
    with pytest.raises(AfilmError) as info:
        download(f"{server.url}/b.zip", tmp_path / "g.zip", size=99_999)
    assert str(info.value) == (f"download of {server.url}/b.zip gave 100000 bytes, more than the expected "
                               "99999 (not the expected file) and was deleted")
    assert not (tmp_path / "g.zip.part").exists() and not (tmp_path / "g.zip.part.validator").exists()
    with pytest.raises(AfilmError, match="HTTP 404"):
        download(f"{server.url}/missing.zip", tmp_path / "e.zip")
    with pytest.raises(AfilmError, match="cannot download"):
        download("http://127.0.0.1:1/x.zip", tmp_path / "f.zip", timeout=5)


def test_resume_checks_that_the_part_belongs_to_the_file(server, tmp_path):
    """With no size or checksum to check (VCTK 0.80, a bare --url) the server's answers must do it."""
    body = os.urandom(200_000)
    server.files["v.zip"] = body
    url = f"{server.url}/v.zip"
    etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'  # recorded beside a part: else it is not resumed
    # a stale part longer than the file: 416 names the file's size, which is not ours: start over
    (tmp_path / "v.zip.part").write_bytes(os.urandom(300_000))
    (tmp_path / "v.zip.part.validator").write_text(etag)
    assert download(url, tmp_path / "v.zip").read_bytes() == body
    assert server.ranges == ["bytes=300000-", None]
    # a part that is the whole file: 416 with our size, nothing fetched
    (tmp_path / "w.zip.part").write_bytes(body)
    (tmp_path / "w.zip.part.validator").write_text(etag)
    assert download(url, tmp_path / "w.zip").read_bytes() == body and server.ranges[-1] == "bytes=200000-"
    # interrupted, then the file changed on the server: If-Range with the old ETag brings it whole
    (tmp_path / "x.zip.part").write_bytes(body[:50_000])
    (tmp_path / "x.zip.part.validator").write_text(etag)
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
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        f"afilm: error: {server.url}/VCTK-Corpus.zip: the downloaded file did not match the expected SHA-256 "
        f"(got {sha}, expected {'0' * 64}) and was deleted; rerun to download it again")


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
    # the URL, the top-level entries, then every file extracted below them, with its size
    assert (root / ".afilm-extracted-c.zip").read_text().splitlines() == [
        archive.url, "VCTK-Corpus",
        *(f"VCTK-Corpus/wav48/{spk}/{spk}_00{i}.wav\t{size}" for spk in ("p225", "p226") for i in (1, 2, 3)
          if (size := (vctk_mini / f"wav48/{spk}/{spk}_00{i}.wav").stat().st_size))]
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


def test_a_deleted_speaker_folder_is_restored_by_download(server, vctk_mini, tmp_path):
    """The marker lists every file extracted: a speaker folder deleted since is noticed (said in one
    line), warned about without --download, and restored with it; only what is missing is written."""
    body = vctk_zip(vctk_mini)
    server.files["VCTK-Corpus.zip"] = body
    url, sha = f"{server.url}/VCTK-Corpus.zip", hashlib.sha256(body).hexdigest()
    root, out = tmp_path / "vctk", tmp_path / "data"
    multi = ("--sha256", sha, "--split", "multi", "--val-speakers", "p226", "--sam", "1")
    assert afilm(*prepare_args(url, root, out, *multi), cwd=tmp_path).returncode == 0
    wav48 = root / "VCTK-Corpus" / "wav48"
    shutil.rmtree(wav48 / "p226")
    kept = wav48 / "p225" / "p225_001.wav"
    os.utime(kept, ns=(10**18, 10**18))  # a file still there is not written again
    lost = "3 of the 6 files checked are missing (VCTK-Corpus/wav48/p226: all 3)"

    # without --download: said before the error it leads to, nothing fetched
    plain = [a for a in prepare_args(url, root, out, *multi) if a not in ("--download", "--url", url)]
    proc = afilm(*[a for a in plain if a not in ("--sha256", sha)], cwd=tmp_path)
    assert proc.returncode == 2 and len(server.ranges) == 1
    assert (f"warning: VCTK-Corpus.zip was extracted into {root} by --download, but {lost}: preparing "
            "without them (add --download to restore them)\n") in proc.stderr
    assert "--val-speakers p226 not in the corpus" in proc.stderr

    proc = afilm(*prepare_args(url, root, out, *multi), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (f"VCTK-Corpus.zip was extracted into {root} before, but {lost}: downloading it again to "
            "restore them\n") in proc.stderr
    assert len(server.ranges) == 2 and "warning" not in proc.stderr
    assert sorted(p.name for p in (wav48 / "p226").iterdir()) == [f"p226_00{i}.wav" for i in (1, 2, 3)]
    assert kept.stat().st_mtime_ns == 10**18 and not (root / "VCTK-Corpus.zip").exists()
    with h5py.File(out / "vctk-multi-r2-subsample-val.h5", "r") as f:
        assert {Path(s).parent.name for s in json.loads(f.attrs["sources"])} == {"p226"}

    # --force rebuilds the outputs, and only them: the corpus is whole, nothing is fetched
    proc = afilm(*prepare_args(url, root, out, *multi, "--force"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (f"VCTK-Corpus.zip was extracted into {root} before and all 6 files checked are there: not "
            "downloaded or extracted again\n") in proc.stderr
    assert len(server.ranges) == 2 and "skipped" not in proc.stderr
    proc = afilm("prepare", "vctk", "--help", cwd=tmp_path, columns=300)
    assert "does not download or extract the corpus again" in " ".join(proc.stdout.split())


def _kept_tar_extracted(server, vctk_mini, tmp_path) -> tuple[Archive, Path]:
    """A tar.gz of 3 files each of p225 and p226, served, downloaded, extracted into ROOT and kept."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for spk in ("p225", "p226"):
            for f in sorted((vctk_mini / "wav48" / spk).glob("*.wav"))[:3]:
                tf.add(f, f"VCTK-Corpus/wav48/{spk}/{f.name}")
    server.files["v.tar.gz"] = buf.getvalue()
    archive = Archive(f"{server.url}/v.tar.gz", "v.tar.gz")
    root = tmp_path / "root"
    fetch_and_extract(archive, root, keep=True, progress=lambda *a: None)
    return archive, root


def test_a_few_deleted_files_are_noticed_and_restored_from_the_archive(server, vctk_mini, tmp_path, capsys,
                                                                       monkeypatch):
    """A kept archive (here a tar.gz) restores deleted files without a request; files still there,
    even changed ones of the size extracted (sizes are compared, not contents), are left as they are."""
    archive, root = _kept_tar_extracted(server, vctk_mini, tmp_path)
    wav48 = root / "VCTK-Corpus" / "wav48"
    (wav48 / "p225" / "p225_002.wav").unlink()
    (wav48 / "p226" / "p226_003.wav").unlink()
    changed = b"c" * (wav48 / "p225" / "p225_001.wav").stat().st_size
    (wav48 / "p225" / "p225_001.wav").write_bytes(changed)
    lost = ("2 of the 6 files checked are missing (VCTK-Corpus/wav48/p225: 1 of 3, VCTK-Corpus/wav48/p226: "
            "1 of 3)")

    proc = afilm("prepare", "vctk", "--root", str(root), "--r", "2", "--multiple", "1", "--out",
                 str(tmp_path / "data"), cwd=tmp_path)  # no --download: warned, prepared without them
    assert f"by --download, but {lost}: preparing without them" in proc.stderr
    assert sum("missing" in line for line in proc.stderr.splitlines()) == 1

    # a restore stopped midway keeps the marker: the next run restores again, not a full extraction
    # over the files still there (the changed one included)
    from afilm_cli.data import download as dl

    def stopped(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(dl, "_extract_members", stopped)
        with pytest.raises(KeyboardInterrupt):
            fetch_and_extract(archive, root, keep=True, progress=lambda *a: None)
    assert (root / ".afilm-extracted-v.tar.gz").exists()
    capsys.readouterr()
    fetch_and_extract(archive, root, keep=True, progress=lambda *a: None)
    err = capsys.readouterr().err
    assert f"v.tar.gz was extracted into {root} before, but {lost}: extracting {root / 'v.tar.gz'} again" \
        in err
    assert len(server.ranges) == 1 and (root / "v.tar.gz").exists()
    assert (wav48 / "p225/p225_002.wav").read_bytes() == (vctk_mini / "wav48/p225/p225_002.wav").read_bytes()
    assert (wav48 / "p226" / "p226_003.wav").exists()
    assert (wav48 / "p225" / "p225_001.wav").read_bytes() == changed
    fetch_and_extract(archive, root, keep=True, progress=lambda *a: None)
    assert "all 6 files checked are there" in capsys.readouterr().err


def test_a_marker_of_the_previous_format_is_still_accepted(server, vctk_mini, tmp_path, capsys):
    """URL and top-level entries, no files: the entries are checked, and a missing file cannot be."""
    from afilm_cli.data.download import shortfall

    body = vctk_zip(vctk_mini)
    server.files["c.zip"] = body
    archive = Archive(f"{server.url}/c.zip", "c.zip")
    root = tmp_path / "r"
    fetch_and_extract(archive, root, progress=lambda *a: None)
    marker = root / ".afilm-extracted-c.zip"
    marker.write_text(f"{archive.url}\nVCTK-Corpus\n")  # as the previous afilm wrote it
    (root / "VCTK-Corpus" / "wav48" / "p225" / "p225_001.wav").unlink()
    capsys.readouterr()
    fetch_and_extract(archive, root, progress=lambda *a: None)
    assert len(server.ranges) == 1 and marker.read_text() == f"{archive.url}\nVCTK-Corpus\n"
    assert ("c.zip was extracted into " f"{root} before and its folders are there (a marker of an older "
            "afilm: files not listed): not downloaded or extracted again") in capsys.readouterr().err
    short = shortfall(root, marker)
    assert not short and not short.listed and short.checked == 0


def test_a_truncated_file_is_noticed_and_restored_by_download(server, vctk_mini, tmp_path):
    """The marker records each file's size: a file cut short since (a full disk, a copy stopped midway)
    is noticed like a deleted one, the message counting the damaged and the missing apart, and
    --download writes it whole again; the files of the right size are not written."""
    body = vctk_zip(vctk_mini)
    server.files["VCTK-Corpus.zip"] = body
    url, sha = f"{server.url}/VCTK-Corpus.zip", hashlib.sha256(body).hexdigest()
    root, out = tmp_path / "vctk", tmp_path / "data"
    fetch_and_extract(Archive(url, "VCTK-Corpus.zip", len(body), sha), root, progress=lambda *a: None)
    wav48, src = root / "VCTK-Corpus" / "wav48", vctk_mini / "wav48"
    cut = wav48 / "p225" / "p225_002.wav"
    cut.write_bytes(src.joinpath("p225/p225_002.wav").read_bytes()[:1000])
    kept = wav48 / "p225" / "p225_001.wav"
    os.utime(kept, ns=(10**18, 10**18))

    proc = afilm(*prepare_args(url, root, out, "--sha256", sha), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (f"VCTK-Corpus.zip was extracted into {root} before, but 1 of the 6 files checked are damaged, of "
            "another size than extracted (VCTK-Corpus/wav48/p225: 1 of 3): downloading it again to restore "
            "them\n") in proc.stderr
    assert len(server.ranges) == 2 and "skipped" not in proc.stderr
    assert cut.read_bytes() == src.joinpath("p225/p225_002.wav").read_bytes()
    assert kept.stat().st_mtime_ns == 10**18 and not (root / "VCTK-Corpus.zip").exists()

    # one cut short and one deleted: without --download, warned about, counted apart
    cut.write_bytes(b"")
    (wav48 / "p226" / "p226_003.wav").unlink()
    plain = ["prepare", "vctk", "--root", str(root), "--r", "2", "--multiple", "1", "--out", str(out),
             "--force"]
    proc = afilm(*plain, cwd=tmp_path)
    assert (f"warning: VCTK-Corpus.zip was extracted into {root} by --download, but 2 of the 6 files "
            "checked are missing or damaged: 1 missing, 1 of another size than extracted "
            "(VCTK-Corpus/wav48/p225: 1 of 3, VCTK-Corpus/wav48/p226: 1 of 3): preparing without the missing "
            "ones and with the damaged ones as they are (add --download to restore them)\n") in proc.stderr
    assert len(server.ranges) == 2
    proc = afilm(*prepare_args(url, root, out, "--sha256", sha, "--force"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ("but 2 of the 6 files checked are missing or damaged: 1 missing, 1 of another size than "
            "extracted (VCTK-Corpus/wav48/p225: 1 of 3, VCTK-Corpus/wav48/p226: 1 of 3): downloading it "
            "again") in proc.stderr
    for spk, name in (("p225", "p225_002.wav"), ("p226", "p226_003.wav")):
        assert (wav48 / spk / name).read_bytes() == (src / spk / name).read_bytes()
    assert len(server.ranges) == 3 and kept.stat().st_mtime_ns == 10**18
    proc = afilm(*prepare_args(url, root, out, "--sha256", sha, "--force"), cwd=tmp_path)
    assert proc.returncode == 0 and "all 6 files checked are there: not downloaded" in proc.stderr
    assert "damaged" not in proc.stderr and len(server.ranges) == 3


def test_a_damaged_file_is_replaced_not_written_through(server, vctk_mini, tmp_path, capsys):
    """From a kept tar.gz, no request: a file cut short is written whole again, and one replaced by a
    link to a file of another size gets its own file back, the link's target left as it was (a target
    in the root: one outside it is refused as an escape by the member check)."""
    archive, root = _kept_tar_extracted(server, vctk_mini, tmp_path)
    wav48, src = root / "VCTK-Corpus" / "wav48", vctk_mini / "wav48"
    with open(wav48 / "p226" / "p226_001.wav", "r+b") as f:
        f.truncate(44)
    elsewhere = root / "elsewhere.wav"
    elsewhere.write_bytes(b"not the corpus's")
    (wav48 / "p225" / "p225_003.wav").unlink()
    (wav48 / "p225" / "p225_003.wav").symlink_to(elsewhere)
    capsys.readouterr()
    fetch_and_extract(archive, root, keep=True, progress=lambda *a: None)
    assert (f"v.tar.gz was extracted into {root} before, but 2 of the 6 files checked are damaged, of "
            "another size than extracted (VCTK-Corpus/wav48/p225: 1 of 3, VCTK-Corpus/wav48/p226: 1 of 3): "
            f"extracting {root / 'v.tar.gz'} again to restore them") in capsys.readouterr().err
    assert len(server.ranges) == 1
    for name in ("p226/p226_001.wav", "p225/p225_003.wav"):
        assert (wav48 / name).read_bytes() == (src / name).read_bytes()
    assert not (wav48 / "p225" / "p225_003.wav").is_symlink()
    assert elsewhere.read_bytes() == b"not the corpus's"
    fetch_and_extract(archive, root, keep=True, progress=lambda *a: None)
    assert "all 6 files checked are there" in capsys.readouterr().err


def test_a_marker_listing_files_without_sizes_is_still_accepted(server, vctk_mini, tmp_path, capsys):
    """The previous afilm listed the files without their sizes: they are checked for existence only (a
    file cut short goes unnoticed, as it did), a deleted one is restored, and the marker then written
    records the sizes, so that the next run notices the damaged file and restores it."""
    from afilm_cli.data.download import shortfall

    body = vctk_zip(vctk_mini)
    server.files["c.zip"] = body
    archive = Archive(f"{server.url}/c.zip", "c.zip")
    root = tmp_path / "r"
    fetch_and_extract(archive, root, keep=True, progress=lambda *a: None)
    marker = root / ".afilm-extracted-c.zip"
    sized = marker.read_text().splitlines()
    old = [line.partition("\t")[0] for line in sized]
    assert old != sized and old[2:] == [f"VCTK-Corpus/wav48/{spk}/{spk}_00{i}.wav" for spk in ("p225", "p226")
                                        for i in (1, 2, 3)]
    marker.write_text("\n".join(old) + "\n")  # as the previous afilm wrote it
    wav48, src = root / "VCTK-Corpus" / "wav48", vctk_mini / "wav48"
    cut = wav48 / "p225" / "p225_002.wav"
    cut.write_bytes(b"RIFF")
    short = shortfall(root, marker)
    assert not short and short.listed and not short.sized and short.checked == 6
    capsys.readouterr()
    fetch_and_extract(archive, root, keep=True, progress=lambda *a: None)
    assert "before and all 6 files checked are there: not downloaded or extracted again" in \
        capsys.readouterr().err
    assert marker.read_text() == "\n".join(old) + "\n" and cut.read_bytes() == b"RIFF"

    (wav48 / "p226" / "p226_002.wav").unlink()
    fetch_and_extract(archive, root, keep=True, progress=lambda *a: None)
    err = capsys.readouterr().err
    assert "but 1 of the 6 files checked are missing (VCTK-Corpus/wav48/p226: 1 of 3): extracting" in err
    assert (wav48 / "p226" / "p226_002.wav").read_bytes() == (src / "p226" / "p226_002.wav").read_bytes()
    assert cut.read_bytes() == b"RIFF"  # the restore checks what that marker could: existence
    assert marker.read_text().splitlines() == sized  # now with the sizes
    fetch_and_extract(archive, root, keep=True, progress=lambda *a: None)
    assert ("but 1 of the 6 files checked are damaged, of another size than extracted "
            "(VCTK-Corpus/wav48/p225: 1 of 3): extracting") in capsys.readouterr().err
    assert cut.read_bytes() == (src / "p225" / "p225_002.wav").read_bytes() and len(server.ranges) == 1


def test_download_checks_the_microphone_the_run_uses(server, tmp_path, capsys):
    """VCTK 0.92: mic2 files or transcripts deleted to save space are not restored for a mic1 run (not
    11 GB fetched again for files it does not read); a mic1 file deleted is."""
    from afilm_cli.data.vctk import _download_corpus

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for spk in ("p225", "p226"):
            for mic in ("mic1", "mic2"):
                zf.writestr(f"wav48_silence_trimmed/{spk}/{spk}_001_{mic}.flac", f"{spk} {mic}")
            zf.writestr(f"txt/{spk}/{spk}_001.txt", "text")
    server.files["VCTK-Corpus-0.92.zip"] = buf.getvalue()
    url = f"{server.url}/VCTK-Corpus-0.92.zip"
    root = tmp_path / "vctk"
    _download_corpus(root, None, url, None)
    audio = root / "wav48_silence_trimmed"
    for f in audio.glob("*/*_mic2.flac"):
        f.unlink()
    shutil.rmtree(root / "txt")
    capsys.readouterr()
    _download_corpus(root, None, url, None, "mic1")
    assert "all 2 files checked are there" in capsys.readouterr().err and len(server.ranges) == 1
    (audio / "p226" / "p226_001_mic1.flac").unlink()
    _download_corpus(root, None, url, None, "mic1")
    assert ("1 of the 2 files checked are missing (wav48_silence_trimmed/p226: all 1): downloading it "
            "again to restore them") in capsys.readouterr().err
    assert (audio / "p226" / "p226_001_mic1.flac").read_text() == "p226 mic1" and len(server.ranges) == 2
    assert not list(audio.glob("*/*_mic2.flac")) and not (root / "txt").exists()  # not restored either
    _download_corpus(root, None, url, None, "mic2")  # the other microphone's files are gone: restored
    assert "2 of the 2 files checked are missing" in capsys.readouterr().err and len(server.ranges) == 3
    assert sorted(p.name for p in audio.glob("*/*_mic2.flac")) == ["p225_001_mic2.flac", "p226_001_mic2.flac"]


def test_download_on_a_pipe_leaves_no_bar_in_stderr(server, vctk_mini, tmp_path):
    """rich's download bar, stopped on a stderr that is no terminal, printed its final render (a
    40-character bar, '100% 0:00:00 3.0/3.0 MB 640 MB/s') between 'downloading' and the next line, or
    above the error of a download that did not match its SHA-256. The real CLI, its stderr a pipe."""
    body = vctk_zip(vctk_mini)
    server.files["VCTK-Corpus.zip"] = body
    url = f"{server.url}/VCTK-Corpus.zip"
    proc = afilm(*prepare_args(url, tmp_path / "vctk", tmp_path / "data", "--sha256",
                               hashlib.sha256(body).hexdigest()), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[:2] == [f"downloading {url} into {tmp_path / 'vctk'}",
                                            "extracting VCTK-Corpus.zip"], proc.stderr
    assert "━" not in proc.stderr and "" not in proc.stderr.splitlines(), proc.stderr
    proc = afilm(*prepare_args(url, tmp_path / "vctk2", tmp_path / "data", "--sha256", "0" * 64),
                 cwd=tmp_path)
    assert proc.returncode == 2
    heads = [line.split(":")[0] for line in proc.stderr.splitlines()]
    assert heads == ["downloading http", "afilm"], proc.stderr
    assert "did not match the expected SHA-256" in proc.stderr.splitlines()[1]
