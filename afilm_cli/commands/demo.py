"""`afilm demo`: upsample a bundled speech clip with the bundled model and compare with spline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from afilm_cli.commands.evaluate import summary_table
from afilm_cli.commands.options import Device, Threads
from afilm_cli.wording import counted


def command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the wavs, the PNG and the metrics; a "
                                      "rerun refreshes a previous demo's, a folder holding other files "
                                      "needs --force.")] = Path("afilm-demo"),
    ckpt: Annotated[Path | None, typer.Option(
        "--ckpt", help="Checkpoint to demonstrate instead of the bundled pretrained model (the default, "
        "whatever runs/ holds): a .pt file, a run folder or a bundled model's name.")] = None,
    device: Device = "auto",
    threads: Threads = "auto",
    force: Annotated[bool, typer.Option("--force", "-f", help="Write into an --out folder that holds files "
                                        "the demo did not write (they are kept; the demo's own file names "
                                        "are overwritten).")] = False,
) -> None:
    """Simulate 4 kHz speech from a bundled 16 kHz clip, upsample it with the bundled pretrained model,
    and compare with cubic-spline interpolation (table, wavs, spectrogram PNG). With --ckpt, the low
    rate is that checkpoint's (sr/r); its sr must be 16 kHz or less.

    Example: afilm demo --out afilm-demo
    """
    from afilm_cli import demo, infer  # lazy: torch loads only when the command runs
    from afilm_cli.atomic import make_output_dir
    from afilm_cli.evaluate import model_label
    from afilm_cli.threads import parse_threads

    n_threads = parse_threads(threads)
    demo.check_out_dir(out, force)
    dev = infer.resolve_device(device)
    loaded = demo.load_demo_model(ckpt, dev)  # a checkpoint the clip cannot serve fails before any output
    made = not out.exists()
    make_output_dir(out)  # a folder that cannot be made is said before the work, not as it is written
    err = Console(stderr=True)
    err.print("afilm demo: simulating the low-rate clip, upsampling, evaluating...", soft_wrap=True)
    try:
        run = demo.run_demo(out, device=dev, force=force, loaded=loaded, threads=n_threads)
    except BaseException:  # Ctrl-C or an error: the folder made above goes too, where left empty
        if made:
            demo.remove_if_empty(out)
        raise
    result = run["result"]
    p = result.protocol
    low = f"{p['sr'] / p['r'] / 1000:g} kHz"  # the checkpoint's: 4 kHz for the bundled model, not for all
    title = (f"{model_label(p)} vs cubic spline on {counted(len(result.rows), 'held-out clip')}, "
             f"{low} -> {p['sr'] / 1000:g} kHz ({p['degrade']})")
    table = summary_table(result, title)
    Console().print(table)
    files = [Path(w["outputs"][k]).name for w in run["wavs"] for k in ("lr", "pr", "hr")]
    err.print(f"checkpoint: {escape(str(run['checkpoint']))}", soft_wrap=True)
    err.print(f"wrote into {escape(str(out))}/: {', '.join(files)}, "
              f"{', '.join(pl.name for pl in result.plots)}, metrics.csv, summary.json", soft_wrap=True)
    err.print(f"listen: .lr.wav is the {low} input, .pr.wav the afilm output, .hr.wav the original",
              soft_wrap=True)  # one line each, as the lines above: a pipe is 80 columns to rich
