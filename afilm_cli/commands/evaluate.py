"""`afilm eval`: a checkpoint and the spline baseline side by side (see afilm_cli/evaluate.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from afilm_cli.atomic import make_output_dir, missing_folders, remove_empty
from afilm_cli.commands.options import BatchSize, Ckpt, Device, Force, NoMatchLevel, Threads
from afilm_cli.errors import AfilmError

LABELS = {"snr": ("SNR (dB, higher is better)", True), "segsnr": ("segmental SNR, reference (dB)", True),
          "lsd": ("LSD (log10, lower is better)", False), "lsd_ref": ("LSD, reference convention", False)}


def fixed(value: float, digits: int, sign: bool = False) -> str:
    """``value`` as the tables show it, a zero never as "-0.00": a gain of -1e-9 dB is none."""
    text = f"{value:{'+' if sign else ''}.{digits}f}"
    return text.replace("-", "+" if sign else "", 1) if float(text) == 0 else text


class WholeFigures:
    """A table whose figures are never cut: rich shortened a column too narrow for its cells with "…"
    ("16.8…" at 40 columns, a wrong number; overflow="fold" split it over two lines instead). Each
    column is kept at least as wide as its longest word (a figure has no space, so it is one word),
    header included, so rich wraps the text at word boundaries instead; where even that table is wider
    than the terminal, the rows are shown one after the other, a heading line and then one
    "column: value" line each. A table that fits is printed as rich prints it: wide output is as before.
    """

    def __init__(self, table: Table, heading: Callable[[str], str] = str) -> None:
        self.table = table
        self.heading = heading  # a row's first cell as its heading in the plain layout
        for column in table.columns:
            words = [w for cell in (column.header, *column.cells) for w in str(cell).split()]
            column.min_width = max(map(len, words), default=1)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        segments = list(console.render(self.table, options))  # uncropped: a line too long shows here
        if all(Segment.get_line_length(line) <= options.max_width for line in Segment.split_lines(segments)):
            yield from segments
            return
        table, text = self.table, console.render_str
        if table.title:
            yield text(str(table.title), style="table.title")
        _, *headers = [str(c.header) for c in table.columns]
        first, *others = [list(map(str, c.cells)) for c in table.columns]
        for i, cell in enumerate(first):
            yield text(self.heading(cell), style="bold")
            for name, cells in zip(headers, others, strict=True):
                yield Padding(Text.assemble(text(name), ": ", text(cells[i])), (0, 0, 0, 2), expand=False)
        if table.caption:
            yield text(str(table.caption), style="table.caption")


def summary_table(result, title: str) -> WholeFigures:
    """Model and spline side by side, mean over items, and the SNRs of the truth low-passed at the
    low rate's Nyquist (what restoring the input band alone can reach); shared with `afilm demo`."""
    from afilm_cli.evaluate import LOWPASS  # lazy: it imports torch

    cutoff = result.protocol["sr"] / (2 * result.protocol["r"])
    caption = (f"truth below {cutoff:g} Hz: the truth ideally low-passed at the input's Nyquist, i.e. the "
               "input band restored perfectly and nothing invented above it")
    table = Table(title=title, caption=caption)
    table.add_column("metric (mean over items)")
    table.add_column("model", justify="right")
    table.add_column("spline", justify="right")
    table.add_column("model better", justify="center")
    table.add_column(f"truth below {cutoff:g} Hz", justify="right")
    summary = result.summary
    low = summary[LOWPASS]
    for key, (label, higher) in LABELS.items():
        if key in result.pooled.get("model", {}):  # under "mean over items", a pooled value must say so
            label += " (all patches joined, not a mean)"
        m, s = summary["model"][key], summary["spline"][key]
        shown = fixed(m, 3), fixed(s, 3)  # "better" as shown: values equal to 3 decimals are a tie, not a win
        better = "yes" if (m > s) == higher and shown[0] != shown[1] else "no"
        table.add_row(label, *shown, better, fixed(low[key], 3) if key in low else "-")
    return WholeFigures(table)


