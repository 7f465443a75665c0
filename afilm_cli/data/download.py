"""Resumable HTTP download with size / SHA-256 verification, and safe archive extraction.

A download goes to ``<dest>.part`` and resumes from its size with an HTTP Range request (a server
that ignores Range restarts it from zero); the file gets its final name only once the size and
checksum match. A resume must not splice two versions of a file changed on the server in between:
``<dest>.part.validator`` keeps the server's ETag (or Last-Modified), sent back as If-Range, and a 206
naming another one is refused; where the server sent neither, the part is resumed only with a SHA-256
to check the result, and downloaded again from the start otherwise, with a note saying why. An archive
already there under its final name is checked the same way and reused (never deleted on a mismatch: it
may be the user's only copy). Extraction writes a marker file,
``.afilm-extracted-<archive>``: the URL, the archive's top-level entries, then the path of every file
it extracted below them, each with its size ("VCTK-Corpus/wav48/p225/p225_001.wav<TAB>123456"). A rerun
does nothing while they are all there with those sizes (checked per folder, one directory listing each,
then a stat per file listed: no hashing), and restores what is missing or damaged (cut short, or any
other size) otherwise. A marker of an older afilm is still read: one listing paths without sizes has its
files checked for existence only; one with the URL, or the URL and the top-level entries, has its
entries checked, not files. While a whole extraction runs, ``.afilm-extracting-<archive>`` says so: one
stopped (Ctrl-C, an error) leaves it there, and ``afilm prepare vctk`` warns of it.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import math
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from afilm_cli import __version__
from afilm_cli.errors import AfilmError


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None


VCTK_ARCHIVES = {
    # size and SHA-256 as published with torchaudio's VCTK_092 dataset
    "0.92": Archive("https://datashare.ed.ac.uk/bitstream/handle/10283/3443/VCTK-Corpus-0.92.zip",
                    "VCTK-Corpus-0.92.zip", 11747302977,
                    "f96258be9fdc2cbff6559541aae7ea4f59df3fcaf5cf963aae5ca647357e359c"),
    # no published checksum known for 0.80: the SHA-256 is printed instead of checked
    "0.80": Archive("https://datashare.ed.ac.uk/bitstream/handle/10283/2651/VCTK-Corpus.zip",
                    "VCTK-Corpus.zip"),
}

Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SCHEMES = ("http", "https", "ftp", "file")  # what urllib.request opens


def parse_sha256(text: str, option: str = "--sha256") -> str:
    """``text`` as a lowercase SHA-256, or a one-line error. Checked before any network access: a
    malformed sum would otherwise fail only after the whole download (11 GB for VCTK 0.92). A line of
    ``sha256sum``'s output (the sum, then the file's name) gives its sum."""
    value = text.strip()
    value = value.split()[0] if _SHA256.fullmatch(value[:64]) and value[64:65].isspace() else value
    if not _SHA256.fullmatch(value):
        raise AfilmError(f"{option} {text!r} is not a SHA-256: expected 64 hexadecimal digits")
    return value.lower()


def parse_url(text: str, option: str = "--url") -> str:
    """``text`` as a URL urllib can open, or a one-line error, before any folder is made: without a scheme
    (a host and path as a browser shows them) urllib raised ValueError, and an empty one (an unset
    "$MIRROR") would be taken for no --url at all, the default 11 GB archive."""
    value = text.strip()
    parts = urllib.parse.urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES or not (parts.netloc or scheme == "file" and parts.path):
        raise AfilmError(f"{option} {text!r} is not a URL: expected one starting with http:// or https:// "
                         "(or ftp://, file://)")
    return value


def download(url: str, dest: str | os.PathLike, *, size: int | None = None, sha256: str | None = None,
             progress: Progress | None = None, chunk: int = 1 << 20, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if present; verify size and SHA-256."""
    dest = Path(dest)
    if sha256 is not None:
        sha256 = parse_sha256(sha256, "sha256")
    if dest.exists():
        check_existing(dest, size=size, sha256=sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:  # not ours, or a different file: start over
        part.unlink()
        _validator_path(part).unlink(missing_ok=True)
        start = 0
    checked = sha256 is not None
    if size is None or start < size:
        if start and not _resumable(part, checked):  # nothing to tell a changed file by: not spliced
            from afilm_cli.data.cli import note

            note(f"not resuming {part}: the server sent no ETag or Last-Modified to tell whether the file "
                 "changed there since, and no --sha256 was given to check it (a resume could splice two "
                 "versions); downloading it again from the start")
            start = 0  # the part is replaced once the server answers (kept if it does not)
        _fetch(url, part, start, progress, chunk, timeout, checked)
    got = part.stat().st_size
    if size is not None and got > size:  # not a part to resume: a rerun would start over anyway
        part.unlink()
        _validator_path(part).unlink(missing_ok=True)
        raise AfilmError(f"download of {url} gave {got} bytes, more than the expected {size} (not the "
                         "expected file) and was deleted")
    if size is not None and got < size:
        if _resumable(part, checked):
            raise AfilmError(f"download of {url} is incomplete: {got} of the expected {size} bytes; rerun to "
                             f"resume (the partial file {part} is kept)")
        raise AfilmError(f"download of {url} is incomplete: {got} of the expected {size} bytes (the partial "
                         f"file {part} is kept); {_rerun(part, checked)}")
    if sha256 is not None:
        digest = file_sha256(part)
        if digest != sha256.lower():  # the whole file came (its size checked, where known): not a part
            part.unlink()
            _validator_path(part).unlink(missing_ok=True)
            raise AfilmError(f"{url}: the downloaded file did not match the expected SHA-256 (got {digest}, "
                             f"expected {sha256}) and was deleted; rerun to download it again")
    _downloaded_mark(dest).write_text(f"{url}\n")  # before the rename: an archive of ours is never unmarked
    os.replace(part, dest)
    _validator_path(part).unlink(missing_ok=True)
    return dest


def _downloaded_mark(dest: Path) -> Path:
    """Says that ``dest`` was fetched by afilm (a later run may delete it), not put there by the user."""
    return dest.with_name(f".afilm-downloaded-{dest.name}")


def check_existing(path: Path, *, size: int | None = None, sha256: str | None = None) -> None:
    """Check a file already at the download's final name (an earlier run's, or the user's own copy)
    as a download is checked; on a mismatch it is left in place: it was not fetched by this run."""
    if not path.is_file():
        raise AfilmError(f"{path} is in the way of the download: it is not a file")
    advice = "it was left in place: move or delete it and rerun to download the archive again"
    got = path.stat().st_size
    if size is not None and got != size:
        raise AfilmError(f"{path} is already there but has {got} bytes, expected {size} (another file or "
                         f"an incomplete copy); {advice}")
    if sha256 is not None and (digest := file_sha256(path)) != sha256:
        raise AfilmError(f"{path} is already there but its SHA-256 is {digest}, expected {sha256} (another "
                         f"file or a damaged copy); {advice}")


def _resumable(part: Path, checked: bool) -> bool:
    """Whether ``part`` may be resumed: the server's ETag or Last-Modified is recorded for it (sent as
    If-Range: a changed file comes whole), or the result's SHA-256 is ``checked``. Otherwise a file changed
    on the server since could not be told and would be spliced from two versions."""
    return checked or _validator_path(part).exists()


def _rerun(part: Path, checked: bool) -> str:
    """What a rerun does with ``part``, for a message that says it is kept."""
    if _resumable(part, checked):
        return "rerun to resume"
    return ("rerun to download it again from the start (the server sent no ETag or Last-Modified to resume "
            "it by safely; with --sha256 a rerun resumes it)")


def _tag(headers) -> str | None:
    """The validator of a response: its strong ETag, else its Last-Modified (If-Range takes strong
    validators only)."""
    tag = headers.get("ETag")
    if not tag or tag.startswith("W/"):
        tag = headers.get("Last-Modified")
    return tag or None


def _fetch(url: str, part: Path, start: int, progress: Progress | None, chunk: int, timeout: float,
           checked: bool = False) -> None:
    headers = {"User-Agent": f"afilm/{__version__}"}
    validator = _validator_path(part)
    if start:
        headers["Range"] = f"bytes={start}-"
        if validator.exists():  # the file changed on the server since: it comes whole (200), not resumed
            headers["If-Range"] = validator.read_text()
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            if _range_total(exc.headers.get("Content-Range")) == start:
                return  # we hold the whole file already
            part.unlink()  # longer than the file on the server, or unverifiable: not ours, start over
            validator.unlink(missing_ok=True)
            return _fetch(url, part, 0, progress, chunk, timeout, checked)
        reason = f"{exc.code} {' '.join(str(exc.reason).split())}"  # one line
        if "infinite loop" in reason:  # urllib's three lines for a redirect loop
            reason = f"{exc.code}: the server redirects in a loop (or more than 10 times)"
        raise AfilmError(f"cannot download {url}: HTTP {reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise AfilmError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
    with resp:
        resumed = start > 0 and resp.status == 206
        if resumed and _range_start(resp.headers.get("Content-Range")) != start:
            raise AfilmError(f"download of {url}: the server resumed at another byte than {start} "
                             f"({resp.headers.get('Content-Range')}); delete {part} and rerun")
        sent = headers.get("If-Range")
        if resumed and sent and (now := _tag(resp.headers)) and now != sent:
            # a server that ignores If-Range: the rest of the file as it is now, after a part of another
            # version (a changed ETag; a date compared only with a date, as the validator was chosen)
            if sent.startswith(('"', "W/")) == now.startswith(('"', "W/")):
                from afilm_cli.data.cli import note

                resp.close()
                note(f"not resuming {part}: the server answered with another version of the file than the "
                     "one it is part of (it ignored If-Range); downloading it again from the start")
                validator.unlink(missing_ok=True)
                return _fetch(url, part, 0, progress, chunk, timeout, checked)
        if not resumed:
            start = 0  # a fresh download, or the server ignored Range / the file changed: the whole body
            tag = _tag(resp.headers)
            if tag:
                validator.write_text(tag)
            else:
                validator.unlink(missing_ok=True)
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        done = start
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while block := _read(resp, chunk, url, done, partial(_rerun, part, checked)):
                    f.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        except OSError as exc:  # writing the file (the network's errors are _read's): a rerun alone fails too
            kept = f"{part.stat().st_size if part.is_file() else done} bytes of {url} downloaded, kept"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise AfilmError(f"cannot write {part}: the disk is full ({kept}); free some space and "
                                 f"{_rerun(part, checked)}") from None
            raise AfilmError(f"cannot write {part}: {exc.strerror or exc} ({kept})") from None
    if total is not None and done < total:
        raise AfilmError(f"download of {url} interrupted at {done} of {total} bytes; "
                         f"{_rerun(part, checked)}")


def _read(resp, chunk: int, url: str, done: int, rerun: Callable[[], str]) -> bytes:
    """The next block of the body, or the download's error in one line (the connection lost, say), which
    ends with ``rerun()``: what a rerun does."""
    try:
        return resp.read(chunk)
    except (OSError, http.client.HTTPException) as exc:
        raise AfilmError(f"download of {url} interrupted at {done} bytes ({exc!r}); {rerun()}") from None


def _validator_path(part: Path) -> Path:
    """Beside ``NAME.part``: the ETag (or Last-Modified) of the file it is a part of."""
    return part.with_name(part.name + ".validator")


def _range_total(content_range: str | None) -> int | None:
    """N of "bytes */N" or "bytes a-b/N"; None when absent or unknown ("*")."""
    tail = (content_range or "").rpartition("/")[2].strip()
    return int(tail) if tail.isdigit() else None


def _range_start(content_range: str | None) -> int | None:
    """a of "bytes a-b/N"."""
    head = (content_range or "").partition(" ")[2].partition("-")[0].strip()
    return int(head) if head.isdigit() else None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def extract(archive: str | os.PathLike, into: str | os.PathLike) -> Path:
    """Extract a .zip or .tar(.gz/.bz2/.xz) into ``into``, refusing members that escape it."""
    _extract_members(archive, into)
    return Path(into)


def _extract_members(archive: str | os.PathLike, into: str | os.PathLike,
                     restore: Callable[[str], bool] | None = None,
                     sized: bool = False) -> tuple[list[str], dict[str, int]]:
    """``extract``, giving (every member's name, the regular files' names -> their sizes). With
    ``restore`` (a restore: the archive was extracted there before), only the members that it keeps
    (given the path as the marker lists it) and that are not in ``into`` are written, and with ``sized``
    (the marker recorded sizes) also the files there of another size than the member's (damaged: each
    removed first, so that a link there is replaced, not written through); the others are left as they
    are, a file of the right size but other content too (sizes are compared, not contents)."""
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    target = into.resolve()

    def wanted(name: str, size: int | None) -> bool:
        if not restore(PurePosixPath(name).as_posix()):
            return False
        path = into / name
        if not path.exists():
            return True
        if not sized or size is None or not path.is_file() or path.stat().st_size == size:
            return False
        path.unlink()
        return True
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = zf.namelist()
                for name in names:
                    _check_member(archive, name, target)
                # a name twice: the last one's, as extracted (getinfo gives the last)
                files = {info.filename: info.file_size for info in zf.infolist() if not info.is_dir()}
                chosen = ([name for name in dict.fromkeys(names) if wanted(name, files.get(name))]
                          if restore else None)
                _check_space(archive, into, sum(files.get(name, 0)
                                                for name in (files if chosen is None else chosen)))
                zf.extractall(into, chosen)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                names = [member.name for member in members]
                for member in members:
                    _check_member(archive, member.name, target,
                                  None if member.isfile() or member.isdir() else _kind(member))
                files = {member.name: member.size for member in members if member.isfile()}
                if restore:
                    members = [member for member in members if wanted(member.name, files.get(member.name))]
                _check_space(archive, into, sum(member.size for member in members if member.isfile()))
                tf.extractall(into, members,
                              **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        else:
            raise AfilmError(f"{archive}: not a zip or tar archive (a damaged download? delete it and rerun "
                             "to download it again)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise AfilmError(f"{archive}: corrupt archive ({exc}); delete it and rerun to download it "
                         "again") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the space went while extracting (another writer)
            raise AfilmError(f"cannot extract {archive} into {into}: the disk is full; free some space and "
                             "rerun") from None
        raise
    return names, files


def _check_space(archive: Path, into: Path, need: int) -> None:
    """Before extracting: the files' ``need`` bytes fit in the free space of ``into`` (an archive
    that did not was extracted until the disk was full, then 'No space left on device')."""
    free = shutil.disk_usage(into).free
    if need > free:  # the files alone: blocks and folders take a little more (then the disk-full error)
        raise AfilmError(f"{archive}: its files need {_amount(need)}, and {into} has {_amount(free)} free: "
                         "free some space and rerun")


def _amount(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _top_level(names: list[str]) -> list[str]:
    """The entries an archive's members create directly in the folder it is extracted into."""
    tops = {PurePosixPath(name).parts[0] for name in names if PurePosixPath(name).parts}
    return sorted(tops - {"__MACOSX"})  # removed after extraction


def _below_top(files: dict[str, int]) -> list[str]:
    """The files ("a/b/c.wav" -> size) that are inside a top-level folder, as the marker lists them:
    "a/b/c.wav<TAB>size"."""
    out = {}
    for name, size in files.items():
        path = PurePosixPath(name)
        if len(path.parts) > 1 and path.parts[0] != "__MACOSX" and "\n" not in name:
            out[path.as_posix()] = size
    return [f"{name}\t{size}" for name, size in sorted(out.items())]


def _marker_line(line: str) -> tuple[str, int | None]:
    """A marker's line as (path, size), the size None where it records none (an older afilm's marker,
    or a top-level entry)."""
    path, tab, size = line.rpartition("\t")
    return (path, int(size)) if tab and size.isdigit() else (line, None)


def _check_member(archive: Path, name: str, target: Path, kind: str | None = None) -> None:
    """Refuse, before anything is extracted, a member written outside ``target``, one with '..' in its
    path (tarfile failed on 'a/../../b' with 'File exists'), or one of ``kind`` (a link, a FIFO, a
    device: tarfile's data filter refused those only when reached, the files before them written)."""
    if not (target / name).resolve().is_relative_to(target):
        why = f"it would be written outside {target}"
    elif ".." in PurePosixPath(name).parts:
        why = "a path with '..' in it"
    elif kind:
        why = f"{kind}, not a file or folder"
    else:
        return
    # kept (the user's, or a download that a rerun would reuse and refuse again): said what to do
    raise AfilmError(f"{archive}: refusing member {name!r}: {why} (nothing was extracted; not an archive "
                     "to extract: delete it, or give another --url)")


def _kind(member: tarfile.TarInfo) -> str:
    return {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.FIFOTYPE: "a FIFO",
            tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device"}.get(
                member.type, "a special member")


def fetch_and_extract(archive: Archive, root: str | os.PathLike, *, keep: bool = False,
                      progress: Progress | None = None,
                      present: Callable[[Path], bool] | None = None,
                      select: Callable[[str], bool] | None = None) -> Path:
    """Download ``archive`` into ``root`` (resumable), extract it there, delete it unless ``keep``.

    A marker file records a finished extraction: a second call does nothing while what it extracted
    is still there (``present(root)`` where given, else the archive's top-level entries; then every
    file the marker lists that ``select`` keeps, all where it is None, with the size it was extracted
    with where the marker records it), and extracts again, or downloads again where the archive is
    gone, once it is not. That restore writes only what is missing or of another size: of the files
    ``select`` keeps where only some are gone or damaged, of every member where the entries are gone.
    An archive that was already in ``root`` is checked like a download, reused, and kept.
    """
    from afilm_cli.atomic import atomic_path, make_output_dir
    from afilm_cli.data.cli import note

    root = Path(root)
    sha256 = parse_sha256(archive.sha256) if archive.sha256 else None  # before any network access
    make_output_dir(root)
    path = root / archive.filename
    marker = root / f".afilm-extracted-{archive.filename}"
    restore = None  # what a restore writes (where missing): every member, or the files ``select`` keeps
    sized = False  # and where of another size than extracted: the marker recorded sizes
    if marker.exists():
        again = f"extracting {path} again" if path.exists() else "downloading it again"
        if not (present or partial(_still_extracted, marker, archive.filename))(root):
            note(f"{archive.filename} was extracted into {root} before, but its files are gone: {again}")
            restore = _everything
            sized = any(_marker_line(line)[1] is not None for line in marker.read_text().splitlines()[1:])
        elif short := shortfall(root, marker, select):
            restore = select or _everything
            sized = short.sized
            note(f"{archive.filename} was extracted into {root} before, but {short.describe()}: {again} "
                 "to restore them")
        else:
            listed = (f"all {short.checked} files checked are there" if short.listed else
                      "its folders are there (a marker of an older afilm: files not listed)")
            note(f"{archive.filename} was extracted into {root} before and {listed}: not downloaded or "
                 "extracted again")
            return root
    reused = path.exists()
    ours = _downloaded_mark(path).exists()  # an earlier run's download, e.g. one whose extraction was stopped
    if reused:
        how = "downloaded by an earlier run" if ours else "already there (not downloaded)"
        note(f"reusing {path}, {how}" + ("; checking its SHA-256" if sha256 else ""))
        download(archive.url, path, size=archive.size, sha256=sha256)
    else:
        try:
            _download_with_bar(archive, path, sha256, progress)
        except KeyboardInterrupt:  # Ctrl-C: what is kept, and that a rerun goes on from there
            part = path.with_name(path.name + ".part")
            if part.is_file():
                rerun = ("rerun the same command to resume it" if _resumable(part, sha256 is not None) else
                         _rerun(part, False).replace("rerun", "rerun the same command", 1))
                note(f"download stopped: {part} ({_amount(part.stat().st_size)}) is kept; {rerun}")
            raise
    if sha256 is None:
        note(f"{path.name}: SHA-256 {file_sha256(path)} (no published checksum to compare with)")
    note(f"extracting {path.name}")
    stopped = root / f".afilm-extracting-{archive.filename}"  # until it is done: a later prepare says so
    if restore is None:  # kept until now: a download stopped before this point restores again; kept on
        # through a restore too, so one stopped midway restores again rather than extracting everything
        # over the files still there
        marker.unlink(missing_ok=True)
        stopped.write_text(f"{archive.url}\n")
    names, files = _extract_members(path, root, restore, sized)
    with atomic_path(marker) as tmp:  # a marker cut short would list fewer files
        tmp.write_text("\n".join([archive.url, *_top_level(names), *_below_top(files)]) + "\n")
    stopped.unlink(missing_ok=True)
    if reused and not ours and not keep:  # the user's own copy: not afilm's to delete
        note(f"kept {path}: it was there before this run (delete it to free the space)")
    elif not keep:
        path.unlink()
        _downloaded_mark(path).unlink(missing_ok=True)
    shutil.rmtree(root / "__MACOSX", ignore_errors=True)
    return root


PLAIN_EVERY = 60.0  # seconds between two progress lines where stderr is no terminal


class PlainProgress:
    """Where stderr is no terminal (a log file, nohup), where no bar shows: a line at most every
    ``every`` seconds, the first after ``first``, so that an 11 GB download does not pass in silence."""

    def __init__(self, say: Callable[[str], None], every: float = PLAIN_EVERY, first: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.say, self.every, self.clock = say, every, clock
        self.t0 = clock()
        self.due = self.t0 + min(first, every)
        self.base: int | None = None

    def __call__(self, done: int, total: int | None) -> None:
        now = self.clock()
        if self.base is None:  # a resumed download's rate counts this run's bytes only
            self.base, self.t0 = done, now
        if now < self.due:
            return
        self.due = now + self.every
        rate = (done - self.base) / (now - self.t0) if now > self.t0 else 0.0
        line = f"download: {_amount(done)}"
        if total:
            line += f" of {_amount(total)} ({100 * done / total:.0f}%)"
        line += f", {_amount(rate)}/s"
        if total and rate > 0 and done < total:
            left = (total - done) / rate
            line += f", about {math.ceil(left / 60)} min left" if left >= 60 else ", under a minute left"
        self.say(line)


def _download_with_bar(archive: Archive, path: Path, sha256: str | None, progress: Progress | None) -> None:
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from afilm_cli.data.cli import err, note

    note(f"downloading {archive.url} into {path.parent}")
    if progress is None:
        # no bar where stderr is no terminal (a pipe, a log file): none would show while it runs, and
        # rich's Progress then printed its final render, a 40-character bar at 100% (or where it stopped,
        # above the error, which says the bytes itself) once the download was over
        with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                      console=err, disable=not err.is_interactive) as bar:
            task = bar.add_task("download", total=archive.size)
            plain = None if err.is_interactive else PlainProgress(note, every=PLAIN_EVERY)

            def show(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)
                if plain is not None:
                    plain(done, total)

            download(archive.url, path, size=archive.size, sha256=sha256, progress=show)
    else:
        download(archive.url, path, size=archive.size, sha256=sha256, progress=progress)


def _everything(path: str) -> bool:
    return True


def _still_extracted(marker: Path, filename: str, root: Path) -> bool:
    """Whether the top-level entries the marker names are all in ``root`` (the files it lists below them
    are ``shortfall``'s); a marker written before they were recorded (the URL only) counts while ``root``
    holds anything visible besides the archive."""
    entries = [line for line in marker.read_text().splitlines()[1:] if "/" not in line]
    if entries:
        return all((root / name).exists() for name in entries)
    return any(not p.name.startswith((".", filename)) for p in root.iterdir())


@dataclass
class Shortfall:
    """What an extraction's marker lists and ``root`` no longer holds, or holds damaged (of another size
    than extracted): folder -> (missing or damaged, listed)."""

    missing: dict[str, tuple[int, int]]
    checked: int  # the files the marker lists that were looked for
    listed: bool  # False for a marker of an older afilm, which lists no files
    damaged: int = 0  # of the files counted in ``missing``, those there but of another size
    sized: bool = False  # the marker records sizes (False for an older afilm's: existence checked only)

    def __bool__(self) -> bool:
        return bool(self.missing)

    @property
    def lost(self) -> int:
        """The files missing or damaged."""
        return sum(n for n, _ in self.missing.values())

    def describe(self, most: int = 6) -> str:
        """"3 of the 6 files checked are missing (VCTK-Corpus/wav48/p226: all 2, VCTK-Corpus/wav48/p225:
        1 of 3)", the folders relative to the root; "are damaged, of another size than extracted (...)"
        where all are there, "are missing or damaged: 2 missing, 1 of another size than extracted (...)"
        where some are and some not, the folders then counting both."""
        lost = self.lost
        folders = [f"{folder}: {f'all {total}' if n == total else f'{n} of {total}'}"
                   for folder, (n, total) in sorted(self.missing.items())]
        if len(folders) > most:
            folders[most:] = [f"{len(folders) - most} more folders"]
        if not self.damaged:
            what = "missing"
        elif self.damaged == lost:
            what = "damaged, of another size than extracted"
        else:
            what = (f"missing or damaged: {lost - self.damaged} missing, {self.damaged} of another size than "
                    "extracted")
        return f"{lost} of the {self.checked} files checked are {what} ({', '.join(folders)})"


def shortfall(root: str | os.PathLike, marker: str | os.PathLike,
              select: Callable[[str], bool] | None = None) -> Shortfall:
    """The files ``marker`` lists (those ``select`` keeps, given the path relative to ``root``) that are
    not in ``root``, or are there with another size than the marker records (cut short, say): one
    directory listing per folder, then a stat per file listed with a size, no hashing (for VCTK 0.92,
    132k files in about 220 folders). A marker of an older afilm, without sizes: existence only. A file
    replaced by a folder or other non-file, or one that cannot be stat'ed, counts as there."""
    root = Path(root)
    lines = Path(marker).read_text().splitlines()[1:]
    by_folder: dict[str, dict[str, int | None]] = {}
    listed = sized = False
    for line in lines:
        line, size = _marker_line(line)
        folder, slash, name = line.rpartition("/")
        if not slash:
            continue  # a top-level entry
        listed = True
        sized = sized or size is not None
        if select is None or select(line):
            by_folder.setdefault(folder, {})[name] = size
    missing = {}
    damaged = 0
    for folder, names in by_folder.items():
        try:
            with os.scandir(root / folder) as it:
                there = {entry.name: entry for entry in it}
        except (FileNotFoundError, NotADirectoryError):
            there = {}
        lost = 0
        for name, size in names.items():
            if (entry := there.get(name)) is None:
                lost += 1
            elif size is not None and _file_size(entry) not in (None, size):
                lost += 1
                damaged += 1
        if lost:
            missing[folder] = (lost, len(names))
    return Shortfall(missing, sum(map(len, by_folder.values())), listed, damaged, sized)


def _file_size(entry: os.DirEntry) -> int | None:
    """The size of the file ``entry`` names (a link followed); None for a folder or another non-file, or
    where it cannot be stat'ed (it is there: nothing an extraction could put right)."""
    try:
        return entry.stat().st_size if entry.is_file() else None
    except OSError:
        return None
