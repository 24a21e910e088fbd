"""Developer sessions: `nox -s tests lint typecheck docs bench demo`."""

from __future__ import annotations

import nox

PYTHON_VERSIONS = ["3.11", "3.12", "3.13"]
PYPROJECT = nox.project.load_toml("pyproject.toml")

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False


def _install(session: nox.Session, *groups: str, extras: str = "") -> None:
    session.install("-e", f".{extras}")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


def _first_available_python() -> str | None:
    """The oldest supported Python on this machine, so one `nox -s tests` runs once."""
    import shutil

    for version in PYTHON_VERSIONS:
        if shutil.which(f"python{version}"):
            return version
    return None


@nox.session(python=_first_available_python())
def tests(session: nox.Session) -> None:
    """The test suite: unit, property and end-to-end tests against the loopback Discord."""
    _install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session(python=_first_available_python())
def faults(session: nox.Session) -> None:
    """The slow reliability suites (`-m slow`); `-- -m realtime` runs the real-time load test,
    which judges pacing and so belongs on a quiet machine, not in CI."""
    _install(session, "test")
    session.run("pytest", *(session.posargs or ["-m", "slow"]))


@nox.session(python=PYTHON_VERSIONS, name="tests-all", default=False)
def tests_all(session: nox.Session) -> None:
    """The test suite on every supported Python found on this machine."""
    _install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session(python=_first_available_python())
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=_first_available_python())
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/musicbot."""
    _install(session, "typecheck")
    session.run("mypy", "--strict", "src/musicbot")


@nox.session(python=_first_available_python())
def docs(session: nox.Session) -> None:
    """The documentation site (MkDocs) from docs/, into site/; any warning fails it."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "docs"))
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(python=_first_available_python())
def demo(session: nox.Session) -> None:
    """The offline demo against the loopback Discord (`-- --json`, `-- --scenario FILE`)."""
    session.install("-e", ".[loopback]")
    session.run("musicbot", "demo", *session.posargs)


@nox.session(python=_first_available_python())
def bench(session: nox.Session) -> None:
    """Benchmarks against baselines, side by side (`-- --quick`, `-- --only cache cpu`)."""
    _install(session, "bench", extras="[loopback]")
    session.run("python", "bench/run.py", *session.posargs)
