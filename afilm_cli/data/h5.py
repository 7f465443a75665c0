"""The HDF5 patch format, shared with the reference code.

Datasets ``data`` (spline-upsampled low-res) and ``label`` (high-res), float32, shape (N, patch, 1).
afilm adds attributes with the recipe (r, sr, patch, stride, degrade, sam, seed, sources, version).
Files from the reference (no attributes) read fine; the recipe is then unknown (None).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from afilm_cli import __version__
from afilm_cli.atomic import atomic_path, disk_full, file_size_limit
from afilm_cli.errors import AfilmError

RECIPE_KEYS = ("r", "sr", "patch", "stride", "degrade", "sam", "seed")
MAX_IN_MEMORY = 8 << 30  # bytes: the most PatchFile.load_if_fits holds, whatever the machine has


def memory_budget() -> int:
    """What a patch file may occupy in memory: a quarter of the memory available now (Linux), at most
    MAX_IN_MEMORY; 0 where the available memory cannot be read."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0
    return min(available // 4, MAX_IN_MEMORY)


class PatchWriter:
    """Append (data, label) patches to a new HDF5 file, chunk by chunk, in bounded memory.

    Use as a context manager; the file appears under its final name only when the block exits
    without error (see atomic_path). ``finish(multiple)`` crops N to a multiple (reference: 128).
    """

    def __init__(self, path: str | os.PathLike, patch: int, attrs: dict[str, Any] | None = None,
                 chunk: int = 64):
        self.path = Path(path)
        self.patch = patch
        self.attrs = dict(attrs or {})
        self.chunk = chunk
        self.count = 0

    def __enter__(self) -> PatchWriter:
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._f = h5py.File(tmp, "w")
        for name in ("data", "label"):
            self._f.create_dataset(name, shape=(0, self.patch, 1), maxshape=(None, self.patch, 1),
                                   dtype="float32", chunks=(self.chunk, self.patch, 1))
        return self

    def append(self, data: np.ndarray, label: np.ndarray) -> None:
        """Add patches, each array (n, patch) or (n, patch, 1)."""
        data = np.asarray(data, dtype=np.float32).reshape(-1, self.patch, 1)
        label = np.asarray(label, dtype=np.float32).reshape(-1, self.patch, 1)
        if data.shape != label.shape:
            raise ValueError(f"data {data.shape} and label {label.shape} differ")
        n = len(data)
        if n == 0:
            return
        # stopped before the disk or the file size limit is reached: h5py failing to flush there can
        # crash the interpreter
        if disk_full(self.path.parent, margin=data.nbytes + label.nbytes + (64 << 20)):
            raise AfilmError(f"cannot write {self.path}: the disk is full (or has under 64 MB left)")
        limit = file_size_limit()
        if limit is not None and self._size_after(self.count + n) > limit:
            raise AfilmError(f"cannot write {self.path}: it would pass this shell's file size limit of "
                             f"{limit / 1e6:.0f} MB (ulimit -f)")
        for name, arr in (("data", data), ("label", label)):
            ds = self._f[name]
            ds.resize(self.count + n, axis=0)
            ds[self.count : self.count + n] = arr
        self.count += n

    def _size_after(self, count: int) -> int:
        """A bound on the file's size holding ``count`` patches: whole chunks of both datasets, and a
        megabyte for HDF5's own structures."""
        chunks = -(-count // self.chunk)
        return 2 * chunks * self.chunk * self.patch * 4 + (1 << 20)

    def finish(self, multiple: int = 1) -> int:
        """Crop the patch count to a multiple of ``multiple``; return the final count."""
        keep = self.count - self.count % max(multiple, 1)
        for name in ("data", "label"):
            self._f[name].resize(keep, axis=0)
        self.count = keep
        return keep

    def __exit__(self, exc_type, exc, tb) -> None:
        # renamed into place only when the patches, the attributes and the close all succeeded: a file
        # with patches but no recipe would pass a rerun's check as finished
        try:
            if exc_type is None:
                attrs = {**self.attrs, "afilm_version": __version__, "n_patches": self.count}
                for key, value in attrs.items():
                    self._f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
            self._f.close()
        except BaseException as err:
            with contextlib.suppress(Exception):
                self._f.close()
            self._atomic.__exit__(type(err), err, err.__traceback__)  # removes the temporary file
            raise
        self._atomic.__exit__(exc_type, exc, tb)


def locked(exc: OSError) -> bool:
    """Whether h5py failed to open a file because another process holds it open for writing: HDF5
    locks a file it opens (shared for reading, exclusive for writing), and a read then fails with
    "unable to lock file" although the file itself is fine."""
    return "unable to lock file" in str(exc)


def open_error(path: str | os.PathLike, exc: OSError) -> str:
    """The one line for a patch file h5py cannot open: held open for writing elsewhere, or unreadable."""
    if locked(exc):
        return (f"{path}: another process has it open for writing (HDF5 file lock), so it cannot be read "
                "now; close it there (or wait for that process to finish) and run this again")
    return f"{path}: not a readable HDF5 file ({exc})"


def check_patch_path(path: str | os.PathLike) -> None:
    """Refuse in one line a patch file that is missing, or a folder given for one (said as such: "no such
    file" misled where the folder exists)."""
    path = Path(path)
    if path.is_dir():
        raise AfilmError(f"{path} is a folder, not a file; give an HDF5 file of patches (from 'afilm "
                         "prepare')")
    if not path.is_file():
        raise AfilmError(f"{path}: no such HDF5 file")


class PatchFile:
    """Reader: validates the schema on open, reads patches by index without loading the file, unless
    :meth:`load` (or :meth:`load_if_fits`) read it all into memory first, as the reference does.

    Why load: shuffled batches read from disk come at 1.4-3k patches/s here (a slice per patch; h5py's
    point selection was 3x slower still), from memory at ~115k (``afilm bench --train``): a fast GPU
    would wait for the disk. Lazy reads stay for files larger than the memory budget."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        check_patch_path(self.path)
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise AfilmError(open_error(self.path, exc)) from None
        for name in ("data", "label"):
            if name not in self._f:
                self.close()
                raise AfilmError(f"{self.path}: missing dataset {name!r} (expected 'data' and 'label')")
        d, l = self._f["data"], self._f["label"]
        if d.shape != l.shape or d.ndim not in (2, 3) or (d.ndim == 3 and d.shape[2] != 1):
            self.close()
            raise AfilmError(f"{self.path}: 'data' {d.shape} and 'label' {l.shape} "
                             "must both be (N, patch, 1)")
        if d.shape[0] == 0:
            self.close()
            raise AfilmError(f"{self.path}: contains no patches")
        if d.dtype.kind != "f" or l.dtype.kind != "f":  # int16 PCM would be taken as values of +-32768
            message = (f"{self.path}: 'data' is {d.dtype} and 'label' {l.dtype}; patches must be "
                       "floating-point samples in [-1, 1] (as 'afilm prepare' and the reference write)")
            self.close()
            raise AfilmError(message)
        self.data, self.label = d, l
        self.in_memory = False

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def patch(self) -> int:
        return self.data.shape[1]

    @property
    def recipe(self) -> dict[str, Any]:
        """The recorded recipe (keys of RECIPE_KEYS, None where unknown) plus the sources list."""
        attrs = self._f.attrs
        out: dict[str, Any] = {k: _plain(attrs[k]) if k in attrs else None for k in RECIPE_KEYS}
        out["patch"] = self.patch
        out["sources"] = json.loads(attrs["sources"]) if "sources" in attrs else None
        return out

    def fingerprint(self) -> str:
        """A short digest of the shape and of the first, middle and last patches (data and label): cheap
        (three patches read), and another file of the same count and length differs in it where a resume
        needs to know (a run stopped mid-epoch goes on with that file's batch order)."""
        h = hashlib.sha256(repr(self.data.shape).encode())
        n = len(self)
        for i in sorted({0, n // 2, n - 1}):
            for ds in (self.data, self.label):
                h.update(np.ascontiguousarray(ds[i], dtype=np.float32).tobytes())
        return h.hexdigest()[:16]

    @property
    def nbytes(self) -> int:
        """Both datasets as float32 arrays in memory."""
        return 2 * len(self) * self.patch * 4

    def load(self) -> None:
        """Read both datasets into memory; later reads index the arrays."""
        if not self.in_memory:
            self.data = np.asarray(self._f["data"][()], dtype=np.float32)
            self.label = np.asarray(self._f["label"][()], dtype=np.float32)
            self.in_memory = True

    def load_if_fits(self, budget: int | None = None) -> bool:
        """:meth:`load` when :attr:`nbytes` is within ``budget`` (default :func:`memory_budget`)."""
        if self.nbytes <= (memory_budget() if budget is None else budget):
            self.load()
        return self.in_memory

    def read(self, index) -> tuple[np.ndarray, np.ndarray]:
        """Patches at ``index`` (slice or sorted integer array) as float32 (n, patch)."""
        if self.in_memory or isinstance(index, slice):
            d, l = self.data[index], self.label[index]
        else:  # one slice per patch: 3x faster than h5py's point selection for a batch
            d = np.stack([self.data[i] for i in index])
            l = np.stack([self.label[i] for i in index])
        d, l = np.asarray(d, dtype=np.float32), np.asarray(l, dtype=np.float32)
        return d.reshape(len(d), -1), l.reshape(len(l), -1)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> PatchFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(value: Any) -> Any:
    """h5py attributes come back as numpy scalars/bytes; make them JSON-friendly Python values."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
