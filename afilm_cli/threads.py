"""How many CPU threads torch should use, shared by training and inference.

On a shared machine OpenMP threads wait for each other at every op's barrier, so a thread that another
process keeps off its core stalls the rest: on a busy 2-core machine two torch threads were measured
3-18x slower than one. ``auto`` therefore takes the cores no other task is running on (at least one).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

import torch

from afilm_cli.errors import AfilmError


def busy_elsewhere(samples: int = 5) -> int | None:
    """Runnable tasks on the machine other than this thread (median of a few reads of /proc/loadavg's
    instantaneous count; None where there is no such file)."""
    counts = []
    for _ in range(samples):
        try:
            counts.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
        except (OSError, IndexError, ValueError):
            return None
        time.sleep(0.002)
    return int(statistics.median(counts))


def free_cores(total: int, busy: int | None) -> int:
    """``total`` less the ``busy`` ones, at least one; ``total`` when the load is unknown."""
    return total if busy is None else max(1, min(total, total - busy))


def resolve_threads(threads: int | str, device: torch.device) -> int:
    """A positive int as is; ``"auto"``: on CPU the cores of torch's current setting that no other task
    is busy on, elsewhere torch's current setting (the GPU does the work)."""
    if threads == "auto":
        full = torch.get_num_threads()
        return free_cores(full, busy_elsewhere() if device.type == "cpu" and full > 1 else None)
    if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        return threads
    raise AfilmError(f"threads must be a positive integer or 'auto', got {threads!r}")


def parse_threads(text: str) -> int | str:
    """The --threads option: 'auto' or a positive integer."""
    if text == "auto":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise AfilmError(f"--threads takes a positive integer or 'auto', not {text!r}")


@contextlib.contextmanager
def num_threads(n: int):
    """torch.set_num_threads(n) for the block, then back to what it was."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)
