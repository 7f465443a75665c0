"""--threads: parsing, the 'auto' rule (cores no other process is busy on), and its use by training."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from afilm_cli import threads
from afilm_cli.data.h5 import PatchWriter
from afilm_cli.errors import AfilmError
from afilm_cli.train import TrainConfig, train


def test_parse_threads():
    assert threads.parse_threads("auto") == "auto" and threads.parse_threads("3") == 3
    for bad in ("0", "-1", "x", "1.5", ""):
        with pytest.raises(AfilmError, match="--threads"):
            threads.parse_threads(bad)


def test_auto_uses_the_cores_left_free(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 4)
    for busy, want in ((0, 4), (1, 3), (7, 1), (None, 4)):  # None: no /proc/loadavg
        monkeypatch.setattr(threads, "busy_elsewhere", lambda b=busy: b)
        assert threads.resolve_threads("auto", cpu) == want
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 3)
    assert threads.resolve_threads("auto", torch.device("meta")) == 4  # only CPU work is trimmed
    assert threads.resolve_threads(2, cpu) == 2
    for bad in (0, True, "2"):
        with pytest.raises(AfilmError, match="threads"):
            threads.resolve_threads(bad, cpu)


def test_busy_elsewhere_reads_the_machine():
    """A process spinning beside this one is runnable all the time: it must be counted (the count
    is >= 0 by construction, so checking only that would pass with the file misread)."""
    if not threads.LOADAVG.is_file():
        pytest.skip("no /proc/loadavg here")
    spinner = subprocess.Popen([sys.executable, "-c", "print('go', flush=True)\nwhile True: pass"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert spinner.stdout.readline() == "go\n"
        busy = threads.busy_elsewhere()
    finally:
        spinner.kill()
        spinner.wait()
    assert isinstance(busy, int) and busy >= 1, busy


def test_busy_elsewhere_leaves_out_this_process_threads(tmp_path, monkeypatch):
    """7 runnable tasks on the machine, 3 of them ours (a name with spaces and parentheses included):
    4 elsewhere. Our own count once made auto pick 1 thread on an idle machine (OpenMP's workers spin
    after every parallel op and are runnable while they do)."""
    (tmp_path / "loadavg").write_text("1.20 0.90 0.70 7/312 4242\n")
    for tid, name, state in ((1, "python", "R"), (2, "pt (main) x", "R"), (3, "omp", "S"), (4, "omp", "R")):
        (tmp_path / "task" / str(tid)).mkdir(parents=True)
        (tmp_path / "task" / str(tid) / "stat").write_text(f"{tid} ({name}) {state} 1 2 3 4 5\n")
    monkeypatch.setattr(threads, "LOADAVG", tmp_path / "loadavg")
    monkeypatch.setattr(threads, "OWN_TASKS", tmp_path / "task")
    assert threads._own_running() == 3 and threads.busy_elsewhere(samples=3) == 4
    monkeypatch.setattr(threads, "LOADAVG", tmp_path / "none")
    assert threads.busy_elsewhere() is None


def test_own_running_threads_are_counted_on_this_machine():
    import threading

    if not threads.OWN_TASKS.is_dir():
        pytest.skip("no /proc/self/task here")
    assert threads._own_running() >= 1  # the thread that reads is running
    done = threading.Event()

    def spin():  # numpy's sort releases the GIL: this thread stays runnable beside the reader
        a = np.random.default_rng(0).random(2_000_000)
        while not done.is_set():
            np.sort(a)

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        counts = [threads._own_running() for _ in range(50)]
    finally:
        done.set()
        worker.join()
    assert max(counts) >= 2


def test_train_sets_records_and_restores_threads(tmp_path):
    t = np.arange(2048) / 16000
    hr = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in (220, 440, 880, 1760)]).astype(np.float32)
    attrs = {"r": 4, "sr": 16000, "patch": 2048, "stride": 2048, "degrade": "decimate", "sam": 1.0, "seed": 0}
    with PatchWriter(tmp_path / "s-train.h5", 2048, attrs=attrs) as w:
        w.append(np.repeat(hr[:, ::4], 4, axis=1), hr)
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = TrainConfig(model="afilm_tiny", train=str(tmp_path / "s-train.h5"), out=str(tmp_path / "run"),
                          epochs=1, batch_size=2, device="cpu", progress=False, threads=1)
        res = train(cfg, on_step=lambda step: seen.append(torch.get_num_threads()))
        assert torch.get_num_threads() == 2  # back to the caller's setting
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1]
    start = json.loads((res.out / "log.jsonl").read_text().splitlines()[0])
    assert start["type"] == "start" and start["threads"] == 1 and start["config"]["threads"] == 1


@pytest.mark.parametrize(("args", "says"), [(["train", "--threads", "0"], "--threads"),
                                            (["upsample", "none.wav", "--threads", "many"], "--threads"),
                                            (["upsample", "none.wav", "--precision", "fp16"], "'fp16'")])
def test_cli_rejects_bad_speed_options(args, says, tmp_path):
    """Refused up front, in one line, before any data or checkpoint is looked for."""
    p = subprocess.run([sys.executable, "-m", "afilm_cli", *args], cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("afilm: error:") and len(p.stderr.strip().splitlines()) == 1
    assert says in p.stderr
