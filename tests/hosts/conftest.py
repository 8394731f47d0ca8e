"""Fixtures for the hosts tier: real Debian hosts (systemd as PID 1) over SSH.

Mark a module ``pytestmark = pytest.mark.hosts`` and ask for hosts by name:

    def test_deploy(sandbox_hosts):
        broker, worker = sandbox_hosts("broker", "worker")   # SandboxHost objects
        result = sandbox.hosts.run(broker, "systemctl is-active rabbitmq-server")
        (old,) = sandbox_hosts("old-broker", debian=12)      # another Debian release

Hosts are of the default release (``$SANDBOX_DEBIAN``, else ``sandbox.image.DEFAULT_DEBIAN``)
unless ``debian=`` names one; a name is one host, so give hosts of each release their own.

``sandbox_hosts`` boots each name once per test module (in parallel within one call)
and shuts them all down when the module ends, failed or not, so a session never holds
more hosts than its running modules need (each host's systemd takes inotify instances,
128 per user by default: a whole session's hosts at once ran out of them);
``throwaway_hosts`` does the same per test, for tests that change a host. Use ``host.name`` for the
real hostname: under pytest-xdist it carries the worker number ("broker-0").

When this machine cannot run hosts, every test using them is skipped with one
line naming what is missing and the command that provides it.
Environment: EDD_INFRA_HOSTS=0 skips the tier; EDD_INFRA_HOSTS=1 turns those
skips into failures (for CI that must run it); EDD_INFRA_KEEP_HOSTS=1 leaves the
session's hosts running for the next run to reuse (``python -m sandbox down`` stops them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

try:
    import sandbox  # noqa: F401
except ImportError:  # pytest run without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sandbox import hosts as sandbox_hosts_api
from sandbox.image import ensure_image, ensure_machine_tools


def pytest_configure(config):
    config.addinivalue_line("markers", "hosts: needs real sandbox hosts (root, systemd-nspawn, debootstrap)")


def _missing(debian: int | None = None) -> str | None:
    """Why this machine cannot run sandbox hosts of release ``debian``, with the fix; None if it can."""
    if os.environ.get("EDD_INFRA_HOSTS") == "0":
        return "EDD_INFRA_HOSTS=0 (unset it to run them)"
    if os.geteuid() != 0:
        return "not root (run the tests as root: nspawn and veth links need it)"
    try:
        ensure_machine_tools()
    except RuntimeError as error:
        return str(error)
    try:
        ensure_image(debian)
    except Exception as error:  # noqa: BLE001 - any build failure means: no hosts here
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"image cannot be built: {first} (python -m sandbox image shows the whole log)"
    return None


@pytest.fixture(scope="session")
def hosts_tier() -> None:
    """Skip (or, with EDD_INFRA_HOSTS=1, fail) unless sandbox hosts can run here; builds the image."""
    _skip_unless_ready()


def _real_name(name: str) -> str:
    """Under pytest-xdist each worker gets its own hosts: "broker" becomes "broker-0" on gw0."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"{name}-{worker.removeprefix('gw')}" if worker else name


def _factory(booted: dict):
    def get(*names: str, debian: int | None = None) -> list[sandbox_hosts_api.SandboxHost]:
        new = [n for n in names if n not in booted]
        if new:
            if debian is not None:
                _skip_unless_ready(debian)
            for name, host in zip(new, sandbox_hosts_api.boot([_real_name(n) for n in new], debian=debian)):
                booted[name] = host
        return [booted[n] for n in names]

    return get


def _skip_unless_ready(debian: int | None = None) -> None:
    """Skip (or, with EDD_INFRA_HOSTS=1, fail) when hosts of release ``debian`` (default: the
    default release) cannot run here."""
    reason = _missing(debian)
    if reason:
        message = f"hosts tier skipped: {f'Debian {debian}: ' if debian else ''}{reason}"
        if os.environ.get("EDD_INFRA_HOSTS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def sandbox_hosts(hosts_tier):
    """Factory ``sandbox_hosts(*names) -> list[SandboxHost]``: booted once per module, reused in it."""
    booted: dict = {}
    try:
        yield _factory(booted)
    finally:
        if booted and os.environ.get("EDD_INFRA_KEEP_HOSTS") != "1":
            sandbox_hosts_api.shutdown(list(booted.values()))


@pytest.fixture
def throwaway_hosts(hosts_tier):
    """Factory like ``sandbox_hosts`` whose hosts are shut down when the test ends."""
    booted: dict = {}
    try:
        yield _factory(booted)
    finally:
        if booted:
            sandbox_hosts_api.shutdown(list(booted.values()))
