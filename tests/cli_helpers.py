"""Helpers shared by the test modules (tests/ is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    """The real entry point in-process (argument parsing, error mapping) without a subprocess's
    start-up cost; returns a CompletedProcess (returncode, stdout, stderr as text)."""
    from afilm_cli.main import main

    argv = sys.argv
    sys.argv = ["afilm", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, exc.value.code or 0, out.out, out.err)
