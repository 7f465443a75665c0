"""`afilm bench`: how fast afilm is on this machine (see afilm_cli/bench.py for what is measured)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from afilm_cli.atomic import atomic_path
from afilm_cli.commands.options import Device, refuse_existing
from afilm_cli.errors import AfilmError


def command(
    kernels: Annotated[bool, typer.Option("--kernels", help="Block pooling / FiLM kernels: Triton vs the "
                                          "torch reference (eager, torch.compile), ms and GB/s; on CUDA "
                                          "GPU time (CUDA graph) and launch time per call.")] = False,
    model: Annotated[bool, typer.Option("--model", help="Inference real-time factor per preset through "
                                        "the real windowed upsampling path.")] = False,
    train: Annotated[bool, typer.Option("--train", help="Training step throughput (patches/s).")] = False,
    prepare: Annotated[bool, typer.Option("--prepare", help="Data preparation throughput.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Short clips, few repeats, tiny presets "
                                        "(on CUDA also afilm): a smoke run in about a minute on a "
                                        "CPU.")] = False,
    device: Device = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", metavar="FILE", help="Also write every row "
                                                  "with the hardware, versions and settings (rewritten "
                                                  "as each section ends: a stopped run keeps its rows)."
                                                  )] = None,
    models: Annotated[str | None, typer.Option("--models", metavar="PATTERN", help="Models for --model "
                                               "and --train: comma-separated shell patterns (default: "
                                               "tiny and small presets, on CUDA also afilm, tfilm; "
                                               "--quick: tiny, on CUDA also afilm).")] = None,
    layers: Annotated[str | None, typer.Option("--layers", metavar="NAMES", help="Layer shapes for "
                                               "--kernels, comma-separated: D1-D4, B, U4-U1 (default: all; "
                                               "--quick: D1, U1).")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing --json file.")] = False,
) -> None:
    """Benchmark afilm. Without a section option every section runs. Each figure is the median of
    several timed runs after an untimed warm-up, with min and max; variants that are compared run
    side by side, interleaved (kernels: one after another), and the ratio is each one's speed over the
    first (> 1: faster)."""
    from rich.console import Console
    from rich.markup import escape

    from afilm_cli import bench, infer

    console, err = Console(), Console(stderr=True)
    if json_out is not None:  # before a long run, not after: its rows are written as each section ends
        if json_out.is_dir():  # --force replaces a file, never a folder
            raise AfilmError(f"--json {json_out}: is a folder; give a file name, such as "
                             f"{json_out / 'bench.json'}")
        refuse_existing(json_out, force)  # its folder is made by the first write, before the work
    dev = infer.resolve_device(device)
    chosen = [s for s, on in zip(bench.SECTIONS, (kernels, model, train, prepare), strict=True) if on]
    report = bench.run_bench(chosen or list(bench.SECTIONS), dev, quick=quick, models=models, layers=layers,
                             progress=lambda s: err.print(f"[dim]bench: {s}...[/dim]"),
                             on_update=json_out and (lambda rep: _write_json(json_out, rep)))
    sysinfo = report["system"]
    console.print(f"{escape(sysinfo['cpu'])}, {sysinfo['cores']} cores, {sysinfo['torch_threads']} torch "
                  f"threads; GPU: {escape(str(sysinfo['gpu']))}; torch {sysinfo['torch']}, triton "
                  f"{sysinfo['triton']}, afilm {sysinfo['afilm']} ({sysinfo['git_commit']}); load "
                  f"{report['load_avg_start']} -> {report['load_avg_end']}", soft_wrap=True)
    for section in bench.SECTIONS:
        rows = [r for r in report["rows"] if r["section"] == section]
        if rows:
            console.print(_table(section, rows, report["notes"].get(section)))
    if json_out is not None:
        _write_json(json_out, report)
        err.print(f"wrote {escape(str(json_out))}")


def _write_json(path: Path, report: dict[str, Any]) -> None:
    # rewritten atomically before the work and after every section (see run_bench): an interrupted run
    # keeps its rows
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1) + "\n")


TITLES = {"kernels": "kernels: ms per call (ratio: eager time / this time)",
          "model": "inference: seconds of 16 kHz audio per second (x realtime)",
          "train": "training step: patches per second",
          "prepare": "data preparation: audio seconds per second"}
THREADS_MARK = "*"  # a ratio between runs on different thread counts (bench.mark_thread_mismatch)
# settings shown per row (what differs between variants); the rest go in the caption
VARYING = {"model": ("batch_size", "window", "threads", "threads_chosen", "precision", "kernel", "graphs",
                     "compile", "cudnn_benchmark"),
           "train": ("kernel", "bf16", "cudnn_benchmark"), "prepare": ("degrade",), "kernels": ("gbps",)}


def _table(section: str, rows: list[dict[str, Any]], note: str | None):
    from rich.markup import escape
    from rich.table import Table

    common = {k: v for k, v in rows[0]["settings"].items() if all(r["settings"].get(k) == v for r in rows)}
    caption = ", ".join(f"{k}={v}" for k, v in common.items() if not isinstance(v, (list, dict)))
    if section == "kernels":
        caption = ", ".join(f"{k}={common[k]}" for k in ("batch", "dtype", "C", "T", "block", "repeats",
                                                          "warmup") if k in common)
        return _kernel_table(rows, "; ".join(c for c in (caption, note) if c))
    if any(r.get("threads_differ") for r in rows):
        # the mark's key first: a longer caption (kernel=...) had wrapped it mid-sentence
        caption = "; ".join(c for c in (f"{THREADS_MARK}: ran on another thread count than the baseline "
                                        "(see threads / threads_chosen)", caption) if c)
    table = Table(title=TITLES[section], caption="; ".join(c for c in (caption, note) if c))
    settings = [" ".join(f"{k}={_fmt(r['settings'][k])}" for k in VARYING[section]
                         if k in r["settings"] and k not in common) for r in rows]
    # the settings column only where a row has one (on a CPU every train row's are the caption's)
    for col in ("name", "variant", "median", "min", "max", "ratio", *(["settings"] if any(settings) else [])):
        # a word too long for its column folds, never cut: on a narrow terminal or a pipe (80 columns)
        # the settings lost their values ("threads_chose…", "degrade=subsamp…")
        table.add_column(col, justify="right" if col in ("median", "min", "max", "ratio") else "left",
                         overflow="fold")
    last = None
    for r, varied in zip(rows, settings, strict=True):
        if "error" in r:
            cells = ["", "", "", f"[red]{escape(r['error'])}[/red]"]  # an error's text, not markup
        else:
            cells = [_num(r["median"]), _num(r["min"]), _num(r["max"]),
                     "" if r["ratio"] is None
                     else f"{r['ratio']:.2f}x" + (THREADS_MARK if r.get("threads_differ") else "")]
        table.add_row("" if r["name"] == last else r["name"], r["variant"], *cells,
                      *([varied] if any(settings) else []))
        last = r["name"]
    return table


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _kernel_table(rows: list[dict[str, Any]], caption: str):
    """Kernel rows: the GPU time (CUDA graph) and the launch time side by side where both were timed,
    each with its ratio to eager; GB/s and % of peak come from the GPU time (see afilm_cli/bench.py)."""
    from rich.markup import escape
    from rich.table import Table

    graphed = any(r.get("timer") == "cuda graph" for r in rows)
    peak = any(r["settings"].get("pct_peak") is not None for r in rows)
    failed = any("error" in r or "graph_error" in r for r in rows)
    # eager alone (a CPU run: no Triton, no compile) has nothing to be a ratio to: no column of 1.00x
    compared = len({r["variant"] for r in rows}) > 1
    pct = ["% peak"] if peak else []
    cols = (["GPU ms", "x eager", "GB/s", *pct, "launch ms", "x eager (launch)"] if graphed
            else ["ms", *(["x eager"] if compared else []), "GB/s", *pct])
    if graphed and any(r["settings"].get("gbps_timer") == "launch" for r in rows if "error" not in r):
        caption += "; *: from the launch time (the graph capture failed)"
    table = Table(title="kernels: ms per call" + (" (GPU time in a CUDA graph; launch: per Python call)"
                                                  if graphed else ""), caption=caption)
    for col in ["name", "variant", *cols] + (["error"] if failed else []):  # folded, never cut ('triton_…')
        table.add_column(col, justify="left" if col in ("name", "variant", "error") else "right",
                         overflow="fold")
    last = None
    for r in rows:
        s = r["settings"]
        if "error" in r:
            cells = [""] * len(cols)
        else:
            gpu = ([_num(r["median"]), _ratio(r["ratio"])] if r["median"] is not None
                   else ["[red]failed[/red]", ""])[:2 if graphed or compared else 1]
            mark = "*" if graphed and s.get("gbps_timer") == "launch" else ""  # capture failed
            cells = gpu + [_num(s.get("gbps")) + mark] + ([_num(s.get("pct_peak")) + mark] if peak else [])
            if graphed:
                cells += [_num(r.get("launch_median")), _ratio(r.get("launch_ratio"))]
        err = r.get("error") or (f"graph: {r['graph_error']}" if "graph_error" in r else "")
        table.add_row("" if r["name"] == last else r["name"], r["variant"], *cells,
                      *([f"[red]{escape(err)}[/red]"] if failed else []))
        last = r["name"]
    return table


def _ratio(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"
