"""`afilm prepare` under a file size limit (`ulimit -f`): h5py writing past it had crashed the
interpreter (a segfault, exit 139) and left a hidden temporary file. statvfs cannot see this limit."""

from __future__ import annotations

import resource
import subprocess
import sys

import numpy as np
import pytest

from afilm_cli.errors import AfilmError


def _limit(nbytes: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def test_prepare_stops_with_one_line_at_the_file_size_limit(tmp_path, libri_mini):
    folder = libri_mini / "train-clean-100"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "afilm_cli", "prepare", "folder", str(folder), "--r", "4",
                           "--sr", "16000", "--out", str(out)], capture_output=True,
                          text=True, timeout=300, preexec_fn=_limit(8 << 20))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "file size limit of 8 MB (ulimit -f)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(out.iterdir()) == []  # no temporary file left behind


def test_patch_writer_bound_covers_the_real_file(tmp_path):
    """The writer's size bound is never below what h5py really writes, so the check comes first."""
    from afilm_cli.data.h5 import PatchWriter

    patches = np.random.default_rng(0).standard_normal((100, 512)).astype(np.float32)
    with PatchWriter(tmp_path / "x.h5", 512, chunk=16) as writer:
        for a in range(0, 100, 7):
            writer.append(patches[a : a + 7], patches[a : a + 7])
        bound = writer._size_after(writer.count)
    assert (tmp_path / "x.h5").stat().st_size <= bound


def test_patch_writer_refuses_before_the_limit(tmp_path, monkeypatch):
    from afilm_cli.data import h5

    monkeypatch.setattr(h5, "file_size_limit", lambda: 6 << 20)
    patches = np.zeros((16, 8192), np.float32)
    with pytest.raises(AfilmError, match="x.h5: it would pass this shell's file size limit of 6 MB"):
        with h5.PatchWriter(tmp_path / "x.h5", 8192) as writer:
            writer.append(patches, patches)  # 5 MB bound: one chunk of each dataset + 1 MB
            writer.append(patches, patches)  # still inside the first chunks
            writer.append(np.zeros((64, 8192), np.float32), np.zeros((64, 8192), np.float32))
    assert list(tmp_path.iterdir()) == []
