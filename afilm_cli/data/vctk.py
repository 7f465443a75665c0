"""VCTK: layout detection (0.80 and 0.92), the reference splits, and `afilm prepare vctk`.

The corpus: CSTR VCTK Corpus (Veaux, Yamagishi, MacDonald), University of Edinburgh DataShare.
0.80 (https://datashare.ed.ac.uk/handle/10283/2651, Open Data Commons Attribution):
``VCTK-Corpus/wav48/pNNN/pNNN_MMM.wav``, 48 kHz WAV, 109 speakers.
0.92 (https://datashare.ed.ac.uk/handle/10283/3443, CC BY 4.0):
``wav48_silence_trimmed/pNNN/pNNN_MMM_mic1.flac`` and ``_mic2``, 48 kHz FLAC, silence trimmed,
110 speakers (s5 added; p315 has no audio). The speaker is the folder name.

Reference splits (REFERENCE.md section 1):
- single: p225 only; val = p225_355 356 357 358 359 363 365 366 (the reference lists them 4x;
  afilm keeps each once), train = every other p225 file.
- multi: val = p347 p351 p360 p361 p362 p363 p364 p374 p376 (the last 9 of the sorted 0.80
  speakers), train = the first 100 other speakers in sorted order.
On a partial corpus the missing validation files are reported and only the training file is
written; ``--val-fraction`` / ``--val-speakers`` choose another validation set.

Where a root holds both layouts, 0.92 is used unless ``--release 0.80`` asks for the other; the
layout used is printed either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

import typer

from afilm_cli.atomic import make_output_dir, missing_folders, remove_empty
from afilm_cli.data import cli, download
from afilm_cli.data.recipe import Recipe, SplitPlan, default_output_paths, pick_fraction
from afilm_cli.errors import AfilmError
from afilm_cli.registry import DATASETS

SINGLE_SPEAKER = "p225"
SINGLE_VAL = tuple(f"p225_{n}" for n in (355, 356, 357, 358, 359, 363, 365, 366))
MULTI_VAL = ("p347", "p351", "p360", "p361", "p362", "p363", "p364", "p374", "p376")
MULTI_TRAIN_SPEAKERS = 100
# Per split: (stride, sam, degrade), the reference's settings.
SPLIT_DEFAULTS = {"single": (4096, 1.0, "decimate"), "multi": (8192, 0.25, "subsample")}
LAYOUTS_HELP = ("wav48/pNNN/pNNN_MMM.wav (VCTK-Corpus 0.80) or "
                "wav48_silence_trimmed/pNNN/pNNN_MMM_mic1.flac (VCTK-Corpus 0.92)")
# (folder name, release), in order of preference where a root holds both
LAYOUT_DIRS = (("wav48_silence_trimmed", "0.92"), ("wav48", "0.80"))
_LAYOUT_VERSION = dict(LAYOUT_DIRS)
WHERE_FROM = ("VCTK comes from the Edinburgh DataShare (VCTK-Corpus 0.92: https://datashare.ed.ac.uk/"
              "handle/10283/3443, 0.80: https://datashare.ed.ac.uk/handle/10283/2651)")


@dataclass(frozen=True)
class Layout:
    version: str  # "0.80" or "0.92"
    audio_dir: Path  # the wav48 / wav48_silence_trimmed folder
    pattern: str  # glob for one speaker's files
    mic: str = "mic1"  # the microphone asked for (0.92 only; 0.80 has one)

    def describe(self) -> str:
        return f"VCTK {self.version} layout in {self.audio_dir}" + (
            f" ({self.mic} files)" if self.version == "0.92" else "")


def find_layouts(root: str | os.PathLike, mic: str = "mic1") -> dict[str, Layout]:
    """Release -> the first audio folder of that layout under ``root`` (which may be the corpus folder,
    its parent, or the wav48 / wav48_silence_trimmed folder itself), in order of preference."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise AfilmError(f"VCTK root {root} is not a folder; {WHERE_FROM}; accepted layouts: {LAYOUTS_HELP}")
    found: dict[str, Layout] = {}
    for base in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        for sub, version in LAYOUT_DIRS:
            for folder in (base / sub, base if base.name == sub else None):
                if version not in found and folder is not None and folder.is_dir():
                    found[version] = Layout(version, folder, _pattern(version, mic), mic)
    return {version: found[version] for _, version in LAYOUT_DIRS if version in found}


