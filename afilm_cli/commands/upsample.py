"""`afilm upsample`: real low-rate audio in, audio at the model's rate out (see afilm_cli/infer.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from afilm_cli.atomic import missing_folders, remove_empty
from afilm_cli.commands.options import BatchSize, Device, Force, NoMatchLevel, UpsampleCkpt
from afilm_cli.errors import AfilmError
from afilm_cli.wording import counted


def command(
    inputs: Annotated[list[str], typer.Argument(
        help="Audio files or folders (searched recursively). - : one file's audio read from stdin (WAV, "
        "FLAC, OGG...), written to stdout unless -o names a file; a file named - is ./-.",
        show_default=False)],
    ckpt: UpsampleCkpt = None,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", metavar="PATH", help="Output file, .wav or .flac (one input), or folder (several "
        "inputs, a folder input mirrored inside it, an existing folder, or a path ending in /). With "
        "--simulate, the base name of the .lr/.hr/.pr.wav files (x.wav -> x.lr.wav ...; they are always "
        "WAV, so .flac is refused). Default: "
        "IN.afilm.wav beside each input (.flac for a FLAC input); a folder DIR goes to DIR.afilm/ "
        "beside it (x.wav and x.ogg there: x.wav.afilm.wav, x.ogg.afilm.wav). - : a WAV to stdout "
        "(one input; the default for stdin).")] = None,
    simulate: Annotated[bool, typer.Option(
        "--simulate", help="Treat the input as high-rate ground truth: degrade it with the checkpoint's "
        "recipe and write IN.lr.wav (at sr/r), IN.hr.wav and IN.pr.wav (at sr), as the reference does.")
    ] = False,
    degrade: Annotated[str | None, typer.Option(
        "--degrade", metavar="METHOD", help="With --simulate: make the low-rate input by decimate, resample "
        "or subsample instead of the checkpoint's recipe.")] = None,
    force: Force = False,
    batch_size: BatchSize = 16,
    window: Annotated[int | None, typer.Option(
        "--window", min=1, help="Window length in output samples (default: the checkpoint's patch), "
        "rounded up to a multiple of the model's length multiple, and to at least two of them.")] = None,
    device: Device = "auto",
    threads: Annotated[str, typer.Option(
        "--threads", metavar="N|auto", help="CPU threads for torch: a number, or auto: the cores no other "
        "process is busy on (at least 1); when that is all of them and the input is long, one batch at "
        "all cores is timed against one at a single thread and the faster is kept. Thread counts agree "
        "to float rounding: pass a number for byte-identical reruns.")] = "auto",
    precision: Annotated[str, typer.Option(
        "--precision", metavar="fp32|bf16", help="bf16: autocast (on CUDA; measured slower than fp32 "
        "for these models on an H200, and emulated on a CPU).")] = "fp32",
    no_cuda_graph: Annotated[bool, typer.Option(
        "--no-cuda-graph", help="On CUDA, run the model eagerly batch by batch instead of capturing its "
        "forward once as a CUDA graph and replaying it for every batch (the last one padded).")] = False,
    compile: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the model (on CUDA with its own CUDA graphs). For the paper "
        "AFiLM on an H100 it measured 214x realtime against the default CUDA graph's 221x, not counting "
        "the compile itself, which comes before the first window.")] = False,
    no_match_level: NoMatchLevel = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Upsample audio with a trained model.

    The input is taken as real low-rate audio at whatever rate it has: it is resampled to the model's
    low rate (sr/r), spline-upsampled, and run through the model in overlapping cross-faded windows.
    The output is at the model's rate with exactly round(frames * sr / input rate) frames; every
    channel is processed. Memory does not grow with the file's length, except that stdin and stdout
    (-) are held whole.

    Without --ckpt (and no runs/*/best.pt of yours here), each file goes to the bundled model made for
    its rate: afilm_speech_r2 (8 kHz -> 16 kHz) from 8 kHz up, afilm_speech_r4 (4 kHz -> 16 kHz)
    below; --simulate uses afilm_speech_r4.

    Input below sr/r is accepted with a warning (its missing band stays empty); input above sr/r is
    warned too (its band above (sr/r)/2 is resampled away and predicted again). --simulate needs input
    at sr or above, since it is the ground truth.
    """
    from afilm_cli import infer  # lazy: torch and scipy load only when the command runs
    from afilm_cli.threads import parse_threads

    err = Console(stderr=True)
    dev = infer.resolve_device(device)
    speed = {"threads": parse_threads(threads), "precision": precision,
             "graphs": "off" if no_cuda_graph else "auto", "compile": compile,
             "match_level": not no_match_level}
    infer.resolve_precision(precision, dev)  # a typo fails here, before any file is read
    if precision == "bf16" and dev.type == "cpu" and not _native_bf16():
        err.print("afilm: warning: this CPU has no native bf16: it is emulated, 8-27x slower than fp32 "
                  "as measured on a 2-core AMD EPYC (fp32 is the default)")
    if degrade is not None:
        if not simulate:
            raise AfilmError("--degrade goes with --simulate (real low-rate input is taken as it is)")
        infer.check_degrade(degrade)
    # an empty argument (an unset "$VAR") is no name: as a path it is '.', the whole current folder
    if "" in inputs:
        raise AfilmError("an input is an empty name (an unset variable?): name a file or folder ('.' for "
                         "the current folder)")
    if out == "":
        raise AfilmError("-o is an empty name (an unset variable?): name a file or folder ('.' for the "
                         "current folder)")
    stdio = infer.check_stdio(inputs, out, simulate)  # `-`: refused where it cannot be, before any reading
    # one model for every file, loaded first so that a bad --ckpt is said before the inputs are looked at
    fixed = infer.load_model(ckpt, dev) if ckpt is not None or simulate else None
    pairs = (infer.stdio_pairs(inputs, out) if stdio  # stdin is read when its rate is first needed
             else infer.plan_outputs([Path(i) for i in inputs], out, simulate))
    clash = infer.existing_outputs(pairs, simulate)
    if clash and not force:
        raise AfilmError(f"{clash[0]} exists; pass --force to overwrite"
                         + (f" ({len(clash) - 1} more)" if len(clash) > 1 else ""))
    failed: list[object] = []

    def fail(src: object, exc: AfilmError) -> None:
        """One input is the whole run: its error is the error. Of several, a bad one is named and the
        others go on (the run still ends non-zero)."""
        if len(pairs) == 1:
            raise exc
        failed.append(src)
        err.print(f"afilm: error: {escape(str(exc))}", soft_wrap=True)

    # every input checked (readable, long enough, usable rate) before anything is written
    models, totals = infer.plan_models(pairs, fixed, dev, window=window, simulate=simulate, degrade=degrade,
                                       fail=fail)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]

    def warn(message: str) -> None:
        err.print(f"afilm: warning: {escape(message)}", soft_wrap=True)

    # made by the writes (not stdout): removed again where left empty when the run stops
    made = missing_folders(target.absolute().parent for _, target in pairs if isinstance(target, Path))
    try:
        # no bar where stderr is no terminal: none would show, and rich's Progress then ends with a blank line
        with Progress(*columns, console=err, disable=quiet or not err.is_interactive, transient=True) as bar:
            task = bar.add_task("upsampling", total=sum(totals.values()))
            for src, target in pairs:
                if src not in totals:  # said above
                    continue
                bar.update(task, description=escape(src.name))

                def advance(n: int) -> None:
                    bar.advance(task, n)

                kwargs = dict(batch_size=batch_size, window=window, device=dev, progress=advance, warn=warn,
                              **speed)
                try:
                    if simulate:
                        info = infer.simulate_file(src, target, models[src], degrade=degrade, **kwargs)
                        written = ", ".join(info["outputs"].values())
                    else:
                        info = infer.upsample_file(src, target, models[src], **kwargs)
                        written = info["output"]
                except AfilmError as exc:  # found only while streaming (NaN samples): the other files go on
                    fail(src, exc)
                    continue
                if not quiet and not stdio:  # said in the summary
                    err.print(f"{escape(str(src))} -> {escape(written)}", soft_wrap=True)
        if failed:
            rest = "the others were written" if len(failed) < len(pairs) else "nothing was written"
            raise AfilmError(f"{len(failed)} of {len(pairs)} files failed (said above); {rest}")
    except BaseException:  # Ctrl-C, or an error that ends the run: no empty folder of its own is left
        remove_empty(made)
        raise
    if not quiet:
        used = {id(m): m for m in models.values()}.values()
        names = "; ".join(f"{escape(str(m.path))} ({m.ckpt['model_name']}, r={m.r}, {m.sr} Hz)"
                          + (f" for {sum(v is m for v in models.values())} of them" if len(used) > 1 else "")
                          for m in used)
        files = counted(len(pairs), "file")
        what = escape(f"{src} upsampled to {written}") if stdio else f"{files} upsampled"
        err.print(f"{what} with {names} on {dev}", soft_wrap=True)


def _native_bf16() -> bool:
    import torch

    try:  # oneDNN's own test: AVX512-BF16 or AMX
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
