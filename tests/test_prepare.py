"""`afilm prepare vctk|folder` on real audio (vctk-mini 0.80, a 0.92 FLAC copy, librispeech-mini).

The HDF5 contents are checked against the recipe computed here with scipy directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from scipy import interpolate, signal

from afilm_cli.data import recipe as recipe_mod
from afilm_cli.data.folder import folder_splits, prepare_folder
from afilm_cli.data.h5 import PatchFile, PatchWriter
from afilm_cli.data.recipe import (
    Recipe,
    default_output_paths,
    find_prepared,
    output_stem,
    pick_fraction,
    val_path_for,
)
from afilm_cli.data.vctk import MULTI_VAL, SINGLE_VAL, find_layout, list_speakers, prepare_vctk
from afilm_cli.errors import AfilmError
from afilm_cli.registry import DATASETS

ROOT = Path(__file__).resolve().parents[1]


def expected_signals(path: Path, r: int, method: str, sr: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """The reference recipe, written independently with scipy: (spline input, HR)."""
    x, sr_in = sf.read(str(path), dtype="float32")
    if x.ndim == 2:
        x = x.mean(axis=1)
    g = np.gcd(sr_in, sr)
    hr = signal.resample_poly(x.astype(np.float64), sr // g, sr_in // g).astype(np.float32)
    hr = hr[: len(hr) - len(hr) % r]
    if method == "decimate":
        lr = signal.decimate(hr.astype(np.float64), r)
    elif method == "resample":
        lr = signal.resample_poly(hr.astype(np.float64), 1, r)
    else:
        lr = hr[::r].astype(np.float64)
    tck = interpolate.splrep(np.arange(len(lr)) * r, lr, k=3, s=0)
    return interpolate.splev(np.arange(len(hr)), tck), hr


def candidates(sig: np.ndarray, patch: int, stride: int) -> np.ndarray:
    return np.stack([sig[i: i + patch] for i in range(0, len(sig) - patch + 1, stride)])


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "afilm_cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def vctk092(tmp_path_factory, vctk_mini) -> Path:
    """A 0.92-layout FLAC copy of vctk-mini, plus the reference validation names so both splits
    have validation data: p225_355... are copies of p225_001..008, p347/p351 copies of p226/p227."""
    root = tmp_path_factory.mktemp("vctk092") / "VCTK-Corpus-0.92"
    out = root / "wav48_silence_trimmed"
    for spk_dir in sorted((vctk_mini / "wav48").iterdir()):
        (out / spk_dir.name).mkdir(parents=True)
        for wav in sorted(spk_dir.glob("*.wav")):
            x, sr = sf.read(wav, dtype="int16")
            sf.write(out / spk_dir.name / f"{wav.stem}_mic1.flac", x, sr)
    p225 = sorted((out / "p225").glob("*_mic1.flac"))
    for src, utt in zip(p225, SINGLE_VAL, strict=False):
        shutil.copy(src, out / "p225" / f"{utt}_mic1.flac")
    for src_spk, dst_spk in (("p226", "p347"), ("p227", "p351")):
        (out / dst_spk).mkdir()
        for f in sorted((out / src_spk).glob("*_mic1.flac"))[:3]:
            shutil.copy(f, out / dst_spk / f.name.replace(src_spk, dst_spk))
    # mic2 for one speaker only, to check --mic selects files
    shutil.copy(p225[0], out / "p225" / p225[0].name.replace("_mic1", "_mic2"))
    return root


def test_single_split_matches_independent_recipe(vctk_mini, tmp_path):
    results = prepare_vctk(vctk_mini, Recipe(r=4), split="single", out=tmp_path)
    out = tmp_path / "vctk-single-r4-decimate-train.h5"
    assert [r.out for r in results] == [out]  # partial corpus: no validation file, no failure
    assert not (tmp_path / "vctk-single-r4-decimate-val.h5").exists()
    with h5py.File(out, "r") as f:
        data, label = f["data"], f["label"]
        assert data.dtype == np.float32 and label.dtype == np.float32
        assert data.shape == label.shape and data.shape[1:] == (8192, 1)
        n = data.shape[0]
        assert n > 0 and n % 128 == 0
        attrs = dict(f.attrs)
        sources = json.loads(attrs["sources"])
        assert sources == sorted(f"p225/{p.name}" for p in (vctk_mini / "wav48" / "p225").glob("*.wav"))
        up, hr = expected_signals(vctk_mini / "wav48" / sources[0], 4, "decimate")
        exp_data, exp_label = candidates(up, 8192, 4096), candidates(hr, 8192, 4096)
        k = min(len(exp_data), n)
        np.testing.assert_allclose(label[:k, :, 0], exp_label[:k], atol=1e-6)
        np.testing.assert_allclose(data[:k, :, 0], exp_data[:k], atol=2e-5)
        # the second file's patches follow the first file's
        up2, hr2 = expected_signals(vctk_mini / "wav48" / sources[1], 4, "decimate")
        np.testing.assert_allclose(label[k: k + 2, :, 0], candidates(hr2, 8192, 4096)[:2], atol=1e-6)
    assert {k: attrs[k] for k in ("r", "sr", "patch", "stride", "degrade", "sam", "seed")} == {
        "r": 4, "sr": 16000, "patch": 8192, "stride": 4096, "degrade": "decimate", "sam": 1.0, "seed": 0}
    assert attrs["afilm_version"] and json.loads(attrs["split"])["version"] == "0.80"
    with PatchFile(out) as pf:  # the shared reader accepts it and recovers the recipe
        assert pf.recipe["r"] == 4 and pf.recipe["sources"] == sources


def test_multi_split_subsample_sampling_and_seed(vctk_mini, tmp_path):
    rec = Recipe(r=2, stride=8192, sam=0.25, degrade="subsample", multiple=1, seed=7)
    (res,) = prepare_vctk(vctk_mini, rec, split="multi", out=tmp_path / "a")
    assert res.files == 50 and res.speakers == 13 and res.skipped == []
    path = tmp_path / "a" / "vctk-multi-r2-subsample-train.h5"
    with h5py.File(path, "r") as f:
        label, data = f["label"][:, :, 0], f["data"][:, :, 0]
        sources = json.loads(f.attrs["sources"])
    assert sources[0] == "p225/p225_001.wav" and len(sources) == 50
    # roughly a quarter of all candidate patches, each one a real stride-8192 patch of the corpus
    all_hr, all_up = [], []
    for s in sources:
        up, hr = expected_signals(vctk_mini / "wav48" / s, 2, "subsample")
        all_hr.append(candidates(hr, 8192, 8192))
        all_up.append(candidates(up, 8192, 8192))
    all_hr, all_up = np.concatenate(all_hr), np.concatenate(all_up)
    assert 0.1 < len(label) / len(all_hr) < 0.45
    for i in range(0, len(label), 7):
        j = int(np.argmin(np.abs(all_hr - label[i]).max(axis=1)))
        np.testing.assert_allclose(label[i], all_hr[j], atol=1e-6)
        np.testing.assert_allclose(data[i], all_up[j], atol=2e-5)
    # same seed -> identical file; another seed -> another selection
    prepare_vctk(vctk_mini, rec, split="multi", out=tmp_path / "b")
    with h5py.File(tmp_path / "b" / path.name, "r") as f:
        np.testing.assert_array_equal(f["label"][:, :, 0], label)
    prepare_vctk(vctk_mini, Recipe(**{**rec.attrs(), "seed": 8}), split="multi", out=tmp_path / "c")
    with h5py.File(tmp_path / "c" / path.name, "r") as f:
        assert f["label"].shape != label.shape or not np.array_equal(f["label"][:, :, 0], label)


def test_vctk_092_layout_reference_splits(vctk092, tmp_path):
    layout = find_layout(vctk092.parent)  # parent of the corpus folder is accepted too
    assert layout.version == "0.92" and layout.audio_dir.name == "wav48_silence_trimmed"
    assert list(list_speakers(find_layout(vctk092, "mic2"))) == ["p225"]
    results = prepare_vctk(vctk092, Recipe(r=4, multiple=1), split="single", out=tmp_path)
    assert [r.part for r in results] == ["train", "val"]
    paths = default_output_paths("vctk-single", 4, "decimate", out=tmp_path)
    with h5py.File(paths["val"], "r") as f:
        val_src = json.loads(f.attrs["sources"])
        assert json.loads(f.attrs["split"])["mic"] == "mic1"
    with h5py.File(paths["train"], "r") as f:
        train_src = json.loads(f.attrs["sources"])
    assert sorted(Path(s).name for s in val_src) == [f"{u}_mic1.flac" for u in SINGLE_VAL]
    assert len(train_src) == 10 and not set(train_src) & set(val_src)
    # multi: the reference validation speakers that exist (p347, p351) are held out
    results = prepare_vctk(vctk092, Recipe(r=4, stride=8192, sam=1.0, degrade="subsample", multiple=1),
                           split="multi", out=tmp_path)
    val = next(r for r in results if r.part == "val")
    assert val.speakers == 2 and set(MULTI_VAL) >= {"p347", "p351"}
    with h5py.File(val.out, "r") as f:
        assert {s.split("/")[0] for s in json.loads(f.attrs["sources"])} == {"p347", "p351"}


def test_val_speakers_and_fraction(vctk_mini, tmp_path):
    rec = Recipe(r=4, stride=8192, sam=1.0, degrade="subsample", multiple=1)
    results = prepare_vctk(vctk_mini, rec, split="multi", val_speakers=["p226", "p227"], out=tmp_path)
    train, val = results
    assert (train.speakers, val.speakers) == (11, 2) and val.files == 20
    with pytest.raises(AfilmError, match="p999 not in the corpus"):
        prepare_vctk(vctk_mini, rec, split="multi", val_speakers=["p999"], out=tmp_path / "x")
    with pytest.raises(AfilmError, match="--val-speakers and --val-fraction both choose"):  # not one ignored
        prepare_vctk(vctk_mini, rec, split="multi", val_speakers=["p226"], val_fraction=0.5,
                     out=tmp_path / "y")
    assert not (tmp_path / "y").exists()
    results = prepare_vctk(vctk_mini, Recipe(r=4, multiple=1), split="single", val_fraction=0.3,
                           out=tmp_path / "f")
    assert [(r.part, r.files) for r in results] == [("train", 7), ("val", 3)]
    picks = [pick_fraction(list(range(10)), 0.3, seed) for seed in (0, 0, 1, 2)]
    assert picks[0] == picks[1]  # deterministic by seed ...
    assert len({frozenset(p) for p in picks}) == 3  # ... and the seed does choose (not the first 30 %)
    assert all(len(p) == 3 and p <= set(range(10)) for p in picks)


def test_rerun_skips_force_rebuilds_and_other_recipe_refused(vctk_mini, tmp_path):
    (first,) = prepare_vctk(vctk_mini, Recipe(r=4), out=tmp_path)
    mtime = first.out.stat().st_mtime_ns
    (again,) = prepare_vctk(vctk_mini, Recipe(r=4), out=tmp_path)
    assert again.status == "exists" and first.out.stat().st_mtime_ns == mtime
    with pytest.raises(AfilmError, match="different recipe: stride"):
        prepare_vctk(vctk_mini, Recipe(r=4, stride=2048), out=tmp_path)
    (forced,) = prepare_vctk(vctk_mini, Recipe(r=4, stride=2048), out=tmp_path, force=True)
    assert forced.status == "written" and forced.patches > first.patches


def test_a_kept_output_from_another_file_list_is_refused(libri_mini, tmp_path):
    """Files added since the last run change the --val-fraction draw: rebuilding a deleted val file
    beside the kept train file could put a file in both. The outputs record their run's file lists."""
    files = sorted(libri_mini.rglob("*.flac"))[:10]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in files[:6]:
        shutil.copy(f, corpus / f.name)
    kw = dict(val_fraction=0.34, out=tmp_path / "out")
    train, val = prepare_folder(corpus, Recipe(r=4, multiple=1), **kw)
    again = prepare_folder(corpus, Recipe(r=4, multiple=1), **kw)  # same files: both kept
    assert [res.status for res in again] == ["exists", "exists"]
    for f in files[6:]:
        shutil.copy(f, corpus / f.name)
    val.out.unlink()
    with pytest.raises(AfilmError, match="prepared from another list of files .* --force"):
        prepare_folder(corpus, Recipe(r=4, multiple=1), **kw)
    assert not val.out.exists()
    rebuilt = prepare_folder(corpus, Recipe(r=4, multiple=1), force=True, **kw)
    with PatchFile(rebuilt[0].out) as a, PatchFile(rebuilt[1].out) as b:
        assert not set(a.recipe["sources"]) & set(b.recipe["sources"])
        assert len(a.recipe["sources"]) + len(b.recipe["sources"]) == 10