def _pattern(version: str, mic: str) -> str:
    """Glob for one speaker's audio files in the ``version`` layout."""
    return f"*_{mic}.flac" if version == "0.92" else "*.wav"


def find_layout(root: str | os.PathLike, mic: str = "mic1", release: str | None = None) -> Layout:
    """The layout to use under ``root``: ``release``'s, else 0.92's where both are there."""
    layouts = find_layouts(root, mic)
    if release is None and layouts:
        return next(iter(layouts.values()))
    if release in layouts:
        return layouts[release]
    if layouts:
        other = next(iter(layouts.values()))
        folder = {v: d for d, v in LAYOUT_DIRS}[release]
        raise AfilmError(f"--release {release}: no {folder}/ folder under {root} (found the "
                         f"{other.describe()}; leave --release out to use it)")
    raise AfilmError(f"no VCTK layout under {root}: expected {LAYOUTS_HELP} (or pass --download); "
                     f"{WHERE_FROM}")


def has_layout(root: Path, release: str | None = None) -> bool:
    """Whether ``root`` holds a VCTK layout (of ``release``, where given)."""
    try:
        find_layout(root, release=release)
    except AfilmError:
        return False
    return True


def list_speakers(layout: Layout) -> dict[str, list[Path]]:
    """Speaker -> sorted audio files, for every speaker folder that has files of the layout."""
    out = {}
    for folder in sorted(p for p in layout.audio_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(folder.glob(layout.pattern))
        if files:
            out[folder.name] = files
    if not out:
        raise AfilmError(f"{layout.audio_dir}: no speaker folders with {_expected_files(layout)}")
    return out


def _expected_files(layout: Layout) -> str:
    """The files ``list_speakers`` looked for, in words, with the microphone that was asked for."""
    if layout.version == "0.80":
        return "pNNN_MMM.wav files (VCTK 0.80 layout)"
    other = "mic2" if layout.mic == "mic1" else "mic1"
    hint = (f"; there are {other} files: --mic {other} uses them"
            if next(layout.audio_dir.glob(f"*/*_{other}.flac"), None) else "")
    return f"pNNN_MMM_{layout.mic}.flac files (VCTK 0.92 layout, --mic {layout.mic}{hint})"


def utterance_id(path: Path) -> str:
    """p225_001 for p225_001.wav and p225_001_mic1.flac."""
    stem = path.stem
    return stem.rsplit("_", 1)[0] if stem.endswith(("_mic1", "_mic2")) else stem


def vctk_splits(speakers: dict[str, list[Path]], split: str, *, val_speakers: list[str] | None = None,
                val_fraction: float | None = None, seed: int = 0,
                warn=cli.warn) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]], dict]:
    """(train sources, val sources, description) for ``split`` "single" or "multi"."""
    if val_speakers and val_fraction is not None:
        raise AfilmError("--val-speakers and --val-fraction both choose the validation data; give one")
    if split == "single":
        if val_speakers:
            raise AfilmError("--val-speakers applies to --split multi; "
                             "use --val-fraction with --split single")
        if SINGLE_SPEAKER not in speakers:
            raise AfilmError(f"the single-speaker split uses {SINGLE_SPEAKER}, which is not in the corpus "
                             f"(found {', '.join(list(speakers)[:10])}...); use --split multi")
        files = speakers[SINGLE_SPEAKER]
        if val_fraction is not None:
            held = pick_fraction(files, val_fraction, seed)
            info = {"split": "single", "val": f"fraction {val_fraction}", "seed": seed}
        else:
            held = {f for f in files if utterance_id(f) in SINGLE_VAL}
            info = {"split": "single", "val": "reference"}
            if len(held) < len(SINGLE_VAL):
                absent = sorted(set(SINGLE_VAL) - {utterance_id(f) for f in held})
                warn(f"partial corpus: {len(absent)} of the {len(SINGLE_VAL)} reference validation files are "
                     f"absent ({', '.join(absent)}); use --val-fraction to hold out other files")
        train = [(f, SINGLE_SPEAKER) for f in files if f not in held]
        val = [(f, SINGLE_SPEAKER) for f in files if f in held]
        if not train:  # a copy holding only the reference validation files
            raise AfilmError(f"every {SINGLE_SPEAKER} file of the corpus ({len(files)}) is a reference "
                             "validation file: no training files are left; use --val-fraction")
        return train, val, info
    if split != "multi":
        raise AfilmError(f"unknown split {split!r}; known: single, multi")
    names = list(speakers)
    if val_speakers:
        unknown = [s for s in val_speakers if s not in speakers]
        if unknown:
            raise AfilmError(f"--val-speakers {', '.join(unknown)} not in the corpus; "
                             f"known: {', '.join(names)}")
        held, info = set(val_speakers), {"split": "multi", "val": sorted(val_speakers)}
    elif val_fraction is not None:
        held = pick_fraction(names, val_fraction, seed)
        info = {"split": "multi", "val": f"fraction {val_fraction}", "seed": seed}
    else:
        held, info = {s for s in MULTI_VAL if s in speakers}, {"split": "multi", "val": "reference"}
        if len(held) < len(MULTI_VAL):
            absent = [s for s in MULTI_VAL if s not in speakers]
            warn(f"partial corpus: {len(absent)} of the {len(MULTI_VAL)} reference validation speakers are "
                 f"absent ({', '.join(absent)}); use --val-speakers or --val-fraction to choose others")
    train_speakers = [s for s in names if s not in held][:MULTI_TRAIN_SPEAKERS]
    if not train_speakers:  # said here, before anything is written, not as "no patches for train"
        how, fix = (("--val-speakers", "leave some out of --val-speakers") if val_speakers else
                    ("the reference validation speakers", "use --val-speakers or --val-fraction"))
        raise AfilmError(f"every speaker of the corpus ({len(names)}) is held out for "
                         f"validation by {how}: no training speakers are left; {fix}")
    train = [(f, s) for s in train_speakers for f in speakers[s]]
    val = [(f, s) for s in sorted(held) for f in speakers[s]]
    return train, val, info


