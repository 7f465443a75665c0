"""Data preparation throughput (seconds of audio per second) and peak RSS, on one CPU core.

Runs `prepare_vctk` on ../shared/data/vctk-mini and on a synthetic corpus 20x larger (every file
linked 20 times under new names in /tmp), each in a fresh child process pinned to one core with
one BLAS/OpenMP thread, and records the peak resident memory (VmHWM) of that child. Memory must not
grow with the corpus: the 20x run should peak at about the same RSS as the 1x run.

    python benchmarks/bench_prepare.py [--out benchmarks/results] [--copies 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VCTK_MINI = ROOT.parent / "shared" / "data" / "vctk-mini"
RECIPES = {  # name -> (split, Recipe kwargs)
    "multi (subsample, stride 8192, sam 0.25)":
        ("multi", {"stride": 8192, "sam": 0.25, "degrade": "subsample"}),
    "single-recipe on all speakers (decimate, stride 4096, sam 1.0)":
        ("multi", {"stride": 4096, "sam": 1.0, "degrade": "decimate"}),
}


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(root: str, split: str, kwargs: str, out: str) -> None:
    """Runs in a fresh process: prepare once, print one JSON line."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from afilm_cli.data import cli
    from afilm_cli.data.recipe import Recipe
    from afilm_cli.data.vctk import prepare_vctk

    cli.print_summary = lambda results: None  # keep the benchmark output clean
    rss_before = peak_rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    results = prepare_vctk(root, Recipe(r=4, multiple=1, **json.loads(kwargs)), split=split, out=out,
                           val_speakers=["p226"], force=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    audio_s = sum(r.seconds_audio for r in results)
    print(json.dumps({"files": sum(r.files for r in results), "audio_seconds": round(audio_s, 2),
                      "wall_seconds": round(wall, 3), "x_realtime": round(audio_s / wall, 1),
                      "cpu_seconds": round(cpu, 3), "x_realtime_cpu": round(audio_s / cpu, 1),
                      "patches": sum(r.patches for r in results),
                      "peak_rss_mib_after_imports": round(rss_before, 1),
                      "peak_rss_mib": round(peak_rss_mib(), 1)}))


def make_synthetic(src: Path, dst: Path, copies: int) -> Path:
    """``copies`` links of every file of ``src``/wav48, under distinct names (same speakers)."""
    if dst.exists():
        shutil.rmtree(dst)
    for spk in sorted((src / "wav48").iterdir()):
        (dst / "wav48" / spk.name).mkdir(parents=True)
        for f in sorted(spk.glob("*.wav")):
            for k in range(copies):
                os.symlink(f.resolve(), dst / "wav48" / spk.name / f"{f.stem}_{k:03d}.wav")
    return dst


def run_child(root: Path, split: str, kwargs: dict, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", str(root), split, json.dumps(kwargs), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def environment() -> dict:
    import h5py
    import numpy
    import scipy
    import soundfile

    from afilm_cli import __version__
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_used": 1, "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_end": os.getloadavg(), "afilm": __version__, "numpy": numpy.__version__,
            "scipy": scipy.__version__, "h5py": h5py.__version__, "soundfile": soundfile.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    tmp = Path(tempfile.mkdtemp(prefix="afilm-bench-prepare-"))
    try:
        big = make_synthetic(VCTK_MINI, tmp / f"vctk-{args.copies}x", args.copies)
        rows = []
        for name, (split, kwargs) in RECIPES.items():
            for corpus, root in (("vctk-mini", VCTK_MINI), (f"vctk-mini x{args.copies}", big)):
                res = run_child(root, split, kwargs, tmp / "out")
                rows.append({"recipe": name, "corpus": corpus, **res})
                print(f"{name:62s} {corpus:16s} {res['audio_seconds'] / 60:7.1f} min audio "
                      f"{res['wall_seconds']:7.2f} s  {res['x_realtime']:6.1f}x real time "
                      f"(CPU time: {res['x_realtime_cpu']:6.1f}x)  "
                      f"peak RSS {res['peak_rss_mib']:7.1f} MiB", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"benchmark": "afilm prepare throughput (library prepare_vctk, r=4, one core)",
              "date": dt.date.today().isoformat(), "environment": environment(), "results": rows,
              "notes": "x_realtime = seconds of 48 kHz input audio per wall second, whole pipeline "
                       "(read, resample to 16 kHz, degrade, spline, HDF5 write); x_realtime_cpu uses "
                       "the child's CPU time instead (the machine is shared: see load_average_at_end); "
                       "peak RSS = VmHWM of the child process; the synthetic corpus links every file "
                       "20x under new names."}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"prepare-cpu-{report['date']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
