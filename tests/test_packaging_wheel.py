"""The wheel a user installs, built from this checkout by pip (as `pip install .` builds it): it carries
what the installed commands read at run time (the bundled model and its card, the demo clip and its
attribution, the kernels package, the licence) and nothing of the checkout's own (tests, benchmarks);
installed on its own, away from the checkout, the CLI finds all of it there.

About 20 s on a 2-core CPU (the build, an install into a folder, one demo run). Skipped only where pip
cannot fetch the build backend (hatchling), that is where no package index is reachable; the quick
start's `pip install -e .` needs it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("afilm_cli", "kernels")
# what the commands open at run time besides Python modules (a missing one fails only when used)
RUNTIME_DATA = (
    "afilm_cli/pretrained/afilm_speech_r4.pt",
    "afilm_cli/pretrained/afilm_speech_r4.md",
    "afilm_cli/pretrained/afilm_speech_r2.pt",
    "afilm_cli/pretrained/afilm_speech_r2.md",
    "afilm_cli/assets/ATTRIBUTION.md",
    "afilm_cli/assets/demo/1998-15444-0001.flac",
    "kernels/__init__.py",
    "kernels/block_film.py",
    "kernels/reference.py",
    "kernels/benchmark.py",
)
NO_INDEX = ("No matching distribution found for hatchling", "Could not find a version that satisfies "
            "the requirement hatchling")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)]
    proc = subprocess.run(build, capture_output=True, text=True, timeout=300)
    said = proc.stdout + proc.stderr
    if proc.returncode != 0 and any(s in said for s in NO_INDEX):
        pytest.skip("pip cannot fetch the build backend (hatchling): no package index reachable")
    assert proc.returncode == 0, said[-3000:]
    (whl,) = out.glob("afilm-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel alone in a folder (no dependencies: this interpreter's torch etc. serve)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    return target


def _names(whl: Path) -> set[str]:
    with zipfile.ZipFile(whl) as z:
        return set(z.namelist())


def test_wheel_holds_the_packages_and_their_data(wheel):
    names = _names(wheel)
    missing = [f for f in RUNTIME_DATA if f not in names]
    assert not missing, f"not in the wheel: {missing}"
    on_disk = {p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert not on_disk - names, f"package files not in the wheel: {sorted(on_disk - names)}"


def test_wheel_holds_nothing_of_the_checkout(wheel):
    tops = {n.split("/")[0] for n in _names(wheel)}
    info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - info == set(PACKAGES), sorted(tops)
    assert len(info) == 1


def test_wheel_metadata(wheel):
    names = _names(wheel)
    (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    assert any(n.startswith(dist_info) and n.endswith("/LICENSE") for n in names), "no LICENSE"
    with zipfile.ZipFile(wheel) as z:
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
        metadata = z.read(f"{dist_info}/METADATA").decode()
    assert "afilm = afilm_cli.entry:run" in entry_points
    assert "Requires-Python: >=3.10" in metadata
    for dep in ("torch", "typer", "soundfile", "h5py", "scipy"):
        assert f"Requires-Dist: {dep}" in metadata, dep


def _run(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    # the installed copy first on the path; the checkout is neither the working folder nor on the path
    env = {**os.environ, "PYTHONPATH": str(site), "AFILM_DISABLE_PLUGINS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_installed_wheel_runs_away_from_the_checkout(installed, tmp_path):
    proc = _run(["-c", "import afilm_cli, kernels; print(afilm_cli.__file__); print(kernels.__file__)"],
                installed, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert all(Path(line).is_relative_to(installed) for line in proc.stdout.split()), proc.stdout

    proc = _run(["-m", "afilm_cli", "models", "--info", "afilm_speech_r4"], installed, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1,505,762" in proc.stdout and "Recipe" in proc.stdout  # the config and the model card

    proc = _run(["-m", "afilm_cli", "demo", "--out", "demo", "--device", "cpu"], installed, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(installed / "afilm_cli" / "pretrained" / "afilm_speech_r4.pt") in proc.stderr
    written = sorted(p.name for p in (tmp_path / "demo").iterdir() if not p.name.startswith("."))
    stem = "1998-15444-0001"
    assert written == sorted([f"{stem}.hr.wav", f"{stem}.lr.wav", f"{stem}.pr.wav", f"{stem}.png",
                              "metrics.csv", "summary.json"])
