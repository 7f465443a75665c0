"""Name -> builder registries for models and datasets, with lazy entry-point plugins.

Built-ins register on import (``@MODELS.register("afilm")``). Third-party packages plug in through
the entry-point groups ``afilm.models`` and ``afilm.datasets``. The rule for an entry point: it is
*loaded*, which imports its module, and the module registers its builders while it is imported
(``@MODELS.register`` / ``@DATASETS.register`` at module level). An entry point may name an object
(``pkg.mod:obj``): the module is imported and the object looked up, never called, so a
``register_all()`` function named there registers nothing (afilm warns about an entry point that
registered nothing).

Plugins load the first time a registry is queried, each entry point all or nothing: a plugin whose
import fails (an exception, ``sys.exit()``, a name that is already registered) is skipped with a
warning, and every builder it registered before failing is taken out again, in every registry. Where
two plugins register one name, the first loaded keeps it and the second is skipped, the warning naming
both. ``AFILM_DISABLE_PLUGINS=1`` skips them all.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from afilm_cli.errors import AfilmError


class PluginWarning(UserWarning):
    """A plugin was skipped (the CLI prints these as one ``afilm: warning:`` line)."""


class UnknownNameError(AfilmError, KeyError):
    """Raised for a name no builder is registered under; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def plugins_disabled() -> bool:
    return os.environ.get("AFILM_DISABLE_PLUGINS", "") not in ("", "0")


class _Loading:
    """The entry point being loaded: what it registered (and unregistered), to undo if it fails."""

    def __init__(self, label: str):
        self.label = label
        self.undo: list[Callable[[], None]] = []
        self.added = 0


_PACKAGE = __name__.partition(".")[0]
_loading: list[_Loading] = []  # a stack: a plugin may query another registry, which loads its own plugins


def _is_afilm(frame) -> bool:
    """Whether the code registering (the decorator's caller) is afilm's own: afilm_cli.models,
    afilm_cli.pretrained, afilm_cli.data. Not the builder's module: a plugin may register afilm's
    make_builder(...) under a name of its own."""
    return str(frame.f_globals.get("__name__", "")).startswith(_PACKAGE + ".")


