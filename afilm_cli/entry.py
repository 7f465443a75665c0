"""The `afilm` executable's entry point.

Loading the CLI's modules (torch, scipy) takes a second or two; a Ctrl-C in that time ends in one
line, as it does later, instead of a traceback from inside an import."""

from __future__ import annotations

import sys


def run() -> None:
    try:
        from afilm_cli.main import main
    except KeyboardInterrupt:
        print("afilm: interrupted", file=sys.stderr)
        sys.exit(130)
    main()