def bands_table(result) -> WholeFigures:
    """Where the gain comes from: error energy per frequency band (evaluate.BandTotals)."""
    table = Table(title="error by frequency band, all items pooled (dB relative to the signal's energy)")
    for name in ("band (Hz)", "signal", "spline error", "model error", "model gain"):
        table.add_column(name, justify="left" if name == "band (Hz)" else "right")
    for b in result.bands.to_json():
        levels = (fixed(b[k], 1) for k in ("signal_db", "spline_error_db", "model_error_db"))
        table.add_row(f"{b['lo_hz']:.0f}-{b['hi_hz']:.0f}", *levels, fixed(b["model_gain_db"], 2, sign=True))
    return WholeFigures(table, heading=lambda band: f"{band} Hz")


def print_tables(console: Console, result) -> None:
    """The two tables `afilm eval` prints on stdout (callable on a summary.json's figures: the tests)."""
    from afilm_cli.evaluate import model_label  # lazy: it imports torch

    p = result.protocol
    console.print(summary_table(result, f"{model_label(p)} vs spline, r={p['r']}, {p['sr']} Hz, "
                                        f"{p['degrade']}, {len(result.rows)} item(s) of {escape(p['data'])}"))
    console.print(bands_table(result))


def command(
    ckpt: Ckpt = None,
    data: Annotated[Path | None, typer.Option("--data", help="HDF5 split written by 'afilm prepare' "
                                              "(each patch is one row).")] = None,
    wavs: Annotated[Path | None, typer.Option("--wavs", help="Folder of high-rate audio files (each file is "
                                              "one row, several channels mixed to mono; the low-rate input is"
                                              " simulated).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for metrics.csv and summary.json.")
                   ] = Path("eval"),
    plots: Annotated[Path | None, typer.Option("--plots", help="Write LR / prediction / HR spectrogram "
                                               "PNGs into this folder; with --force, the PNGs afilm wrote "
                                               "there before and this run does not are removed once its "
                                               "results are written (no other file).")] = None,
    max_plots: Annotated[int | None, typer.Option("--max-plots", min=0, help="With --plots: at most this "
                                                  "many PNGs (default 20; 0: none, and the folder is neither "
                                                  "made nor changed).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N items.")] = None,
    degrade: Annotated[str | None, typer.Option(
        "--degrade", metavar="METHOD", help="With --wavs: make the low-rate input by decimate, resample or "
        "subsample (see 'afilm prepare folder --help') instead of the checkpoint's recipe's (its first "
        "method where it joins several: decimate for afilm_speech_r4's decimate+resample): how the model "
        "copes with input low-passed another way.")] = None,
    batch_size: BatchSize = 16,
    device: Device = "auto",
    threads: Threads = "auto",
    no_match_level: NoMatchLevel = False,
    force: Force = False,
) -> None:
    """Evaluate a checkpoint and the cubic-spline baseline: SNR, segmental SNR (reference), LSD, and
    LSD as the reference code computes it; per-item CSV, JSON summary with the protocol, a table, and
    the error per frequency band (which band the model's gain comes from)."""
    from afilm_cli import evaluate, infer  # lazy: torch and scipy load only when the command runs
    from afilm_cli.threads import parse_threads

    n_threads = parse_threads(threads)
    if (data is None) == (wavs is None):
        raise AfilmError("give exactly one of --data FILE.h5 or --wavs FOLDER")
    if data is not None and degrade is not None:
        raise AfilmError("--degrade goes with --wavs: an HDF5 split holds its low-rate input already")
    if data is not None and no_match_level:
        raise AfilmError("--no-match-level goes with --wavs: --data's patches are scored as they are, "
                         "as training validates them")
    if max_plots is not None and plots is None:  # accepted and ignored before
        raise AfilmError("--max-plots goes with --plots FOLDER: without it no PNG is written")
    max_plots = 20 if max_plots is None else max_plots
    no_plots = plots is not None and max_plots == 0
    if no_plots:  # no PNG asked for: no folder made (it was, empty), none cleared with --force
        plots = None
    if data is not None:  # the input's faults first (missing, a folder, a Keras file), before the outputs
        evaluate.check_patch_input(data)
    if wavs is not None and wavs.is_file():  # "not a folder" said nothing of what --wavs takes
        raise AfilmError(f"{wavs} is a file, not a folder; --wavs takes a folder of high-rate audio files "
                         "(each one a row): put the file in a folder of its own")
    if wavs is not None:  # an empty folder or a bad --degrade was said only after "exists; pass --force"
        evaluate.find_audio(wavs)  # not a folder, or no audio file in it
    if degrade is not None:
        infer.check_degrade(degrade)
    csv_path, json_path = evaluate.result_paths(out)
    if not force and (csv_path.exists() or json_path.exists()):
        raise AfilmError(f"{csv_path if csv_path.exists() else json_path} exists; pass --force to overwrite "
                         "or --out for another folder")
    err = Console(stderr=True)
    dev = infer.resolve_device(device)
    loaded = infer.load_model(ckpt, dev)
    # the folders this run makes and the PNGs it writes where none was, removed where it stops before its
    # results (Ctrl-C, an error): they were left, and a rerun was refused for a PNG of the one stopped
    made: list[Path] = []
    new_pngs: list[Path] = []

    def before_work(paths: list[Path]) -> None:
        # the PNGs this run will write, named once the inputs are checked: kept as metrics.csv is
        existing = next((p for p in paths if p.exists()), None)
        if existing is not None and not force:
            raise AfilmError(f"{existing} exists; pass --force to overwrite or --plots for another folder")
        new_pngs.extend(p for p in paths if not p.exists())
        # the folders made (or refused) before the work, not at its end, and not for a run refused above
        for folder in (out, plots) if plots is not None else (out,):
            made[:0] = missing_folders([folder])  # deepest first
            make_output_dir(folder)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    # no bar where stderr is no terminal: none would show, and rich's Progress then ends with a blank line,
    # which stood above every error raised inside it and above the lines below
    try:
        with Progress(*columns, console=err, transient=True, disable=not err.is_interactive) as bar:
            task = bar.add_task("evaluating", total=None)  # set once the files are checked and counted
            kwargs = dict(batch_size=batch_size, device=dev, limit=limit, plots_dir=plots,
                          max_plots=max_plots, progress=lambda n: bar.advance(task, n),
                          total=lambda n: bar.update(task, total=n), threads=n_threads, outputs=before_work)

            def warn(message: str) -> None:
                err.print(f"afilm: warning: {escape(message)}", soft_wrap=True)

            if data is not None:
                result = evaluate.evaluate_h5(loaded, data, **kwargs, warn=warn)
            else:
                result = evaluate.evaluate_wavs(loaded, wavs, degrade=degrade, **kwargs, warn=warn,
                                                match_level=not no_match_level)
        csv_path, json_path = evaluate.write_results(result, out, force=force)
    except BaseException:  # Ctrl-C or an error before the results: the PNGs and folders it made go
        from afilm_cli.plots import written_here

        for png in new_pngs:
            if written_here(png):
                png.unlink(missing_ok=True)
        remove_empty(made)  # where left empty
        raise
    stale = []
    if force and plots is not None:  # the plots of an earlier run no longer mixed with this one's
        from afilm_cli.plots import remove_stale

        stale = remove_stale(plots, result.plots,
                             warn=lambda m: err.print(f"afilm: warning: {escape(m)}", soft_wrap=True))

    print_tables(Console(), result)
    p = result.protocol
    err.print(f"checkpoint: {escape(str(p['checkpoint']))}", soft_wrap=True)  # the default may be runs/
    extra = f" and {len(result.plots)} plot(s) in {escape(str(plots))}" if plots else ""
    if stale:
        extra += f" (removed {len(stale)} PNG(s) an earlier run left there)"
    elif no_plots:
        extra += " (no plots: --max-plots 0)"
    err.print(f"wrote {escape(str(csv_path))}, {escape(str(json_path))}{extra}", soft_wrap=True)
