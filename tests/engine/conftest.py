"""Fixtures for tiers that drive the real pulumi CLI: a throw-away project dir and backend."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from edd_infra.workspace import CLI_VERSION, ProjectStack, cli_dir

PASSPHRASE = "edd-infra-test-passphrase"


@pytest.fixture(scope="session")
def pulumi_cli() -> Path:
    directory = cli_dir()
    if directory is None:
        pytest.skip(f"pulumi CLI {CLI_VERSION} not found (make toolchain)")
    return directory


@pytest.fixture
def new_stack(pulumi_cli, tmp_path):
    """A fresh stack of this project in its own directory and file backend."""

    def make(config: dict[str, object] | None = None) -> ProjectStack:
        backend = tmp_path / "state"
        backend.mkdir(exist_ok=True)
        stack = ProjectStack(f"t{uuid.uuid4().hex[:8]}", tmp_path, f"file://{backend}", PASSPHRASE)
        stack.set_plain(config or {})
        return stack

    return make
