"""Hardware and software facts recorded beside every benchmark figure."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from afilm_cli import __version__


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The checkout's commit, ``-dirty`` when files differ from it; None where afilm is not run from its
    own checkout (an install inside another repository would report that repository's commit)."""
    here = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=5, cwd=here)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != here.parent:
            return None
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7", "--exclude=*"],
                             capture_output=True, text=True, timeout=5, cwd=here)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# environment variables that change what is measured (the kernel path, the interpreter, thread pools)
ENV_PREFIXES = ("AFILM_", "TRITON_", "OMP_", "MKL_", "CUDA_VISIBLE_DEVICES")


def system_info() -> dict[str, Any]:
    from importlib import metadata

    def version(package: str) -> str | None:
        # not `import triton`: once imported, the kernels can no longer switch its CPU interpreter on
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "numpy": version("numpy"), "scipy": version("scipy"), "h5py": version("h5py"),
        "afilm": __version__,
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
    }