def test_a_val_file_left_from_another_run_is_never_paired_with_a_new_train_file(libri_mini, tmp_path):
    from afilm_cli.train import TrainConfig, find_data

    files = sorted(libri_mini.rglob("*.flac"))[:6]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in files:
        shutil.copy(f, corpus / f.name)
    out = tmp_path / "out"
    train, val = prepare_folder(corpus, Recipe(r=4, multiple=1), val_fraction=0.34, out=out)
    old_val = tmp_path / "old-val.h5"
    shutil.copy(val.out, old_val)
    # a rerun without a validation split: the old val file would be paired with the new train file
    with pytest.raises(AfilmError, match="left from an earlier run .* --force"):
        prepare_folder(corpus, Recipe(r=4, multiple=1), val_fraction=0.0, out=out)
    (only,) = prepare_folder(corpus, Recipe(r=4, multiple=1), val_fraction=0.0, out=out, force=True)
    assert only.part == "train" and not val.out.exists()
    # and train refuses a val file from another run that was put back beside it
    shutil.copy(old_val, val.out)
    with pytest.raises(AfilmError, match="was not prepared with .* --val FILE"):
        find_data(TrainConfig(model="afilm_tiny", data_dir=str(out)))
    assert find_data(TrainConfig(model="afilm_tiny", data_dir=str(out), val=str(old_val)))[1] == old_val


