"""User-facing errors: `main()` prints these as one line and exits non-zero (no traceback)."""


class AfilmError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option). Exit code 2."""

    exit_code = 2
