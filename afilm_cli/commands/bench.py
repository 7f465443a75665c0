"""`afilm bench` (placeholder until its issue lands)."""

from afilm_cli.errors import AfilmError


def command() -> None:
    """Not implemented yet."""
    raise AfilmError("'afilm bench' is not implemented yet")
