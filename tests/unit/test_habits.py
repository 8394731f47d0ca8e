"""The habits `make test` keeps: ruff over the project, mypy over edd_infra/, shellcheck over
every host script the program renders (tests/unit/test_shellcheck.py). The tools are pinned in
requirements.txt and installed into the virtualenv by `make toolchain`; without them these
tests skip with one line saying so."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def tool(name: str) -> str:
    """A check tool from this virtualenv (where `make toolchain` installs the pinned one)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"{name} not installed in this virtualenv (make toolchain; pinned in requirements.txt)")
        return found
    return str(path)


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_check_finds_nothing():
    # The rule set and why: pyproject.toml, [tool.ruff.lint].
    result = run(tool("ruff"), "check", "--no-cache", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_no_type_error_in_the_package():
    # Configuration (files, the pydantic plugin): pyproject.toml, [tool.mypy]. The cache stays
    # out of the work tree.
    from edd_infra.workspace import CACHE

    result = run(tool("mypy"), "--cache-dir", str(CACHE / "mypy"), "--no-error-summary")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_every_file_as_it_is():
    # The style (120 columns, double quotes): pyproject.toml, [tool.ruff.format].
    result = run(tool("ruff"), "format", "--no-cache", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr + "\n(run `ruff format .`)"
