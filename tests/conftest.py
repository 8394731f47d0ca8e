"""Test tiers and the closing tier summary.

Every test belongs to one tier (unit by default, or the marker it carries). A tier whose
requirement is missing skips with one line naming what is missing and the command that
provides it; `make test` ends with one line per tier: ran, or skipped and why.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edd_infra.workspace import cli_dir, engine_problem  # noqa: E402

TIERS = ("unit", "engine", "plugins", "policy", "hosts")

_outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
_skip_reasons: dict[str, set[str]] = defaultdict(set)


@pytest.fixture(scope="session")
def plugins_ready():
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    return cli_dir()


def tier_of(item) -> str:
    """The tier of a test item or report: its tier marker, or unit."""
    names = item.keywords
    for tier in reversed(TIERS):
        if tier in names:
            return tier
    return "unit"


# First among the collection hooks: `-m <tier>` deselects in the same hook and must see the
# marker. Markers, not keywords: a test under tests/unit/ has the keyword `unit` (its directory)
# without the marker `-m unit` selects by.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)


def pytest_runtest_logreport(report):
    # Runs in the controlling process also under xdist, so the summary sees every test.
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        tier = tier_of(report)
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
            line += ")"
            if counts.get("skipped"):
                line += f"; {counts['skipped']} skipped: {'; '.join(sorted(_skip_reasons[tier]))}"
        elif counts.get("skipped"):
            line = f"{tier}: skipped: {'; '.join(sorted(_skip_reasons[tier]))}"
        else:
            line = f"{tier}: no tests selected"
        terminalreporter.write_line(line)