def near_names(name: str, known: list[str], most: int = 2) -> list[str]:
    """Known names close to ``name``, case, hyphens and spaces aside ('afilm-small': afilm_small): the
    one equal to it so, else up to ``most`` close ones (difflib; 0: none)."""
    def plain(text: str) -> str:
        return re.sub(r"[\s_-]+", "_", str(text).strip().lower())

    names = {plain(n): n for n in reversed(known)}
    if plain(name) in names:
        return [names[plain(name)]]
    if most < 1:
        return []
    return [names[n] for n in difflib.get_close_matches(plain(name), list(names), n=most, cutoff=0.8)]


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class Registry:
    """A small name -> builder mapping. Duplicate names raise; unknown names list the known ones."""

    def __init__(self, kind: str, group: str | None = None, builtins: str | None = None):
        self.kind = kind
        self.group = group
        self.builtins = builtins  # module whose import registers the built-ins (imported lazily)
        self._builders: dict[str, Callable[..., Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._origin: dict[str, str] = {}  # name -> "built-in" or the plugin that registered it
        self._skipped: list[str] = []  # plugins of this group skipped with a warning
        self._plugins_loaded = False

    def register(self, name: str | Callable | None = None, **meta: Any) -> Callable[[Callable], Callable]:
        """Decorator: ``@MODELS.register("afilm", pretrained=False)``. ``meta`` is free-form info.
        ``@MODELS.register`` without parentheses registers the function under its own name, as
        ``@MODELS.register()`` does (it registered nothing and put the decorator in its place)."""
        if callable(name) and not meta:  # the bare decorator: called with the function itself
            return self._register(None, {}, sys._getframe(1))(name)
        return self._register(name, meta, None)

    def _register(self, name: str | None, meta: dict[str, Any], frame) -> Callable[[Callable], Callable]:
        if name is not None and not isinstance(name, str):  # it was taken, and broke names() for all
            raise TypeError(f"{self.kind} name must be a string, not {name!r}")
        if name is not None and not _NAME.fullmatch(name):
            # a name is typed on the command line and names run folders (runs/<name>-<time>): a '/'
            # nested them where runs/*/best.pt does not look, and '' took the function's name unsaid
            raise ValueError(f"{self.kind} name {name!r}: letters, digits, '_', '.' and '-' only, starting "
                             "with a letter or digit")

        def deco(fn: Callable) -> Callable:
            key = name or fn.__name__
            own = _is_afilm(frame or sys._getframe(1))  # even where a plugin's import imported the built-ins
            if not own and self.builtins and self.builtins not in sys.modules:
                # a plugin of another group (a dataset plugin, loaded at start) registering a model: the
                # built-ins first, or it took a built-in's name and their import failed on every query
                importlib.import_module(self.builtins)
            if key in self._builders:
                by = self._origin.get(key)
                if _loading and by == f"{_loading[-1].label}, which keeps it":
                    raise ValueError(f"it registers {self.kind} {key!r} twice")  # it keeps nothing: skipped
                raise ValueError(f"{self.kind} {key!r} is already registered" + (f" by {by}" if by else ""))
            self._builders[key] = fn
            self._meta[key] = dict(meta)
            if own:
                self._origin[key] = "afilm (built-in)"
            elif _loading:
                load = _loading[-1]
                self._origin[key] = f"{load.label}, which keeps it"
                load.undo.append(lambda: self._builders.get(key) is fn and self.unregister(key))
                load.added += 1
            return fn

        return deco

    def unregister(self, name: str) -> None:
        if name in self._builders and _loading:
            fn, meta, origin = self._builders[name], self._meta[name], self._origin.get(name)
            _loading[-1].undo.append(lambda: self._restore(name, fn, meta, origin))
        self._builders.pop(name, None)
        self._meta.pop(name, None)
        self._origin.pop(name, None)

    def _restore(self, name: str, fn: Callable, meta: dict[str, Any], origin: str | None) -> None:
        self._builders[name], self._meta[name] = fn, meta
        if origin is not None:
            self._origin[name] = origin

    def get(self, name: str) -> Callable[..., Any]:
        self.load_plugins()
        try:
            return self._builders[name]
        except KeyError:
            raise UnknownNameError(self._unknown(name)) from None

    def _unknown(self, name: str) -> str:
        """'unknown model 'x'; known: ...', and where a plugin's name could be missing, why."""
        near = near_names(name, self.names())
        said = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
        msg = f"unknown {self.kind} {name!r}{said}; known: {', '.join(self.names()) or 'none'}"
        if self.group is None:
            return msg
        if plugins_disabled():
            return (msg + f" (plugins are off, AFILM_DISABLE_PLUGINS={os.environ['AFILM_DISABLE_PLUGINS']}: "
                    f"{name!r} may be a plugin's)")
        if self._skipped:
            s = "s" * (len(self._skipped) > 1)
            return msg + f" (skipped plugin{s}: {', '.join(self._skipped)}; see the warning{s} above)"
        return msg + (f" (if it is a plugin's, install the package that provides it: entry-point group "
                      f"{self.group})")

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def names(self, pattern: str = "*") -> list[str]:
        self.load_plugins()
        return sorted(n for n in self._builders if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        self.load_plugins()
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def load_plugins(self) -> None:
        """Import the built-ins, then every entry point of the group, once; a failing plugin warns
        and is skipped, leaving nothing registered (see the module doc)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # set first: a plugin may query the registry while loading
        if self.builtins:
            try:
                importlib.import_module(self.builtins)
            except BaseException:
                self._plugins_loaded = False  # a broken install fails the same way on every query
                raise
        if self.group is None or plugins_disabled():
            return
        for ep in entry_points(group=self.group):
            self._load_one(ep)

    def _load_one(self, ep: EntryPoint) -> None:
        label = f"{self.kind} plugin {ep.name!r} ({ep.value})"
        imported_before = ep.module in sys.modules  # then its import registered what it had to, earlier
        load = _Loading(label)
        _loading.append(load)
        try:
            ep.load()
        except (Exception, SystemExit) as exc:  # a broken plugin must never take the CLI down
            for undo in reversed(load.undo):  # all or nothing: "skipping" leaves no half of it behind
                undo()
            why = (str(exc) or type(exc).__name__ if not isinstance(exc, SystemExit)
                   else "called sys.exit()" if exc.code is None else f"exited ({exc.code})")
            self._skipped.append(repr(ep.name))
            warnings.warn(f"skipping {label}: {why}", PluginWarning, stacklevel=3)
            return
        finally:
            _loading.remove(load)
        if load.added == 0 and not imported_before:
            called = f"; {ep.attr!r} is looked up, not called" if ep.attr else ""
            warnings.warn(f"{label} registered nothing: an entry point's module must register its builders "
                          f"when imported (@MODELS.register or @DATASETS.register at module level){called}",
                          PluginWarning, stacklevel=3)


MODELS = Registry("model", group="afilm.models", builtins="afilm_cli.models")
DATASETS = Registry("dataset", group="afilm.datasets", builtins="afilm_cli.data")
