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

LOADAVG = Path("/proc/loadavg")  # 4th field: runnable tasks now / all tasks
OWN_TASKS = Path("/proc/self/task")  # one folder per thread of this process


def busy_elsewhere(samples: int = 5) -> int | None:
    """Runnable tasks of other processes (median of a few reads of /proc/loadavg's instantaneous
    count, less this process's own running threads; None where there is no such file). Our own
    threads do not count: OpenMP's workers spin for a while after each parallel op, and counting them
    made ``auto`` pick one thread on an idle machine."""
    counts = []
    for _ in range(samples):
        try:
            running = int(LOADAVG.read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return None
        counts.append(max(0, running - _own_running()))
        time.sleep(0.002)
    return int(statistics.median(counts))


def _own_running() -> int:
    """Threads of this process in state R (running or runnable), this one included (at least 1)."""
    n = 0
    for stat in OWN_TASKS.glob("*/stat"):
        with contextlib.suppress(OSError, IndexError):
            n += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"  # the name may hold spaces
    return max(n, 1)


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
