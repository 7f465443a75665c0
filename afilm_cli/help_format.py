"""How `--help` reads: typer 0.29's rich help keeps every line break of a docstring (ragged half-lines
at 80 columns) and prints a type beside every option, ``<bool>`` for each flag, in a column that
squeezes the help text; afilm joins each paragraph's lines and shows no type for a flag.
"""

from __future__ import annotations

import inspect

import typer
import typer.core


def unwrap(text: str) -> str:
    """A docstring's paragraphs as single lines (list items and indented lines kept on their own)."""
    out = []
    for para in inspect.cleandoc(text).split("\n\n"):
        lines: list[str] = []
        for line in para.splitlines():
            if lines and not para.startswith("\b") and not line.startswith((" ", "- ", "* ")):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line)
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _unwrap_commands(group: typer.Typer) -> None:
    for info in group.registered_commands:
        info.help = unwrap(info.help or inspect.getdoc(info.callback) or "")
    for sub in group.registered_groups:
        _unwrap_commands(sub.typer_instance)


def _short_types() -> None:
    """No type beside a flag (its name says it), "<int>" for "<int range>" (the range follows it)."""
    option = typer.core.TyperOption
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "afilm", False):  # another typer, or done already
        return

    def display_type_rich(self, ctx):
        if self.is_flag:
            return None
        label = shown(self, ctx)
        return label.replace(" range>", ">") if isinstance(label, str) else label

    display_type_rich.afilm = True
    option.display_type_rich = display_type_rich


def apply(app: typer.Typer) -> None:
    _unwrap_commands(app)
    _short_types()