def prepare_vctk(root: str | os.PathLike, recipe: Recipe, *, split: str = "single", mic: str = "mic1",
                 val_speakers: list[str] | None = None, val_fraction: float | None = None,
                 out: str | os.PathLike = "data", force: bool = False, release: str | None = None,
                 patch_checked: bool = False):
    """Library entry point of `afilm prepare vctk`.

    Writes ``<out>/vctk-<split>-r<r>-<degrade>-{train,val}.h5`` (see afilm_cli/data/recipe.py).
    ``release`` picks the layout where ``root`` holds both (0.92 by default)."""
    recipe.validate()
    layout = _chosen_layout(root, mic, release)
    _warn_lost_files(layout)
    speakers = list_speakers(layout)
    train, val, info = vctk_splits(speakers, split, val_speakers=val_speakers, val_fraction=val_fraction,
                                   seed=recipe.seed)
    info = {"dataset": "vctk", "version": layout.version, **info}
    if layout.version == "0.92":
        info["mic"] = mic
    paths = default_output_paths(f"vctk-{split}", recipe.r, recipe.degrade, recipe.sr, out)
    plans = [SplitPlan("train", paths["train"], train)]
    if val:
        plans.append(SplitPlan("val", paths["val"], val))
    else:
        cli.warn(f"no validation files for --split {split}: writing {paths['train'].name} only")
    return cli.run_prepare(recipe, plans, split_info=info, root=layout.audio_dir, force=force,
                           patch_checked=patch_checked)


