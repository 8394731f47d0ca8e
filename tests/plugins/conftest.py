"""Plugins tier: the CLI plus the command and rabbitmq provider plugins, and a real RabbitMQ."""

from __future__ import annotations

import shutil

import pytest

from tests.plugins.local_broker import BIN, LocalBroker


@pytest.fixture(scope="session")
def local_broker(plugins_ready, tmp_path_factory):
    if not (BIN / "rabbitmq-server").exists() or not shutil.which("epmd"):
        pytest.skip("rabbitmq-server not installed (apt-get install rabbitmq-server)")
    broker = LocalBroker(tmp_path_factory.mktemp("rabbit"))
    try:
        yield broker.start()
    finally:
        broker.stop()
