"""Developer sessions. Virtualenvs are reused (a second run does not reinstall torch).

    nox                 # tests (default)
    nox -s lint kernels bench demo
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = ("-c", "constraints-cpu.txt")


def _install(session: nox.Session, extras: str = "dev") -> None:
    session.install("-e", f".[{extras}]", *CONSTRAINTS)


def _pytest(session: nox.Session, *args: str, env: dict[str, str] | None = None) -> None:
    session.run("python", "-m", "pytest", *args, *session.posargs, env=env or {})


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (the kernel tests run through the Triton interpreter on CPU)."""
    _install(session)
    _pytest(session)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def kernels(session: nox.Session) -> None:
    """Kernel tests only, through the Triton interpreter (TRITON_INTERPRET=1)."""
    _install(session)
    _pytest(session, "-m", "kernels", env={"TRITON_INTERPRET": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (pytest-benchmark) under benchmarks/."""
    _install(session)
    _pytest(session, "benchmarks", "--benchmark-only")


@nox.session
def demo(session: nox.Session) -> None:
    """The quick-start demo with the bundled model (writes afilm-demo/)."""
    session.install("-e", ".", *CONSTRAINTS)
    session.run("afilm", "demo", *session.posargs)
