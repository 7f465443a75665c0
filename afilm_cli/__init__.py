"""afilm: audio super-resolution with AFiLM and TFiLM."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("afilm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
