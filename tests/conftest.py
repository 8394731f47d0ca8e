"""Test tiers and the closing tier summary.

Every test belongs to one tier (unit by default, or the marker it carries). A tier whose
requirement is missing skips with one line naming what is missing and the command that
provides it; `make test` ends with one line per tier: ran, or skipped and why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edd_infra.workspace import cli_dir  # noqa: E402

TIERS = ("unit", "engine", "plugins", "hosts")

_outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
_skip_reasons: dict[str, set[str]] = defaultdict(set)
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
        pytest.skip("pulumi CLI v3.274.1 not found (make toolchain)")
    missing = missing_plugins(cli)
    if missing:
        pytest.skip("provider plugins missing: " + ", ".join(missing)
                    + " (pulumi plugin install resource command 1.2.1; pulumi plugin install resource rabbitmq 3.5.3)")
    return cli


def tier_of(item) -> str:
    for tier in reversed(TIERS):
        if item.get_closest_marker(tier):
            return tier
    return "unit"


def pytest_collection_modifyitems(items):
    for item in items:
        if tier_of(item) == "unit" and not item.get_closest_marker("unit"):
            item.add_marker(pytest.mark.unit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        tier = tier_of(item)
        _outcomes[tier][report.outcome] += 1
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            _skip_reasons[tier].add(reason.removeprefix("Skipped: ").removeprefix(f"{tier} tier skipped: "))


def pytest_terminal_summary(terminalreporter):
    terminalreporter.section("test tiers")
    for tier in TIERS:
        counts = _outcomes.get(tier, {})
        ran = counts.get("passed", 0) + counts.get("failed", 0)
        if ran:
            line = f"{tier}: ran ({counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed"
            line += f", {counts['skipped']} skipped)" if counts.get("skipped") else ")"
        elif counts.get("skipped"):
            line = f"{tier}: skipped: {'; '.join(sorted(_skip_reasons[tier]))}"
        else:
            line = f"{tier}: no tests selected"
        terminalreporter.write_line(line)
