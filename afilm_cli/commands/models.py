"""`afilm models`: list the registered models with their parameter counts, or show one in detail."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from afilm_cli.errors import AfilmError


def command(
    info: Annotated[str | None, typer.Option(
        "--info", metavar="NAME", help="Show one model's config, modulation layers and card.")] = None,
    pattern: Annotated[str, typer.Argument(help="Only names matching this shell pattern.")] = "*",
) -> None:
    """List the registered models (built-ins and plugins) with their parameter counts."""
    from rich.console import Console
    from rich.markup import escape
    from rich.padding import Padding
    from rich.table import Table

    from afilm_cli.models import describe_model
    from afilm_cli.registry import MODELS

    console = Console()
    if info is not None and pattern != "*":  # the pattern was accepted and ignored before
        raise AfilmError(f"give --info NAME or a pattern, not both: --info shows one model ({info!r}), "
                         f"the pattern {pattern!r} filters the list")
    if info is not None:
        d = describe_model(info, with_model=True)
        _show(console, d)
        if d.get("error"):  # what could be shown is, and the command fails (it exited 0)
            raise AfilmError(d["error"])
        return
    names = MODELS.names(pattern)
    if not names:
        lower = pattern.lower()
        hint = f" (patterns are case-sensitive: {lower!r} matches)" if MODELS.names(lower) else ""
        raise AfilmError(f"no model matches {pattern!r}{hint}; known: {', '.join(MODELS.names())}")
    rows = []
    for name in names:
        d = describe_model(name)
        params = "?" if d["parameters"] is None else f"{d['parameters']:,}"
        lm = "?" if d["length_multiple"] is None else str(d["length_multiple"])
        rows.append((escape(name), params, lm, _description(d)))
    # the table, where its names and counts fit whole beside a description of 20 columns (13 for the
    # borders); else one model a paragraph (COLUMNS=40 cut the names to 'afilm_…', the counts to '134,72…')
    if console.width < 13 + max(len(r[0]) for r in rows) + max(len(r[1]) for r in rows) + 8 + 20:
        for name, params, lm, text in rows:
            console.print(f"[bold]{name}[/bold]  {params} parameters, length multiple {lm}", highlight=False)
            if text:
                console.print(Padding(text, (0, 0, 0, 2)), highlight=False)
        return
    table = Table(title="afilm models")
    for col, just in (("name", "left"), ("parameters", "right"), ("length multiple", "right"),
                      ("description", "left")):
        table.add_column(col, justify=just)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _description(d: dict[str, Any], longest: int = 80) -> str:
    """The listing's description cell; for a model that cannot be built, why, briefly (markup escaped)."""
    from rich.markup import escape

    text = str(d["meta"].get("description", ""))
    if d.get("error"):
        reason = str(d.get("reason") or d["error"])
        reason = reason if len(reason) <= longest else reason[: longest - 3] + "..."
        text = f"{text} (cannot build: {reason})".lstrip()
    return escape(text)


def _show(console: Any, d: dict[str, Any]) -> None:
    from rich.markdown import Markdown
    from rich.markup import escape
    from rich.table import Table

    meta = dict(d["meta"])
    card = meta.pop("card", None)
    # a plugin's text is shown as written: '[/x]' in it stopped the command (rich markup)
    console.print(f"[bold]{escape(d['name'])}[/bold]: {escape(str(meta.pop('description', '')))}")
    params = "unknown" if d["parameters"] is None else f"{d['parameters']:,}"
    console.print(f"parameters: {params}   length multiple: {d['length_multiple']}")
    if meta:
        console.print("registry meta: " + json.dumps(meta, default=str), markup=False)
    if d["config"] == {}:  # a heading over nothing looked like a failure to show it
        console.print("config: none (nothing for create_model to override)")
    elif d["config"] is not None:
        from afilm_cli.models.unet import TRANSFORMER_FIELDS

        console.print("config (create_model overrides):")
        for key, value in d["config"].items():
            if d["config"].get("modulation") == "tfilm" and key in TRANSFORMER_FIELDS:
                continue  # a tfilm model has no transformer: these are its defaults, unused
            console.print(f"  {key} = {json.dumps(value)}", highlight=False, markup=False)
    if d.get("plan"):
        table = Table(title="modulation layers for an 8192-sample input")
        for col in ("stage", "samples", "channels", "block", "tokens"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for row in d["plan"]:
            table.add_row(*(str(row[k]) for k in ("stage", "samples", "channels", "block", "tokens")))
        console.print(table)
    if card is not None:
        text = card() if callable(card) else str(card)
        console.print(Markdown(text))