def _chosen_layout(root: str | os.PathLike, mic: str, release: str | None) -> Layout:
    """``find_layout``, saying in one line which layout and folder are used, and what is not."""
    layout = find_layout(root, mic, release)
    unused = [other for other in find_layouts(root, mic).values() if other.version != layout.version]
    line = f"using the {layout.describe()}"
    for other in unused:
        line += f"; not the VCTK {other.version} layout in {other.audio_dir}" + (
            "" if release else f" (--release {other.version} picks it)")
    cli.note(line)
    if layout.version == "0.80" and mic != "mic1":
        cli.warn(f"--mic {mic} applies to VCTK 0.92: the 0.80 layout has one microphone")
    return layout


@DATASETS.register("vctk", help="VCTK 0.80 / 0.92 with the reference single- and multi-speaker splits.")
def vctk(
    root: Annotated[Path | None, typer.Option(
        "--root", envvar="AFILM_VCTK", help="VCTK folder (0.80 or 0.92 layout), or where --download puts it "
        "(default with --download: data/VCTK).")
    ] = None,
    split: Annotated[Literal["single", "multi"], typer.Option("--split", help="single: p225 only; "
                     "multi: 100 train / 9 val speakers.")] = "single",
    r: cli.R = 4,
    sr: cli.SR = 16000,
    patch: cli.Patch = 8192,
    stride: cli.Stride = None,
    degrade: cli.Degrade = None,
    sam: cli.Sam = None,
    seed: cli.Seed = 0,
    multiple: cli.Multiple = 128,
    speed: cli.Speed = "1",
    mic: Annotated[Literal["mic1", "mic2"], typer.Option("--mic", help="Microphone of VCTK 0.92.")] = "mic1",
    val_speakers: Annotated[str | None, typer.Option("--val-speakers", help="Comma-separated validation "
                            "speakers for --split multi (e.g. p226,p227).")] = None,
    val_fraction: cli.ValFraction = None,
    out: cli.Out = Path("data"),
    force: Annotated[bool, typer.Option("--force", "-f", help="Rebuild outputs that already exist. It "
                     "does not download or extract the corpus again: --download restores files deleted "
                     "from it or cut short (of another size than extracted); to replace ones damaged "
                     "otherwise, delete them (or the corpus) and rerun with --download.")] = False,
    fetch: Annotated[bool, typer.Option("--download", help="Download and extract the corpus into --root "
                     "first (resumable; about 11 GB for 0.92); on a later run, restore the speakers' audio "
                     "files deleted or cut short since (from the archive where it is still in --root, else "
                     "downloaded again).")] = False,
    release: Annotated[Literal["0.92", "0.80"] | None, typer.Option("--release", help="Which release "
                       "--download fetches (default 0.92), and which layout is used where --root holds "
                       "both (default 0.92).")] = None,
    url: Annotated[str | None, typer.Option("--url", help="Download from this URL instead (a mirror); "
                   "size and SHA-256 checks then apply only with --sha256.")] = None,
    sha256: Annotated[str | None, typer.Option("--sha256", help="Expected SHA-256 of the archive.")] = None,
) -> None:
    """VCTK speech corpus, 48 kHz: the reference single- (p225) and multi-speaker splits."""
    if root is None:
        if not fetch:
            raise AfilmError(f"no VCTK folder: pass --root DIR or set AFILM_VCTK (or add --download); "
                             f"{WHERE_FROM}; accepted layouts: {LAYOUTS_HELP}")
        root = Path("data") / "VCTK"
    s_stride, s_sam, s_degrade = SPLIT_DEFAULTS[split]
    recipe = Recipe(r=r, sr=sr, patch=patch, stride=stride or s_stride, sam=s_sam if sam is None else sam,
                    degrade=degrade or s_degrade, seed=seed, multiple=multiple, speed=speed).validate()
    cli.warn_patch(recipe)  # before a download: the corpus is hours of work away
    if fetch:
        _download_corpus(root, release, url, sha256, mic)
    elif url or sha256:  # most likely a forgotten --download: said, not silently dropped
        given = [opt for opt, value in (("--url", url), ("--sha256", sha256)) if value]
        cli.warn(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} only with --download: "
                 f"ignored, using the corpus already in {root}")
    names = [s.strip() for s in val_speakers.split(",") if s.strip()] if val_speakers else None
    prepare_vctk(root, recipe, split=split, mic=mic, val_speakers=names, val_fraction=val_fraction,
                 out=out, force=force, release=release, patch_checked=True)


