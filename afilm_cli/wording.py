"""Words for the counts in messages: '1 file', '3 files'."""

from __future__ import annotations


def counted(n: int, word: str, plural: str | None = None) -> str:
    """``n`` and ``word``, or unless ``n`` is 1 ``plural`` (default ``word`` + 's'): '1 epoch', '3 epochs'."""
    return f"{n} {word if n == 1 else plural or word + 's'}"
