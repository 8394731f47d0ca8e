"""edd-infra as a package: its metadata agrees with the lock the tests run on."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import edd_infra

ROOT = Path(__file__).resolve().parents[2]


def pins(lines) -> dict[str, str]:
    """name (normalized) -> version of every `name==version` line."""
    found = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s;#]+)\s*(#.*)?", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def test_the_package_pins_what_requirements_txt_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = pins(
        (ROOT / "requirements.txt").read_text().splitlines()
        + (ROOT / "policy/requirements.txt").read_text().splitlines()
    )
    runtime, test = pins(project["dependencies"]), pins(project["optional-dependencies"]["test"])
    assert runtime and all(lock.get(name) == version for name, version in runtime.items()), (runtime, lock)
    assert test and all(lock.get(name) == version for name, version in test.items()), (test, lock)
    # Every pin of the lock is in the package: at run time or in the test extra.
    assert set(lock) == set(runtime) | set(test)
    assert set(runtime) == {"pulumi", "pulumi-command", "pulumi-rabbitmq", "pydantic", "cryptography", "pyyaml"}


def test_the_package_is_typed_and_versioned():
    assert (ROOT / "edd_infra" / "py.typed").exists()
    assert re.fullmatch(r"\d+\.\d+\.\d+", edd_infra.__version__)