def _download_corpus(root: Path, release: str | None, url: str | None, sha256: str | None,
                     mic: str = "mic1") -> None:
    """--download: the options checked before any network access, then fetch_and_extract."""
    if url is not None:
        url = download.parse_url(url)
    if sha256:
        sha256 = download.parse_sha256(sha256)
    if root.exists() and not root.is_dir():
        raise AfilmError(f"--root {root} is a file, not a folder")
    made = missing_folders([root])  # taken out again where a failed download leaves them empty
    make_output_dir(root)
    archive = download.VCTK_ARCHIVES[release or "0.92"]
    if url:
        archive = download.Archive(url, Path(url.split("?")[0]).name or archive.filename, None, None)
    if sha256:
        archive = download.Archive(archive.url, archive.filename, archive.size, sha256)
    # a mirror's archive may be either release: any layout counts as extracted, unless --release says
    want = release or (None if url else "0.92")
    # and of what it extracted, the audio files of that layout (and --mic) must be there: deleted
    # speakers or files, or files cut short, are restored; another microphone's files, the transcripts, may go
    try:
        download.fetch_and_extract(archive, root, present=lambda folder: has_layout(folder, want),
                                   select=partial(_layout_audio, mic=mic, release=want))
    except BaseException:  # a 404, Ctrl-C before the first byte: no empty --root left (a .part stays)
        remove_empty(made)
        raise
    if not has_layout(root, want):  # not "pass --download", which find_layout would say
        raise AfilmError(f"{archive.filename} was extracted into {root}, but no VCTK "
                         f"{want + ' ' if want else ''}layout is there: expected {LAYOUTS_HELP}")


def _layout_audio(path: str, mic: str, release: str | None) -> bool:
    """Whether ``path`` (in an archive, "VCTK-Corpus/wav48/p225/p225_001.wav") is a speaker's audio file
    of the layout of ``release`` (of either where None) that a run with ``mic`` reads. String operations:
    called for each of the 132k files VCTK 0.92 extracts."""
    parts = path.rsplit("/", 3)
    version = _LAYOUT_VERSION.get(parts[-3]) if len(parts) >= 3 else None
    if version is None or release not in (None, version):
        return False
    return fnmatchcase(parts[-1], _pattern(version, mic))


def _warn_lost_files(layout: Layout) -> None:
    """Audio files of ``layout`` that `--download` extracted and that are gone since, or damaged (of
    another size than extracted, where the marker records sizes): warned about in one line per archive
    (this run prepares without the missing ones, with the damaged ones as they are, which may be skipped
    as unreadable; --download would restore them)."""
    audio = layout.audio_dir
    for base in dict.fromkeys((audio.parent, audio.parent.parent)):  # the --download root: either
        for stopped in sorted(base.glob(".afilm-extracting-*")):  # Ctrl-C or an error during extraction
            cli.warn(f"the extraction of {stopped.name.removeprefix('.afilm-extracting-')} into {base} by "
                     "--download was stopped before it finished: the corpus there may be incomplete (add "
                     "--download to finish it)")
        inside = audio.relative_to(base).as_posix()

        def select(path: str, inside: str = inside) -> bool:
            folder, _, name = path.rpartition("/")
            return folder.rpartition("/")[0] == inside and fnmatchcase(name, layout.pattern)

        for marker in sorted(base.glob(".afilm-extracted-*")):
            try:
                short = download.shortfall(base, marker, select)
            except OSError:
                continue  # an unreadable marker: nothing to compare with
            if short:
                how = ("preparing without them" if not short.damaged else
                       "preparing with them as they are" if short.damaged == short.lost else
                       "preparing without the missing ones and with the damaged ones as they are")
                cli.warn(f"{marker.name.removeprefix('.afilm-extracted-')} was extracted into {base} by "
                         f"--download, but {short.describe()}: {how} (add --download to restore them)")
