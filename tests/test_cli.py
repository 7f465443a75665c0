"""The root CLI: help, version, module entry, error reporting."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from afilm_cli import __version__
from afilm_cli.main import app

COMMANDS = ["prepare", "train", "upsample", "eval", "bench", "models", "convert", "demo"]


def run_cli(*args, env=None, timeout=120, cwd=None):
    return subprocess.run([sys.executable, "-m", "afilm_cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    # the names in the first column of the Commands panel (the words alone also occur in the
    # description: "prepare data, train, upsample, evaluate, benchmark")
    panel = result.output.split("Commands")[1]
    listed = [m.group(1) for m in re.finditer(r"^│ (\w+) ", panel, re.M)]
    assert sorted(listed) == sorted(COMMANDS), listed
    # in the order of the work, where typer would list the sub-apps (prepare, convert) last
    assert listed == ["prepare", "train", "upsample", "eval", "demo", "models", "convert", "bench"], listed


def test_every_command_has_real_help():
    for name in COMMANDS:
        result = CliRunner().invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output
        assert "Not implemented" not in result.output, name


def test_help_paragraphs_are_rewrapped_to_the_terminal():
    """typer 0.29 keeps a docstring's line breaks; afilm joins each paragraph so an 80-column help
    reads as prose, not as half-lines (a first-paragraph-only check would miss it)."""
    from afilm_cli.help_format import unwrap

    assert unwrap("""One line.

        Two lines
        of prose.

        List:
        - item one
          continued
        - item two
        """) == "One line.\n\nTwo lines of prose.\n\nList:\n- item one\n  continued\n- item two"
    result = CliRunner().invoke(app, ["upsample", "--help"], env={"COLUMNS": "80"})
    text = " ".join(result.output.split())
    assert "resampled to the model's low rate (sr/r), spline-upsampled, and run through the model" in text
    lines = [line.strip() for line in result.output.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("The input is taken"))
    paragraph = lines[start:lines.index("", start)]
    # rewrapped: every line but the last of the paragraph fills most of the width
    assert len(paragraph) >= 4 and all(len(line) > 60 for line in paragraph[:-1]), paragraph


def test_help_shows_no_type_beside_a_flag():
    result = CliRunner().invoke(app, ["upsample", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "<bool>" not in result.output and "range>" not in result.output
    force = next(line for line in result.output.splitlines() if "--force" in line)
    assert "Overwrite existing outputs." in force
    assert "<int> [x>=1]" in next(line for line in result.output.splitlines() if "--batch-size" in line)


def test_version_and_module_entry():
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"afilm {__version__}"


def test_user_error_is_one_line_without_traceback(tmp_path):
    out = run_cli("upsample", str(tmp_path / "missing.wav"), "--ckpt", str(tmp_path / "none.pt"))
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("afilm: error:")
    assert "Traceback" not in out.stderr


def test_debug_env_shows_traceback(tmp_path):
    out = run_cli("upsample", str(tmp_path / "missing.wav"), "--ckpt", str(tmp_path / "none.pt"),
                  env={"AFILM_DEBUG": "1"})
    assert out.returncode != 0
    assert "Traceback" in out.stderr


def test_bad_kernel_choice_is_one_line_without_traceback(tmp_path):
    import numpy as np
    import soundfile as sf

    wav = tmp_path / "speech_4k.wav"
    sf.write(wav, np.zeros(4000, np.float32) + 0.01 * np.sin(np.arange(4000)), 4000)
    out = run_cli("upsample", str(wav), env={"AFILM_KERNEL": "bogus"}, cwd=tmp_path)  # the bundled model
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == ["afilm: error: AFILM_KERNEL must be 'triton' or 'torch', got 'bogus'"]
    assert not (tmp_path / "speech_4k.afilm.wav").exists()


def test_file_system_refusals_are_one_line(tmp_path):
    import numpy as np
    import soundfile as sf

    wav = tmp_path / "speech_4k.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(8000) / 3), 4000)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = run_cli("upsample", str(wav), "-o", str(blocker / "x.wav"), "-q", cwd=tmp_path)  # bundled model
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    want = f"afilm: error: cannot write {blocker / 'x.wav'}: {blocker} is a file, not a folder"
    assert want in out.stderr
    out = run_cli("upsample", str(wav), "-o", str(tmp_path), "-q", cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "speech_4k.afilm.wav").is_file()  # an existing folder
    out = run_cli("demo", "-o", str(blocker / "demo"), cwd=tmp_path)  # was an OSError: "Not a directory"
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    want = f"afilm: error: cannot create folder {blocker / 'demo'}: {blocker} is a file"
    assert out.stderr.splitlines() == [want]


def test_a_cut_off_checkpoint_is_one_whole_line(tmp_path):
    """PyTorch's message for a truncated .pt ran to a paragraph, which the error line cut mid-sentence
    ("... there is a high likelihood that your checkpoint file is)")."""
    import numpy as np
    import soundfile as sf
    import torch

    from afilm_cli.checkpoint import make_checkpoint, save_checkpoint
    from afilm_cli.models import create_model

    wav = tmp_path / "speech_4k.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(8000) / 3), 4000)
    torch.manual_seed(0)
    whole = save_checkpoint(tmp_path / "tiny.pt", make_checkpoint(
        create_model("afilm_tiny"), {"r": 4, "sr": 16000, "degrade": "decimate", "patch": 8192}))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = run_cli("upsample", str(wav), "--ckpt", str(cut), "-q", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [f"afilm: error: {cut}: not a readable afilm checkpoint (truncated "
                                       "or corrupt: failed reading zip archive: failed finding central "
                                       "directory)"]
    assert not (tmp_path / "speech_4k.afilm.wav").exists()


def test_ctrl_c_in_any_command_says_interrupted(monkeypatch, capsys):
    """Typer turns a KeyboardInterrupt inside a command into exit code 130 without a word."""
    import afilm_cli.models
    from afilm_cli.main import main

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(afilm_cli.models, "describe_model", ctrl_c)
    monkeypatch.setattr(sys, "argv", ["afilm", "models"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 130 and "afilm: interrupted" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train"], ["prepare", "vctk"], ["prepare", "folder", "."]])
def test_a_negative_seed_is_refused_before_any_work(command, tmp_path):
    out = run_cli(*command, "--seed", "-1", cwd=tmp_path)
    assert out.returncode == 2 and "--seed" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []


def test_user_error_check_survives_a_foreign_kernels_module(monkeypatch):
    """Hugging Face's `kernels` distribution has the same top-level name: with it loaded, telling a
    user error from a bug must not raise AttributeError."""
    import types

    from afilm_cli.errors import AfilmError
    from afilm_cli.main import _user_error

    monkeypatch.setitem(sys.modules, "kernels", types.ModuleType("kernels"))
    assert _user_error(AfilmError("x")) and not _user_error(ValueError("x"))


def test_ctrl_c_while_the_cli_loads_is_one_line(tmp_path):
    """A Ctrl-C in the first second (torch and scipy importing) printed a 40-line traceback."""
    code = ("import builtins\n"
            "real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name == 'afilm_cli.main':\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "from afilm_cli.entry import run\n"
            "run()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert (out.returncode, out.stderr) == (130, "afilm: interrupted\n")


def test_the_installed_command_goes_through_the_entry_point():
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "afilm"]
    assert script.value == "afilm_cli.entry:run"


def test_a_foreign_kernels_package_is_named_in_one_line(tmp_path):
    """afilm installs a top-level 'kernels', as Hugging Face's 'kernels' does: where that one is found
    instead, the error says so rather than an AttributeError deep in a model."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("def get_kernel(name):\n    return None\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "AFILM_DISABLE_PLUGINS": "1"}
    out = subprocess.run([sys.executable, "-m", "afilm_cli", "models"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env=env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        f"afilm: error: the Python package 'kernels' at {tmp_path / 'kernels' / '__init__.py'} is not "
        "afilm's: another distribution (Hugging Face's 'kernels'?) installs the same name; install afilm "
        "in an environment without it"]
