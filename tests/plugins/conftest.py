"""Plugins tier: the CLI plus the command and rabbitmq provider plugins, and a real RabbitMQ."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from edd_infra.workspace import cli_dir
from tests.plugins.local_broker import BIN, LocalBroker

PLUGINS = (("command", "1.2.1"), ("rabbitmq", "3.5.3"))


def missing_plugins(cli) -> list[str]:
    out = subprocess.run([str(cli / "pulumi"), "plugin", "ls"], capture_output=True, text=True,
                         env=dict(os.environ, PULUMI_SKIP_UPDATE_CHECK="true")).stdout
    have = {tuple(line.split()[:3]) for line in out.splitlines() if line.strip()}
    return [f"resource {n} {v}" for n, v in PLUGINS if (n, "resource", v) not in have]


@pytest.fixture(scope="session")
def plugins_ready():
    cli = cli_dir()
    if cli is None:
        pytest.skip("plugins tier skipped: pulumi CLI v3.274.1 not found (make toolchain)")
    missing = missing_plugins(cli)
    if missing:
        pytest.skip("plugins tier skipped: provider plugins missing: " + ", ".join(missing)
                    + " (pulumi plugin install resource command 1.2.1; pulumi plugin install resource rabbitmq 3.5.3)")
    return cli


@pytest.fixture(scope="session")
def local_broker(plugins_ready, tmp_path_factory):
    if not (BIN / "rabbitmq-server").exists() or not shutil.which("epmd"):
        pytest.skip("plugins tier skipped: rabbitmq-server not installed (apt-get install rabbitmq-server)")
    broker = LocalBroker(tmp_path_factory.mktemp("rabbit"))
    try:
        yield broker.start()
    finally:
        broker.stop()
