"""Ctrl-C acted on at safe points of a long loop instead of wherever it lands.

Raised at a random point, KeyboardInterrupt can fall inside a half-done optimizer step (training
could not resume it) or inside a clean-up callback of h5py, where Python ignores it ("Exception
ignored in ...": `afilm prepare` then ran on to the end in 6 of 15 tries). With :class:`CtrlC` the
loop checks ``flag``; a second Ctrl-C interrupts at once. :class:`RaisingCtrlC` (`afilm bench`, where
nothing is left half done) still raises at once, and raises again at the loop's next ``check()``
when that first one was dropped.
"""

from __future__ import annotations

import signal
import sys
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


class RaisingCtrlC:
    """Ctrl-C raises KeyboardInterrupt where it lands, as Python's own handler does, and is also
    remembered: ``check()`` raises it again at the next safe point of a loop.

    Python drops a KeyboardInterrupt raised inside a weakref callback, a ``__del__`` or a gc callback
    (it prints "Exception ignored in ..." and goes on). h5py frees each of its objects through such a
    callback (``WeakValueDictionary.remove`` of its id registry, hundreds per second while a patch file
    is written or read), so `afilm bench --train` ran on to the end after 2 to 3 in 30 Ctrl-Cs sent
    while its data-loading benchmark ran. A KeyboardInterrupt dropped that way is not printed
    while this is active (``check()`` raises it); others go to the hook there was.

    Installed only over Python's own SIGINT handler, in the main thread: where SIGINT is ignored (a
    background job) or handled by someone else, nothing changes. Not reentrant.
    """

    def __init__(self):
        self.flag = False
        self._old = None
        self._old_hook = None

    def __enter__(self):
        self.flag = False
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._handle)
            self._old_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            if sys.unraisablehook == self._unraisable:  # not if someone replaced it since
                sys.unraisablehook = self._old_hook
            self._old = self._old_hook = None
        stopped, self.flag = self.flag, False
        if stopped and exc_type is None:  # dropped after the last check(): the block still stops
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed (whether or not it was raised and dropped)."""
        if self.flag:
            raise KeyboardInterrupt

    def _handle(self, signum, frame) -> None:
        self.flag = True
        raise KeyboardInterrupt

    def _unraisable(self, unraisable) -> None:
        if self.flag and isinstance(unraisable.exc_value, KeyboardInterrupt):
            return  # check() raises it at the next safe point
        (self._old_hook or sys.__unraisablehook__)(unraisable)
