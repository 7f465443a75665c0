"""Atomic file outputs: write to a temporary name in the same folder, rename when complete.

A killed run leaves at most a hidden ``.NAME.tmp-*`` file, never a file that looks complete; the data is
flushed to disk before the rename, so a power cut leaves the previous file rather than an empty one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from afilm_cli.errors import AfilmError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` on success."""
    path = Path(path)
    if path.is_dir():
        raise AfilmError(f"cannot write {path}: it is a folder")
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise AfilmError(f"cannot write {path}: {blocker} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{_temp_stem(path)}.tmp-", suffix=path.suffix, dir=path.parent)
    except OSError as exc:  # named for the file asked for, not the temporary one
        raise AfilmError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp creates mode 0600; give the output the usual permissions (0666 minus the umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        fsync_file(tmp)  # the data on disk before the name: a crash leaves the old file, not an empty one
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        # writers report a full disk in their own words (libsndfile "System error.", torch.save
        # "unexpected pos"); checked before the temporary file is removed and frees its space
        if disk_full(path.parent):
            raise AfilmError(f"cannot write {path}: the disk is full") from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# mkstemp's name is the stem with "." before it and ".tmp-" plus 8 random characters after it
_TEMP_EXTRA = 14


def _temp_stem(path: Path) -> str:
    """``path``'s stem, cut so that the temporary name fits where ``path``'s name fits: a name of
    242-255 bytes (the usual limit) is valid, and its temporary name must not be what fails."""
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # AttributeError: no pathconf on Windows
        limit = 255
    stem = os.fsencode(path.stem)
    room = limit - _TEMP_EXTRA - len(os.fsencode(path.suffix))
    # cut on a character boundary: the bytes dropped are a temporary name's, never the output's
    return stem[:max(room, 1)].decode(errors="ignore") if len(stem) > room else path.stem


def make_output_dir(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (and its parents) for outputs, or say in one line why it cannot be:
    called before long work, so that a run never ends by failing to write what it computed."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise AfilmError(f"cannot create folder {path}: {blocker} is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AfilmError(f"cannot create folder {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        why = "its file system is read-only" if _read_only(path) else "permission denied"
        raise AfilmError(f"cannot write in folder {path}: {why}")
    return path


def missing_folders(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """The folders (and their parents) not there yet, deepest first: those a run is about to make, for
    :func:`remove_empty` to take out again where the run stops before it writes anything in them."""
    missing: set[Path] = set()
    for folder in folders:
        for p in (Path(folder), *Path(folder).parents):
            if p.exists():
                break
            missing.add(p)
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


def remove_empty(folders: Iterable[Path]) -> None:
    """Take out the folders a stopped or refused run made, deepest first (a run that wrote nothing
    leaves no trace); one that holds a file (something else wrote there meanwhile) stays."""
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty, or already gone
            folder.rmdir()


def _read_only(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only (where os.access fails for root too)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return False


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_size_limit() -> int | None:
    """This process's largest allowed file size in bytes (``ulimit -f``), None where unlimited or
    unknown. A write past it fails with EFBIG, which ``statvfs`` cannot foresee."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether ``folder``'s file system has less than ``margin`` bytes left for this user."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False
    return st.f_bavail * st.f_frsize < margin
