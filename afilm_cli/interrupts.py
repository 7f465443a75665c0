"""Ctrl-C acted on at safe points of a long loop instead of wherever it lands.

Raised at a random point, KeyboardInterrupt can fall inside a half-done optimizer step (training
could not resume it) or inside a clean-up callback of h5py, where Python ignores it ("Exception
ignored in ...": `afilm prepare` then ran on to the end in 6 of 15 tries). The loop checks ``flag``;
a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
import threading


class CtrlC:
    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)

    def _handle(self, signum, frame) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
