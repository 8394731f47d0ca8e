"""`make unit` and any `-m <tier>` select a tier's tests (README: Test tiers)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def collected(marker: str, *paths: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", "-m", marker, *paths],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_a_test_without_a_marker_is_selected_as_unit():
    # test_apt_source.py carries no marker of its own: the unit marker comes from conftest.
    assert collected("unit", "tests/unit/test_apt_source.py")


def test_a_tier_selects_its_tests_and_no_other():
    paths = ("tests/unit/test_apt_source.py", "tests/engine/test_engine_config.py")
    engine = collected("engine", *paths)
    assert engine and all(line.startswith("tests/engine/") for line in engine)
    assert not [line for line in collected("unit", *paths) if line.startswith("tests/engine/")]