def test_killed_run_leaves_no_output(vctk_mini, tmp_path, monkeypatch):
    real = recipe_mod.file_signals
    calls = []

    def dying(path, rec):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, rec)

    monkeypatch.setattr(recipe_mod, "file_signals", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare_vctk(vctk_mini, Recipe(r=4), out=tmp_path)
    assert list(tmp_path.iterdir()) == []



def test_patch_file_failing_at_its_attributes_is_not_left_in_place(tmp_path):
    """Patches written but the recipe attributes failing (here a value JSON cannot write; a full disk
    alike) leave no file: a file without its recipe would pass a rerun's check as finished."""
    path = tmp_path / "x-train.h5"
    with pytest.raises(TypeError, match="not JSON serializable"):
        with PatchWriter(path, 64, attrs={"r": 4, "sources": {"a.wav"}}) as w:
            w.append(np.zeros((3, 64)), np.zeros((3, 64)))
    assert list(tmp_path.iterdir()) == []
    with PatchWriter(path, 64, attrs={"r": 4, "sources": ["a.wav"]}) as w:
        w.append(np.zeros((3, 64)), np.zeros((3, 64)))
    written = PatchFile(path)
    assert len(written) == 3 and written.recipe["sources"] == ["a.wav"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]

@pytest.mark.parametrize(("kwargs", "match"), [
    ({"r": 3}, "does not divide the patch length 8192"),
    ({"r": 4, "patch": 8190}, "does not divide the patch length 8190"),
    ({"r": 4, "sam": 0.0}, "--sam must be in"),
    ({"r": 4, "degrade": "bogus"}, "unknown degradation 'bogus'"),
    ({"r": 1}, "integer >= 2"),
])
def test_bad_recipe_is_one_clear_error(kwargs, match):
    with pytest.raises(AfilmError, match=match) as exc:
        Recipe(**kwargs).validate()
    assert "\n" not in str(exc.value)


def test_bad_roots(tmp_path):
    with pytest.raises(AfilmError, match="not a folder"):
        find_layout(tmp_path / "missing")
    (tmp_path / "wav48").mkdir()
    with pytest.raises(AfilmError, match="no speaker folders"):
        list_speakers(find_layout(tmp_path))
    (tmp_path / "other").mkdir()
    with pytest.raises(AfilmError, match="no VCTK layout"):
        find_layout(tmp_path / "other")


def make_bad_corpus(vctk_mini: Path, root: Path) -> list[str]:
    """Three good p225 files plus a corrupt, an empty, a too-short, a NaN, a silent, a low-rate and a
    truncated file (the first half of a fourth real one: libsndfile reads it without a word)."""
    spk = root / "wav48" / "p225"
    spk.mkdir(parents=True)
    real = sorted((vctk_mini / "wav48" / "p225").glob("*.wav"))
    for f in real[:3]:
        shutil.copy(f, spk / f.name)
    whole = real[3].read_bytes()
    (spk / "p225_106.wav").write_bytes(whole[: len(whole) // 2])
    (spk / "p225_100.wav").write_bytes(b"RIFF\x00\x00garbage" * 100)
    (spk / "p225_101.wav").write_bytes(b"")
    sf.write(spk / "p225_102.wav", np.zeros(4000, np.float32) + 0.1, 48000)
    nan = np.full(48000, 0.1, np.float32)
    nan[100] = np.nan
    sf.write(spk / "p225_103.wav", nan, 48000, subtype="FLOAT")
    sf.write(spk / "p225_104.wav", np.zeros(96000, np.int16), 48000)  # 2 s of digital silence
    sf.write(spk / "p225_105.wav", np.full(16000, 0.1, np.float32), 8000)  # 2 s at half the high rate
    return ["p225_100.wav", "p225_101.wav", "p225_102.wav", "p225_103.wav", "p225_104.wav", "p225_105.wav",
            "p225_106.wav"]


def test_cli_subprocess_skips_bad_files_and_errors(vctk_mini, tmp_path):
    corpus = tmp_path / "corpus"
    bad = make_bad_corpus(vctk_mini, corpus)
    proc = run_cli("prepare", "vctk", "--r", "4", "--multiple", "1", "--out", str(tmp_path / "out"),
                   cwd=tmp_path, env={"AFILM_VCTK": str(corpus)})
    assert proc.returncode == 0, proc.stderr
    for name in bad:
        assert name in proc.stderr  # each skipped file is named in a warning
    assert "shorter than one patch" in proc.stderr and "NaN" in proc.stderr and "silent" in proc.stderr
    assert "8000 Hz is below the high rate --sr 16000 Hz" in proc.stderr
    assert "p225_106.wav: file is shorter than its header says (truncated?" in " ".join(proc.stderr.split())
    row = next(line for line in proc.stdout.splitlines() if "train" in line)
    assert [c.strip() for c in row.split("│")[2:4]] == ["3", "7"]  # 3 files used, 7 skipped
    out = tmp_path / "out" / "vctk-single-r4-decimate-train.h5"
    with h5py.File(out, "r") as f:
        assert sorted(Path(p).name for p in json.loads(f.attrs["skipped"])) == bad
    proc = run_cli("prepare", "vctk", "--r", "4", "--multiple", "1", "--out", str(tmp_path / "out"),
                   cwd=tmp_path, env={"AFILM_VCTK": str(corpus)})
    assert proc.returncode == 0 and "skipped (--force rebuilds it)" in proc.stderr
    # errors: one line, exit code 2, no traceback
    env = {k: v for k, v in os.environ.items() if k != "AFILM_VCTK"}
    for args, text in ((["prepare", "vctk"], "datashare.ed.ac.uk"),
                       (["prepare", "vctk", "--root", str(tmp_path / "nope")], "not a folder"),
                       (["prepare", "vctk", "--root", str(corpus), "--r", "3"], "does not divide"),
                       (["prepare", "folder", str(tmp_path / "out")], "no audio files")):
        proc = subprocess.run([sys.executable, "-m", "afilm_cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert text in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_all_files_bad_is_an_error(tmp_path):
    spk = tmp_path / "wav48" / "p225"
    spk.mkdir(parents=True)
    (spk / "p225_001.wav").write_bytes(b"not audio")
    with pytest.raises(AfilmError, match="no patches for train"):
        prepare_vctk(tmp_path, Recipe(r=4), out=tmp_path / "out" / "deeper")
    assert not (tmp_path / "out").exists()  # the folders it made for its output are taken out again


def test_folder_by_subfolder_librispeech(libri_mini, tmp_path):
    root = libri_mini / "test-other"
    train, val, _ = folder_splits(root, val_fraction=0.2, by_subfolder=True, seed=0)
    tr_spk = {p.relative_to(root).parts[0] for p, _ in train}
    va_spk = {p.relative_to(root).parts[0] for p, _ in val}
    assert len(va_spk) == 2 and len(tr_spk) == 8 and not tr_spk & va_spk
    # 16 kHz FLAC, fewer files to keep the test short: one file per speaker folder
    sub = tmp_path / "libri"
    for spk in sorted(root.iterdir())[:6]:
        (sub / spk.name).mkdir(parents=True)
        shutil.copy(sorted(spk.glob("*.flac"))[0], sub / spk.name)
    results = prepare_folder(sub, Recipe(r=2, multiple=1), val_fraction=0.34, by_subfolder=True,
                             out=tmp_path / "out")
    assert [(r.part, r.files, r.speakers) for r in results] == [("train", 4, 4), ("val", 2, 2)]
    with h5py.File(tmp_path / "out" / "libri-r2-decimate-train.h5", "r") as f:
        first = json.loads(f.attrs["sources"])[0]
        up, hr = expected_signals(sub / first, 2, "decimate")
        np.testing.assert_allclose(f["label"][0, :, 0], hr[:8192], atol=1e-6)
        np.testing.assert_allclose(f["data"][0, :, 0], up[:8192], atol=2e-5)


def test_by_subfolder_never_holds_out_the_files_directly_in_the_folder(tmp_path, libri_mini):
    """--by-subfolder holds out speakers: files directly in the folder have none known, so they train;
    they were one group, '.', held out whole for some seeds. A folder with no subfolders says so."""
    root = tmp_path / "corpus"
    for spk in ("a", "b", "c"):
        (root / spk).mkdir(parents=True)
        for k in range(2):
            (root / spk / f"{spk}{k}.wav").touch()  # listing only: no recipe, nothing is read
    for k in range(3):
        (root / f"loose{k}.wav").touch()
    held = set()
    for seed in range(12):
        train, val, _ = folder_splits(root, val_fraction=0.5, by_subfolder=True, seed=seed)
        assert val and not any(p.parent == root for p, _ in val), (seed, val)
        assert sum(p.parent == root for p, _ in train) == 3
        held |= {p.parent.name for p, _ in val}
    assert held == {"a", "b", "c"}
    flat = tmp_path / "flat"
    flat.mkdir()
    for k, src in enumerate(sorted((libri_mini / "test-other").rglob("*.flac"))[:2]):
        shutil.copy(src, flat / f"{k}.flac")
    out = subprocess.run([sys.executable, "-m", "afilm_cli", "prepare", "folder", flat, "--by-subfolder",
                          "--val-fraction", "0.5", "--r", "2", "--multiple", "1", "--out", tmp_path / "o"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--by-subfolder: the folder has no subfolders of audio" in out.stderr, out.stderr


def test_folder_with_two_degradations_writes_each_file_both_ways(vctk_mini, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("p225_001.wav", "p225_002.wav"):
        shutil.copy(vctk_mini / "wav48" / "p225" / name, src / name)
    counts = {}
    for degrade in ("decimate", "resample", "decimate+resample"):
        [res] = prepare_folder(src, Recipe(r=4, stride=8192, multiple=1, degrade=degrade), val_fraction=0.0,
                               out=tmp_path / "out")
        counts[degrade] = res.patches
        assert res.out.name == f"src-r4-{degrade}-train.h5"
    assert counts["decimate+resample"] == counts["decimate"] + counts["resample"] and counts["decimate"] > 2
    with h5py.File(tmp_path / "out" / "src-r4-decimate+resample-train.h5", "r") as f:
        assert f.attrs["degrade"] == "decimate+resample"
        # per file: its decimate patches, then the same high-rate patches with the resample_poly input
        up_d, hr = expected_signals(src / "p225_001.wav", 4, "decimate")
        up_r, _ = expected_signals(src / "p225_001.wav", 4, "resample")
        n = len(hr) // 8192
        np.testing.assert_allclose(f["data"][0, :, 0], up_d[:8192], atol=3e-5)
        np.testing.assert_allclose(f["data"][n, :, 0], up_r[:8192], atol=3e-5)
        np.testing.assert_array_equal(f["label"][0], f["label"][n])
    with pytest.raises(AfilmError, match=r"unknown degradation 'decimate\+decimate'.*joined by \+"):
        Recipe(r=4, degrade="decimate+decimate").validate()
    proc = run_cli("prepare", "folder", str(src), "--r", "4", "--degrade", "lowpass", cwd=tmp_path)
    assert proc.returncode != 0 and "unknown degradation 'lowpass'" in proc.stderr


def test_folder_any_rate_val_dir_and_cli(vctk_mini, tmp_path):
    """44.1 kHz stereo and 48 kHz files resampled to 16 kHz; --val-dir inside the tree."""
    root = tmp_path / "music"
    (root / "held").mkdir(parents=True)
    x, sr = sf.read(vctk_mini / "wav48" / "p226" / "p226_002.wav", dtype="float32")
    stereo = signal.resample_poly(x, 147, 160)
    sf.write(root / "a.wav", np.stack([stereo, 0.5 * stereo], axis=1), 44100)
    shutil.copy(vctk_mini / "wav48" / "p227" / "p227_003.wav", root / "b.wav")
    shutil.copy(vctk_mini / "wav48" / "p228" / "p228_004.wav", root / "held" / "c.wav")
    for other in (["--val-fraction", "0.5"], ["--by-subfolder"]):  # accepted and dropped before
        proc = run_cli("prepare", "folder", str(root), "--r", "4", "--val-dir", str(root / "held"), *other,
                       "--out", "prepared", cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.strip() == (
            f"afilm: error: --val-dir names the validation files: {other[0]} would pick others; "
            "give one of them")
    assert not (tmp_path / "prepared").exists()
    proc = run_cli("prepare", "folder", str(root), "--r", "4", "--val-dir", str(root / "held"),
                   "--multiple", "1", "--out", "prepared", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    train = tmp_path / "prepared" / "music-r4-decimate-train.h5"
    assert find_prepared(tmp_path / "prepared") == [(train, val_path_for(train))]
    with h5py.File(train, "r") as f:
        assert json.loads(f.attrs["sources"]) == ["a.wav", "b.wav"]
        up, hr = expected_signals(root / "a.wav", 4, "decimate")  # mono = mean of the channels
        np.testing.assert_allclose(f["label"][0, :, 0], hr[:8192], atol=1e-5)
        np.testing.assert_allclose(f["data"][0, :, 0], up[:8192], atol=3e-5)
    with h5py.File(val_path_for(train), "r") as f:
        assert json.loads(f.attrs["sources"]) == ["held/c.wav"]


def test_cli_recipe_options_reach_the_files(libri_mini, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in sorted(libri_mini.rglob("*.flac"))[:4]:
        shutil.copy(f, corpus / f.name)
    proc = run_cli("prepare", "folder", str(corpus), "--r", "2", "--patch", "4096", "--stride", "2048",
                   "--seed", "5", "--sam", "0.5", "--val-fraction", "0.5", "--multiple", "1",
                   "--degrade", "subsample", "--name", "x", "--out", "o", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with PatchFile(tmp_path / "o" / "x-r2-subsample-train.h5") as tr, \
            PatchFile(tmp_path / "o" / "x-r2-subsample-val.h5") as va:
        assert tr.patch == 4096 and (tr.recipe["r"], tr.recipe["degrade"]) == (2, "subsample")
        assert len(tr.recipe["sources"]) == len(va.recipe["sources"]) == 2  # half held out
    with h5py.File(tmp_path / "o" / "x-r2-subsample-train.h5", "r") as f:
        assert (f.attrs["stride"], f.attrs["sam"], f.attrs["seed"]) == (2048, 0.5, 5)
        assert json.loads(f.attrs["split"])["val"].startswith("fraction 0.5")


def test_registry_and_help(tmp_path):
    assert {"vctk", "folder"} <= set(DATASETS.names())
    assert callable(DATASETS.get("vctk")) and DATASETS.meta("folder")["help"]
    assert output_stem("vctk-multi", 8, "subsample", 22050) == "vctk-multi-r8-subsample-sr22050"
    from typer.testing import CliRunner

    from afilm_cli.main import app
    res = CliRunner().invoke(app, ["prepare", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "vctk" in res.output and "folder" in res.output


def test_plugin_dataset_becomes_a_subcommand(tmp_path):
    """A third-party dataset registers its command function in DATASETS, like the built-ins."""
    import typer
    from typer.testing import CliRunner

    from afilm_cli.commands.prepare import register_datasets

    @DATASETS.register("toy_corpus", help="A toy plugin dataset.")
    def toy(r: int = typer.Option(4, "--r")) -> None:
        """Toy dataset."""
        print(f"toy r={r}")

    try:
        app = typer.Typer()
        register_datasets(app)
        res = CliRunner().invoke(app, ["toy_corpus", "--r", "8"])
        assert res.exit_code == 0 and "toy r=8" in res.output
    finally:
        DATASETS.unregister("toy_corpus")


def test_speed_perturbation_multiplies_the_training_split_only(vctk_mini, tmp_path):
    src = tmp_path / "src"
    (src / "held").mkdir(parents=True)
    for name in ("p225_001.wav", "p225_002.wav"):
        shutil.copy(vctk_mini / "wav48" / "p225" / name, src / name)
    shutil.copy(vctk_mini / "wav48" / "p226" / "p226_003.wav", src / "held" / "c.wav")
    kw = dict(r=4, stride=8192, multiple=1)
    plain = prepare_folder(src, Recipe(**kw), val_dir=src / "held", out=tmp_path / "plain")
    fast = prepare_folder(src, Recipe(**kw, speed="0.9,1,1.1"), val_dir=src / "held", out=tmp_path / "fast")
    by_part = {res.part: res for res in fast}
    [plain_val] = [res for res in plain if res.part == "val"]
    assert by_part["val"].patches == plain_val.patches  # validation is never perturbed
    with h5py.File(by_part["val"].out, "r") as f:
        assert f.attrs["speed"] == "1"
    with h5py.File(by_part["train"].out, "r") as f:
        assert f.attrs["speed"] == "0.9,1,1.1"
        # per file: the 0.9x version (resampled to 16000 / 0.9 ~ 17780 Hz, played at 16 kHz), then 1x, 1.1x
        counts, lengths = [], []
        for rate in (17780, 16000, 14550):
            up, hr = expected_signals(src / "p225_001.wav", 4, "decimate", sr=rate)
            np.testing.assert_allclose(f["label"][sum(counts), :, 0], hr[:8192], atol=1e-5)
            np.testing.assert_allclose(f["data"][sum(counts), :, 0], up[:8192], atol=3e-5)
            counts.append(len(hr) // 8192)
            lengths.append(len(hr))
        assert lengths[0] > lengths[1] > lengths[2]  # slower is longer
    # a rerun with other factors is refused rather than reusing the file
    with pytest.raises(AfilmError, match=r"different recipe: speed='0.9,1,1.1' \(asked '1'\)"):
        prepare_folder(src, Recipe(**kw), val_dir=src / "held", out=tmp_path / "fast")


def test_speed_factor_scales_the_pitch(tmp_path):
    t = np.arange(32000) / 16000
    sf.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 16000)
    for factor, expected_hz in (("1.1", 1100), ("0.8", 800), ("1", 1000)):
        [(_, hr)] = recipe_mod.file_signals(tmp_path / "tone.wav", Recipe(r=4, speed=factor))
        peak = np.fft.rfftfreq(len(hr), 1 / 16000)[np.argmax(np.abs(np.fft.rfft(hr)))]
        assert peak == pytest.approx(expected_hz, abs=2)
        assert len(hr) == pytest.approx(32000 / float(factor), rel=5e-4)  # sr / f rounded to 10 Hz


def test_outputs_written_before_speed_existed_still_count_as_speed_1(vctk_mini, tmp_path):
    (first,) = prepare_vctk(vctk_mini, Recipe(r=4), out=tmp_path)
    with h5py.File(first.out, "a") as f:
        del f.attrs["speed"]
    (again,) = prepare_vctk(vctk_mini, Recipe(r=4), out=tmp_path)
    assert again.status == "exists"


@pytest.mark.parametrize(("speed", "match"), [
    ("fast", "comma-separated factors"), ("0.9,,1.1", "comma-separated factors"),
    ("0.3", "between 0.5 and 2"), ("1,1.0", "repeats a factor")])
def test_bad_speed_is_one_clear_error(speed, match, tmp_path):
    with pytest.raises(AfilmError, match=match):
        Recipe(r=4, speed=speed).validate()
    proc = run_cli("prepare", "folder", str(tmp_path), "--r", "4", "--speed", speed, cwd=tmp_path)
    assert proc.returncode != 0 and match in proc.stderr and "Traceback" not in proc.stderr


def test_ctrl_c_stops_between_files_and_leaves_nothing(vctk_mini, tmp_path, monkeypatch):
    """Ctrl-C is acted on between files (raised inside h5py's clean-up it was ignored and the run went
    on to the end): the file in hand finishes, no later one starts, the partial output is removed."""
    import os
    import signal

    from afilm_cli.data import recipe as recipe_mod

    real, seen, done = recipe_mod.file_signals, [], []
    # the handler pytest runs under: Python's own, or SIG_IGN where it was started in the background
    before = signal.getsignal(signal.SIGINT)

    def file_signals(path, rec):
        seen.append(path)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the second file is worked on
        out = real(path, rec)
        done.append(path)
        return out

    monkeypatch.setattr(recipe_mod, "file_signals", file_signals)
    files = sorted((vctk_mini / "wav48" / "p225").glob("*.wav"))[:5]
    plan = recipe_mod.SplitPlan("train", tmp_path / "out" / "x-train.h5", [(f, "p225") for f in files])
    with pytest.raises(KeyboardInterrupt):
        recipe_mod.prepare_split(plan, Recipe(r=4, multiple=1))
    assert len(seen) == len(done) == 2  # the second file finished; the third never started
    leftovers = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert leftovers == []
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


@pytest.mark.parametrize("free_mb", [10, 1000])
def test_patch_writer_stops_before_the_disk_fills(tmp_path, monkeypatch, free_mb):
    """h5py failing to flush on a full disk crashed prepare (a segfault, a temporary file left): the
    writer refuses to append once under 64 MB would be left, and leaves nothing behind."""
    import types

    from afilm_cli import atomic
    from afilm_cli.data.h5 import PatchWriter

    monkeypatch.setattr(atomic.os, "statvfs", lambda p: types.SimpleNamespace(f_bavail=free_mb * 256,
                                                                            f_frsize=4096))
    patches = np.zeros((4, 8192), np.float32)
    if free_mb < 64:
        with pytest.raises(AfilmError, match="x.h5: the disk is full"):
            with PatchWriter(tmp_path / "x.h5", 8192) as writer:
                writer.append(patches, patches)
        assert list(tmp_path.iterdir()) == []
    else:
        with PatchWriter(tmp_path / "x.h5", 8192) as writer:
            writer.append(patches, patches)
        assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]


def _half_unusable_folder(libri_mini: Path, root: Path) -> tuple[list[Path], list[Path]]:
    """Six LibriSpeech files and six that prepare skips: too short, below the high rate, silent."""
    root.mkdir()
    good = []
    for i, f in enumerate(sorted((libri_mini / "test-other").rglob("*.flac"))[:6]):
        good.append(root / f"good{i}.flac")
        shutil.copy(f, good[-1])
    x, _ = sf.read(good[0], dtype="float32")
    bad = []
    for i in range(2):
        for name, sig, sr in ((f"short{i}.wav", x[:1600], 16000), (f"low{i}.wav", x[::2], 8000),
                              (f"silent{i}.wav", np.zeros(40000, np.float32), 16000)):
            sf.write(root / name, sig, sr)
            bad.append(root / name)
    return good, bad


def test_validation_is_picked_among_usable_files(libri_mini, tmp_path):
    """A folder with unusable files gave validation a file prepare then skipped ("no patches for val"),
    while the good files all went to training: only usable files are picked now, by the same seed."""
    good, bad = _half_unusable_folder(libri_mini, tmp_path / "pf")
    rec = Recipe(r=4, multiple=2)
    files = sorted(good + bad)
    unlucky = [s for s in range(8) if pick_fraction(files, 0.1, s) <= set(bad)]
    assert unlucky  # seeds whose plain pick (every file a candidate) is an unusable one
    for seed in range(8):
        _, val, _ = folder_splits(tmp_path / "pf", val_fraction=0.1, seed=seed, recipe=rec)
        assert len(val) == 1 and val[0][0] in good, seed
        again = folder_splits(tmp_path / "pf", val_fraction=0.1, seed=seed, recipe=rec)[1]
        assert again == val  # deterministic by seed
    train, val = prepare_folder(tmp_path / "pf", Recipe(r=4, multiple=2, seed=unlucky[0]),
                                out=tmp_path / "out")
    assert (val.status, val.files, val.skipped) == ("written", 1, [])
    assert (train.files, len(train.skipped)) == (5, 6)
    # with one usable file it is training's, and validation is empty (with a warning, not an error)
    for f in good[1:]:
        f.unlink()
    train, val, _ = folder_splits(tmp_path / "pf", val_fraction=0.5, seed=unlucky[0], recipe=rec)
    assert val == [] and good[0] in {p for p, _ in train}


def test_by_subfolder_validation_skips_subfolders_of_silent_files(libri_mini, tmp_path):
    """A subfolder whose files are all silent passes the header check, and used to be picked for
    validation (which then came out empty); now a subfolder needs one file that prepare would use."""
    root = tmp_path / "spk"
    files = sorted((libri_mini / "test-other").rglob("*.flac"))[:4]
    for i, f in enumerate(files):
        (root / f"good{i}").mkdir(parents=True)
        shutil.copy(f, root / f"good{i}" / f.name)
    for i in range(4):
        (root / f"quiet{i}").mkdir()
        sf.write(root / f"quiet{i}" / "a.wav", np.zeros(40000, np.float32), 16000)
    groups = sorted(p.name for p in root.iterdir())
    quiet = {g for g in groups if g.startswith("quiet")}
    unlucky = [s for s in range(12) if pick_fraction(groups, 0.25, s) & quiet]
    assert unlucky  # seeds whose plain pick holds a silent subfolder
    for seed in unlucky:
        _, val, _ = folder_splits(root, val_fraction=0.25, by_subfolder=True, seed=seed, recipe=Recipe(r=4))
        assert val and {p.parent.name for p, _ in val} <= {f"good{i}" for i in range(4)}, seed


def test_a_folder_of_usable_files_keeps_its_split(libri_mini, tmp_path):
    """Checking usability changes no split where every file is usable: existing outputs stay valid."""
    root = libri_mini / "test-other"
    rec = Recipe(r=4)
    for seed, fraction, by_subfolder in ((0, 0.1, False), (5, 0.3, False), (2, 0.2, True)):
        plain = folder_splits(root, val_fraction=fraction, by_subfolder=by_subfolder, seed=seed)
        checked = folder_splits(root, val_fraction=fraction, by_subfolder=by_subfolder, seed=seed, recipe=rec)
        assert checked == plain and plain[1]


@pytest.mark.parametrize("sr_in", [16000, 22050, 44100, 48000])
def test_usability_check_agrees_with_the_recipe_at_one_patch(sr_in, tmp_path):
    """check_usable (no resampling: the length is computed) says "too short" exactly where
    file_signals does, just below and at one patch after resampling."""
    rec = Recipe(r=4, patch=2048)
    n_min = next(n for n in range(2048 * sr_in // 16000 - 4, 10**6)
                 if len(recipe_mod.audio.resample(np.ones(n, np.float32), sr_in, 16000)) >= 2048)
    for n in (n_min - 1, n_min):
        path = tmp_path / f"{n}.wav"
        sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, n).astype(np.float32), sr_in,
                 subtype="FLOAT")
        for header_only in (True, False):
            if n < n_min:
                with pytest.raises(AfilmError, match="shorter than one patch"):
                    recipe_mod.check_usable(path, rec, header_only=header_only)
                with pytest.raises(AfilmError, match="shorter than one patch"):
                    recipe_mod.file_signals(path, rec)
            else:
                recipe_mod.check_usable(path, rec, header_only=header_only)
                assert recipe_mod.file_signals(path, rec)


def test_holding_out_every_speaker_is_refused_before_anything_is_written(vctk_mini, tmp_path):
    rec = Recipe(r=4, stride=8192, sam=1.0, degrade="subsample", multiple=1)
    every = sorted(p.name for p in (vctk_mini / "wav48").iterdir())
    with pytest.raises(AfilmError, match=r"every speaker of the corpus \(13\) is held out for "
                       "validation by --val-speakers: no training speakers are left"):
        prepare_vctk(vctk_mini, rec, split="multi", val_speakers=every, out=tmp_path / "multi")
    assert not (tmp_path / "multi").exists()
    # single: a copy holding only the reference validation files of p225
    spk = tmp_path / "corpus" / "wav48" / "p225"
    spk.mkdir(parents=True)
    shutil.copy(vctk_mini / "wav48" / "p225" / "p225_001.wav", spk / "p225_355.wav")
    with pytest.raises(AfilmError, match="every p225 file of the corpus .* no training files are left"):
        prepare_vctk(tmp_path / "corpus", Recipe(r=4), out=tmp_path / "single")
    assert not (tmp_path / "single").exists()


def test_release_picks_the_layout_where_both_are_there_and_the_choice_is_printed(vctk_mini, vctk092, tmp_path,
                                                                                  capsys):
    both = tmp_path / "both"
    both.mkdir()
    (both / "VCTK-Corpus").symlink_to(vctk_mini)  # sorted first: it used to win whatever --release said
    (both / "VCTK-Corpus-0.92").symlink_to(vctk092)
    old, new = both / "VCTK-Corpus" / "wav48", both / "VCTK-Corpus-0.92" / "wav48_silence_trimmed"
    assert find_layout(both).audio_dir == new  # 0.92 unless asked
    assert find_layout(both, release="0.80").audio_dir == old
    with pytest.raises(AfilmError, match=r"--release 0\.92: no wav48_silence_trimmed/ folder under .*found "
                       "the VCTK 0.80 layout in .*wav48; leave --release out to use it"):
        find_layout(vctk_mini, release="0.92")
    (res, *_) = prepare_vctk(both, Recipe(r=4, multiple=1), out=tmp_path / "a")
    assert f"using the VCTK 0.92 layout in {new} (mic1 files); not the VCTK 0.80 layout in {old} " \
           "(--release 0.80 picks it)" in capsys.readouterr().err
    # the CLI: --release without --download chooses; --url / --sha256 / --mic that do nothing say so
    proc = run_cli("prepare", "vctk", "--root", str(both), "--release", "0.80", "--url", "http://127.0.0.1:1/x.zip",
                   "--sha256", "0" * 64, "--mic", "mic2", "--r", "4", "--multiple", "1",
                   "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning: --url and --sha256 apply only with --download: ignored" in proc.stderr
    assert "warning: --mic mic2 applies to VCTK 0.92" in proc.stderr
    assert f"using the VCTK 0.80 layout in {old}; not the VCTK 0.92 layout in {new}\n" in proc.stderr
    with h5py.File(tmp_path / "b" / "vctk-single-r4-decimate-train.h5", "r") as f:
        assert json.loads(f.attrs["split"])["version"] == "0.80"


def test_missing_mic_files_name_the_mic_asked_for(vctk092, tmp_path):
    spk = tmp_path / "wav48_silence_trimmed" / "p226"
    spk.mkdir(parents=True)
    shutil.copy(next((vctk092 / "wav48_silence_trimmed" / "p226").glob("*_mic1.flac")), spk)
    with pytest.raises(AfilmError, match=r"no speaker folders with pNNN_MMM_mic2\.flac files \(VCTK 0\.92 "
                       r"layout, --mic mic2; there are mic1 files: --mic mic1 uses them\)") as exc:
        list_speakers(find_layout(tmp_path, "mic2"))
    assert "mic1.flac" not in str(exc.value)


def test_run_prepare_checks_its_plans_before_writing(libri_mini, tmp_path):
    """What a dataset plugin can hand run_prepare: each mistake is one AfilmError, and nothing, not even
    the output folder, is made."""
    from afilm_cli.data import cli
    from afilm_cli.data.recipe import SplitPlan

    files = [(p, "spk") for p in sorted((libri_mini / "train-clean-100").glob("*.flac"))[:2]]
    out = tmp_path / "dX"
    recipe = Recipe(r=4, multiple=1)
    for plans, match in (
            ([], r"nothing to prepare: expected one 'train' SplitPlan and at most one 'val', got none"),
            ([SplitPlan("val", out / "c-val.h5", files)], r"got \['val'\]"),
            ([SplitPlan("train", out / "mycorpus.h5", files)],
             r"dX/mycorpus.h5: a training output must be named <stem>-train.h5, and its validation file "
             r"<stem>-val.h5 beside it"),
            ([SplitPlan("train", out / "a-train.h5", files), SplitPlan("val", out / "b-val.h5", files)],
             r"b-val.h5: the validation output of .*a-train.h5 must be .*a-val.h5"),
            ([SplitPlan("train", out / "a-train.h5", [])], r"^no audio files found for the training split"),
            ([SplitPlan("train", out / "a-train.h5", []), SplitPlan("val", out / "a-val.h5", files)],
             r"no files for the training split \(all 2 went to validation\)")):
        with pytest.raises(AfilmError, match=match):
            cli.run_prepare(recipe, plans, split_info={})
        assert not out.exists()
    for root, match in ((tmp_path / "nowhere", "nowhere: no such folder"),
                        (tmp_path, f"^{tmp_path}: no audio files found$")):
        with pytest.raises(AfilmError, match=match):
            cli.run_prepare(recipe, [SplitPlan("train", out / "a-train.h5", [])], split_info={}, root=root)
        assert not out.exists()
    # a validation plan without files is dropped: the training file alone is written
    res = cli.run_prepare(recipe, [SplitPlan("train", out / "a-train.h5", files),
                                   SplitPlan("val", out / "a-val.h5", [])], split_info={})
    assert [r.part for r in res] == ["train"] and sorted(p.name for p in out.iterdir()) == ["a-train.h5"]


def test_prepare_folder_on_an_empty_folder_makes_no_output_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("prepare", "folder", "empty", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2 and "empty: no audio files (looked for" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_patch_length_the_built_in_networks_cannot_take_is_warned_about(vctk_mini, tmp_path):
    """--patch 1000 was written without a word, and 'afilm train' refused it only after the whole
    corpus was prepared; it stays allowed (a plugin's model may take it), with one warning line."""
    from afilm_cli.models import describe_model
    from afilm_cli.registry import MODELS

    networks = [name for name in MODELS.names() if name != "spline"]  # the baseline takes any length
    assert {name: describe_model(name)["length_multiple"] for name in networks} == {
        name: recipe_mod.MODEL_LENGTH_MULTIPLE for name in networks}
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in sorted((vctk_mini / "wav48" / "p225").glob("*.wav"))[:2]:
        shutil.copy(f, corpus / f.name)
    proc = run_cli("prepare", "folder", str(corpus), "--r", "4", "--patch", "1000", "--multiple", "1",
                   "--val-fraction", "0", "--out", "o", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning = ("warning: --patch 1000 is not a multiple of 256: the built-in networks (afilm, tfilm, their "
               "presets and the bundled models) cannot train on it ('afilm train' refuses it); nearest "
               "valid: 768 or 1024 (a plugin model may take 1000)")
    assert proc.stderr.splitlines().count(warning) == 1
    with PatchFile(tmp_path / "o" / "corpus-r4-decimate-train.h5") as pf:
        assert pf.patch == 1000
    proc = run_cli("prepare", "folder", str(corpus), "--r", "4", "--patch", "1024", "--multiple", "1",
                   "--val-fraction", "0", "--out", "o2", cwd=tmp_path)
    assert proc.returncode == 0 and "--patch" not in proc.stderr
    # vctk warns too, before anything else (a download, a refused root)
    proc = run_cli("prepare", "vctk", "--root", str(tmp_path / "none"), "--r", "2", "--patch", "130",
                   cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.splitlines()[0] == (
        "warning: --patch 130 is not a multiple of 256: the built-in networks (afilm, tfilm, their presets "
        "and the bundled models) cannot train on it ('afilm train' refuses it); nearest valid: 256 (a "
        "plugin model may take 130)")
    # the lengths suggested are ones --r divides too
    assert recipe_mod.patch_warning(Recipe(r=3, patch=1002)).endswith(
        "nearest valid: 768 or 1536 (a plugin model may take 1002)")
    assert recipe_mod.patch_warning(Recipe(r=4, patch=8192)) is None


def test_a_patch_file_held_open_for_writing_elsewhere_is_said_so(libri_mini, tmp_path):
    """HDF5 locks a file open for writing: another process reading it fails with 'unable to lock file'.
    prepare said the (good) file 'is not a readable HDF5 file; use --force to rebuild it', and train
    'not a readable HDF5 file (...)': both now say another process holds it, and what to do."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in sorted(libri_mini.rglob("*.flac"))[:2]:
        shutil.copy(f, corpus / f.name)
    args = ("prepare", "folder", str(corpus), "--r", "4", "--patch", "2048", "--multiple", "1",
            "--val-fraction", "0", "--out", str(tmp_path / "d"))
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    out = tmp_path / "d" / "corpus-r4-decimate-train.h5"
    hold = "import h5py, sys, time; f=h5py.File(sys.argv[1], 'a'); print('open', flush=True); time.sleep(99)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        again = run_cli(*args, cwd=tmp_path)
        assert again.returncode == 2, again.stderr
        assert "another process has it open for writing" in again.stderr
        assert "not a readable" not in again.stderr
        train = run_cli("train", "--model", "afilm_tiny", "--train", str(out), "--max-steps", "1",
                        "--out", str(tmp_path / "run"), cwd=tmp_path)
        assert train.returncode == 2, train.stderr
        assert "another process has it open for writing" in train.stderr
        assert "not a readable" not in train.stderr and not (tmp_path / "run").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("name", ["a/b", "/abs/x", ".."])
def test_a_name_that_is_a_path_is_refused_before_anything_is_written(libri_mini, tmp_path, name):
    """--name a/b wrote into <out>/a/ (where 'afilm train --data-dir <out>' does not look), and --name /x
    outside --out altogether."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(sorted(libri_mini.rglob("*.flac"))[0], corpus / "one.flac")
    name = str(tmp_path / "abs" / "x") if name.startswith("/") else name
    proc = run_cli("prepare", "folder", str(corpus), "--name", name, "--patch", "2048", "--val-fraction", "0",
                   "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "not a path" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "abs").exists()
    assert not list(tmp_path.glob("*.h5"))


def test_ctrl_c_leaves_no_output_folder_the_run_made(libri_mini, tmp_path, monkeypatch):
    """The partial file was removed on Ctrl-C, but the --out folder (and its parents) the run had made
    stayed behind, empty; a refused run already took them out."""
    import signal

    real, seen = recipe_mod.file_signals, []

    def file_signals(path, rec):
        seen.append(path)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the second file is worked on
        return real(path, rec)

    monkeypatch.setattr(recipe_mod, "file_signals", file_signals)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in sorted(libri_mini.rglob("*.flac"))[:4]:
        shutil.copy(f, corpus / f.name)
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "mine.txt").write_text("the user's")
    with pytest.raises(KeyboardInterrupt):
        prepare_folder(corpus, Recipe(r=4, multiple=1, patch=2048), val_fraction=0.0,
                       out=tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
    with pytest.raises(KeyboardInterrupt):  # a folder that was there before stays, with what it held
        seen.clear()
        prepare_folder(corpus, Recipe(r=4, multiple=1, patch=2048), val_fraction=0.0, out=tmp_path / "kept")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["mine.txt"]


def test_stderr_on_a_pipe_has_no_bar_left_in_it(vctk_mini, tmp_path):
    """rich's progress bar, stopped on a stderr that is no terminal, printed each split's final render
    (a 40-character bar, 'train ━━━…━ 2/2 files 0:00:00': the summary table has those numbers) above
    the closing lines and the error of a training split without patches, and a blank line where every
    output was kept. The real CLI, its stderr a pipe: the lines are the warnings, notes and errors only."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("p225_001.wav", "p225_002.wav", "p225_003.wav"):
        shutil.copy(vctk_mini / "wav48" / "p225" / name, src / name)
    (src / "zz.wav").write_bytes(b"not audio")
    args = ("prepare", "folder", str(src), "--r", "4", "--multiple", "1", "--val-fraction", "0.34",
            "--out", "o")
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    bad_file = src / "zz.wav"
    assert proc.stderr.splitlines() == [f"warning: skipped {bad_file}: cannot read audio (Error opening "
                                        f"'{bad_file}': Format not recognised.)"], proc.stderr
    assert "src-r4-decimate-train.h5" in proc.stdout  # the summary table
    proc = run_cli(*args, cwd=tmp_path)  # every output kept
    assert proc.returncode == 0, proc.stderr
    kept = [f"o/src-r4-decimate-{part}.h5 already exists with this recipe: skipped (--force rebuilds it)"
            for part in ("train", "val")]
    assert proc.stderr.splitlines() == kept, proc.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_bytes(b"not audio")
    proc = run_cli("prepare", "folder", str(bad), "--val-fraction", "0", "--out", "o2", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["warning", "warning", "afilm"], proc.stderr
    assert lines[-1].startswith("afilm: error: no patches for train: 1 of 1 files were skipped"), proc.stderr


PATCH_1000 = ("warning: --patch 1000 is not a multiple of 256: the built-in networks (afilm, tfilm, their "
              "presets and the bundled models) cannot train on it ('afilm train' refuses it); nearest valid: "
              "768 or 1024 (a plugin model may take 1000)")


def test_a_patch_length_the_built_in_networks_cannot_take_is_warned_about_for_every_dataset_once(
        vctk_mini, tmp_path, capsys, plugin_site):
    """Only vctk and folder warned, each from its own command: a plugin dataset with a --patch option
    (the documented example, installed as pip would) prepared --patch 1000 without a word, as did the
    library's prepare_folder. run_prepare now says it for every dataset, once a run; vctk, which says it
    before a download, is not repeated by run_prepare."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in sorted((vctk_mini / "wav48" / "p225").glob("*.wav"))[:3]:
        shutil.copy(f, corpus / f.name)
    env = {"PYTHONPATH": str(plugin_site), "AFILM_DISABLE_PLUGINS": "0"}
    proc = run_cli("prepare", "mycorpus", str(corpus), "--patch", "1000", "--multiple", "1", "--out", "p",
                   cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines().count(PATCH_1000) == 1, proc.stderr
    with PatchFile(tmp_path / "p" / "mycorpus-r4-decimate-train.h5") as pf:
        assert pf.patch == 1000
    proc = run_cli("prepare", "mycorpus", str(corpus), "--patch", "1024", "--multiple", "1", "--out", "p2",
                   cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "--patch" not in proc.stderr, proc.stderr
    # vctk: said first (before a download would start), and not again when its plans run
    root = tmp_path / "vctk" / "wav48" / "p225"
    root.mkdir(parents=True)
    for f in sorted(corpus.iterdir()):
        shutil.copy(f, root / f.name)
    proc = run_cli("prepare", "vctk", "--root", str(tmp_path / "vctk"), "--patch", "1000", "--multiple", "1",
                   "--out", "v", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == PATCH_1000 and lines.count(PATCH_1000) == 1, proc.stderr
    assert (tmp_path / "v" / "vctk-single-r4-decimate-train.h5").is_file()
    # the library, in one process: every run says it (nothing remembered between runs), once
    capsys.readouterr()
    for out in ("lib1", "lib2"):
        prepare_folder(corpus, Recipe(r=4, patch=1000, multiple=1), val_fraction=0.0, out=tmp_path / out)
        assert capsys.readouterr().err.splitlines().count(PATCH_1000) == 1
    prepare_folder(corpus, Recipe(r=4, patch=1024, multiple=1), val_fraction=0.0, out=tmp_path / "lib3")
    assert "--patch" not in capsys.readouterr().err


def test_the_summary_never_splits_a_path_on_an_80_column_pipe(vctk_mini, tmp_path):
    """The summary table folded the --out folder in its title and each file name in its output column
    at 80 columns (stdout a pipe), so a script reading it got a path broken over lines. The real CLI
    with COLUMNS=80 and a long --out and --name: the figures stay in a table that fits, and each output
    is one line, 'train: PATH', whole."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in sorted((vctk_mini / "wav48" / "p225").glob("*.wav"))[:3]:
        shutil.copy(f, corpus / f.name)
    out = tmp_path / "a-rather-long-output-folder" / "that-keeps-going" / "prepared-speech-data-2024"
    name = "speech_corpus_with_a_long_descriptive_name"
    args = ("prepare", "folder", str(corpus), "--r", "4", "--multiple", "1", "--val-fraction", "0.34",
            "--out", str(out), "--name", name)
    paths = {part: out / f"{name}-r4-decimate-{part}.h5" for part in ("train", "val")}
    for rerun in (False, True):  # written, then kept
        proc = run_cli(*args, cwd=tmp_path, env={"COLUMNS": "80"})
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert f"train: {paths['train']}" in lines and f"val:   {paths['val']}" in lines, proc.stdout
        table = [line for line in lines if not line.startswith(("train:", "val:"))]
        assert table and all(len(line.rstrip()) <= 80 for line in table), proc.stdout
        rows = {cells[0]: cells[1:] for line in table if line.startswith("│")
                for cells in [[c.strip() for c in line.strip("│").split("│")]]}
        assert set(rows) == {"train", "val"}, proc.stdout  # one line a split: nothing folded
        assert "hours: audio used; seconds: time taken to prepare it" in map(str.rstrip, lines)  # not audio
        with PatchFile(paths["train"]) as pf:
            patches = len(pf)
        if rerun:
            assert rows["train"] == ["-", "-", "-", "-", str(patches), "-", "existed"], proc.stdout
        else:
            files, skipped, speakers, hours, n, seconds, status = rows["train"]
            assert (files, skipped, speakers, n, status) == ("2", "0", "1", str(patches), "written")
            assert float(hours) > 0 and float(seconds) >= 0


def test_a_split_that_sam_left_without_patches_says_so(vctk_mini, tmp_path):
    """Every file used holds a patch at least: a split without any was emptied by --sam, not by files
    "shorter than one patch", which the message said of files as long as 8 s."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(vctk_mini / "wav48" / "p225" / "p225_001.wav", corpus / "a.wav")  # 2 s: 7 patches at most
    (corpus / "b.wav").write_bytes(b"not audio")
    proc = run_cli("prepare", "folder", str(corpus), "--sam", "0.001", "--val-fraction", "0",
                   "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last == ("afilm: error: no patches for train: 1 of 2 files were skipped and --sam 0.001 kept none "
                    "of the patches of the 1 usable file"), proc.stderr
    assert "shorter" not in last and "Traceback" not in proc.stderr


def test_a_forced_rerun_whose_validation_gives_no_patches_leaves_no_old_val_file(vctk_mini, tmp_path):
    """--force with a recipe under which the validation files give no patch (here a patch longer than
    both): the earlier run's -val.h5, of another patch length, was left beside the new train file, for
    'afilm train' to pair with it."""
    out = tmp_path / "out"
    args = ("prepare", "vctk", "--root", str(vctk_mini), "--val-fraction", "0.2", "--seed", "7",
            "--multiple", "1", "--out", str(out))
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    paths = default_output_paths("vctk-single", 4, "decimate", out=out)
    with PatchFile(paths["val"]) as pf:
        assert pf.recipe["sources"] == ["p225/p225_001.wav", "p225/p225_009.wav"]  # 2.1 and 5.6 s
    proc = run_cli(*args, "--patch", "90112", "--force", cwd=tmp_path)  # 5.6 s at 16 kHz
    assert proc.returncode == 0, proc.stderr
    assert "vctk-single-r4-decimate-val.h5 not written" in proc.stderr
    assert f"removed {paths['val']}: it came from an earlier run" in proc.stderr
    assert not paths["val"].exists()
    with PatchFile(paths["train"]) as pf:
        assert pf.patch == 90112


def test_another_folder_of_the_same_name_is_never_taken_for_the_one_prepared(vctk_mini, tmp_path):
    """Two folders named alike, holding files named alike, into one --out: the second run said 'already
    exists with this recipe: skipped' and left the first folder's patches under its name."""
    a, b = tmp_path / "a" / "clips", tmp_path / "b" / "clips"
    for folder, speaker in ((a, "p225"), (b, "p226")):
        folder.mkdir(parents=True)
        for n in (1, 2, 3):
            shutil.copy(vctk_mini / "wav48" / speaker / f"{speaker}_00{n}.wav", folder / f"{n}.wav")
    assert run_cli("prepare", "folder", "a/clips", "--out", "o", cwd=tmp_path).returncode == 0
    proc = run_cli("prepare", "folder", "b/clips", "--out", "o", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"afilm: error: o/clips-r4-decimate-train.h5 was prepared from the files in {a}, not {b}; use "
        "--force to rebuild it from these, or another --out to keep both")
    forced = run_cli("prepare", "folder", "b/clips", "--out", "o", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    with PatchFile(tmp_path / "o" / "clips-r4-decimate-train.h5") as pf:
        assert pf._f.attrs["source_root"] == str(b)
    again = run_cli("prepare", "folder", "b/clips", "--out", "o", cwd=tmp_path)  # the same folder: kept
    assert again.returncode == 0 and "already exists with this recipe: skipped" in again.stderr


def test_skipped_files_are_recorded_as_the_sources_are(vctk_mini, tmp_path):
    """The 'skipped' attribute held each path as typed (relative to the shell's folder then, meaningless
    from anywhere else), where 'sources' beside it is relative to the corpus folder."""
    corpus = tmp_path / "corpus"
    (corpus / "spk").mkdir(parents=True)
    shutil.copy(vctk_mini / "wav48" / "p225" / "p225_001.wav", corpus / "spk" / "a.wav")
    (corpus / "spk" / "b.wav").write_bytes(b"not audio")
    proc = run_cli("prepare", "folder", "corpus", "--val-fraction", "0", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "out" / "corpus-r4-decimate-train.h5", "r") as f:
        assert json.loads(f.attrs["sources"]) == ["spk/a.wav"]
        assert json.loads(f.attrs["skipped"]) == ["spk/b.wav"]


def test_a_folder_in_the_place_of_an_output_is_said_to_be_one(vctk_mini, tmp_path):
    """It was called 'not a readable HDF5 file; use --force to rebuild it', and --force then failed."""
    out = tmp_path / "out"
    (out / "vctk-single-r4-decimate-train.h5").mkdir(parents=True)
    for extra in ((), ("--force",)):
        proc = run_cli("prepare", "vctk", "--root", str(vctk_mini), "--out", str(out), *extra, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        last = proc.stderr.splitlines()[-1]
        assert "vctk-single-r4-decimate-train.h5" in last and "folder" in last and "use --force" not in last
