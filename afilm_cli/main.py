"""The `afilm` command line: a root Typer app, one module per command under afilm_cli/commands.

Known user errors (AfilmError) print one line on stderr and exit 2, and errors of the file system
(OSError) one line and exit 1; set AFILM_DEBUG=1 for the full traceback.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer
import typer.core

from afilm_cli.registry import PluginWarning

_show_warning = warnings.showwarning


def _one_line_plugin_warning(message, category, *args, **kwargs) -> None:
    """A skipped plugin is the user's business, not a Python warning with a source line."""
    if issubclass(category, PluginWarning):
        print(f"afilm: warning: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, *args, **kwargs)


warnings.showwarning = _one_line_plugin_warning  # before the commands load the dataset plugins

from afilm_cli import __version__, help_format  # noqa: E402
from afilm_cli.commands import bench, convert, demo, evaluate, models, prepare, train, upsample  # noqa: E402
from afilm_cli.errors import AfilmError  # noqa: E402


class _WorkOrder(typer.core.TyperGroup):
    """`afilm --help` lists the commands in the order of the work (typer would put sub-apps last)."""

    ORDER = ("prepare", "train", "upsample", "eval", "demo", "models", "convert", "bench")

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: self.ORDER.index(n) if n in self.ORDER else len(self.ORDER))


app = typer.Typer(
    name="afilm",
    cls=_WorkOrder,
    help="Audio super-resolution with AFiLM and TFiLM: prepare data, train, upsample, evaluate, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"afilm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Audio super-resolution with AFiLM and TFiLM."""


app.add_typer(prepare.app, name="prepare")
app.command("train")(train.command)
app.command("upsample")(upsample.command)
app.command("eval")(evaluate.command)
app.command("bench")(bench.command)
app.command("models")(models.command)
app.add_typer(convert.app, name="convert")
app.command("demo")(demo.command)


help_format.apply(app)


def _user_error(exc: Exception) -> bool:
    """AfilmError, or the kernels package's error for a bad AFILM_KERNEL (looked up, not imported:
    the kernels package loads torch, which most commands' --help need not)."""
    # getattr: another distribution's top-level "kernels" (Hugging Face's) has no such class
    choice_error = getattr(sys.modules.get("kernels"), "KernelChoiceError", None)
    return isinstance(exc, AfilmError) or (choice_error is not None and isinstance(exc, choice_error))


def _from_ctrl_c(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is in the exception's chain (Typer raises Exit(130) from it)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        print("afilm: interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit as exc:  # Typer turns Ctrl-C into exit code 130 itself, silently
        if exc.code == 130 and _from_ctrl_c(exc):  # (train's own clean stop has said what to do)
            print("afilm: interrupted", file=sys.stderr)
        raise
    except Exception as exc:
        if os.environ.get("AFILM_DEBUG", "") not in ("", "0"):
            raise
        if _user_error(exc):
            print(f"afilm: error: {exc}", file=sys.stderr)
            sys.exit(getattr(exc, "exit_code", 2))
        if isinstance(exc, OSError):  # the file system refused: no space, no permission, a file in the way
            where = f": {exc.filename}" if exc.filename else ""
            print(f"afilm: error: {exc.strerror or exc}{where} (AFILM_DEBUG=1 shows where)", file=sys.stderr)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
