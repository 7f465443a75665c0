"""Name -> builder registries for models and datasets, with lazy entry-point plugins.

Built-ins register on import (``@MODELS.register("afilm")``). Third-party packages plug in through
the entry-point groups ``afilm.models`` and ``afilm.datasets``: each entry point names a module (or
an object) that registers its builders when loaded. Plugins load the first time a registry is
queried; a broken plugin is skipped with a warning, and ``AFILM_DISABLE_PLUGINS=1`` skips them all.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

from afilm_cli.errors import AfilmError


class PluginWarning(UserWarning):
    """A plugin was skipped (the CLI prints these as one ``afilm: warning:`` line)."""


class UnknownNameError(AfilmError, KeyError):
    """Raised for a name no builder is registered under; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    """A small name -> builder mapping. Duplicate names raise; unknown names list the known ones."""

    def __init__(self, kind: str, group: str | None = None, builtins: str | None = None):
        self.kind = kind
        self.group = group
        self.builtins = builtins  # module whose import registers the built-ins (imported lazily)
        self._builders: dict[str, Callable[..., Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._plugins_loaded = False

    def register(self, name: str | None = None, **meta: Any) -> Callable[[Callable], Callable]:
        """Decorator: ``@MODELS.register("afilm", pretrained=False)``. ``meta`` is free-form info."""

        def deco(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self._builders:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._builders[key] = fn
            self._meta[key] = dict(meta)
            return fn

        return deco

    def unregister(self, name: str) -> None:
        self._builders.pop(name, None)
        self._meta.pop(name, None)

    def get(self, name: str) -> Callable[..., Any]:
        self.load_plugins()
        try:
            return self._builders[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

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
        and is skipped."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # set first: a plugin may query the registry while loading
        if self.builtins:
            try:
                importlib.import_module(self.builtins)
            except BaseException:
                self._plugins_loaded = False  # a broken install fails the same way on every query
                raise
        if self.group is None:
            return
        if os.environ.get("AFILM_DISABLE_PLUGINS", "") not in ("", "0"):
            return
        for ep in entry_points(group=self.group):
            try:
                ep.load()
            except (Exception, SystemExit) as exc:  # a broken plugin must never take the CLI down
                why = (str(exc) or type(exc).__name__ if not isinstance(exc, SystemExit)
                       else "called sys.exit()" if exc.code is None else f"exited ({exc.code})")
                warnings.warn(f"skipping {self.kind} plugin {ep.name!r} ({ep.value}): {why}", PluginWarning,
                              stacklevel=2)


MODELS = Registry("model", group="afilm.models", builtins="afilm_cli.models")
DATASETS = Registry("dataset", group="afilm.datasets", builtins="afilm_cli.data")
