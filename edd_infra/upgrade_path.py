"""RabbitMQ's upgrade rule, checked at preview: from the version a stack last deployed to the
one its config now pins.

RabbitMQ upgrades in place one minor series at a time (3.10 -> 3.11 -> 3.12 -> 3.13 -> 4.0
-> 4.1 ...), each with every feature flag enabled, and never downgrades: its data is written
for the version that ran last. The broker script checks the same rule against the host's
installed package before it changes anything (render.host_scripts.UPGRADE_PATH); this module
lets `preview` say it first, when the stack pinned a version before.
"""

from __future__ import annotations

import re
from typing import Optional

_SERIES = re.compile(r"^(?:\d+:)?(\d+)\.(\d+)")


def series(version: str) -> Optional[tuple[int, int]]:
    """(major, minor) of a Debian version string such as `4.0.5-6+deb13u2`; None if it has none."""
    found = _SERIES.match(version)
    return (int(found.group(1)), int(found.group(2))) if found else None


# The last series of a major version and the series that follows it; otherwise the next minor.
MAJOR_STEPS = {(3, 13): (4, 0)}


def next_series(current: tuple[int, int]) -> tuple[int, int]:
    """The series RabbitMQ supports upgrading to from `current` (3.13 is followed by 4.0)."""
    return MAJOR_STEPS.get(current, (current[0], current[1] + 1))


def upgrade_problem(deployed: Optional[str], wanted: Optional[str]) -> Optional[str]:
    """Why `deployed` -> `wanted` is not an upgrade RabbitMQ supports in place; None if it is
    (or either side is unknown: a first deploy, or an unpinned stack)."""
    if not deployed or not wanted or deployed == wanted:
        return None
    have, want = series(deployed), series(wanted)
    if have is None or want is None or want == have:
        return None
    dotted = ".".join
    if want < have:
        return (
            f"{deployed} -> {wanted} is a downgrade: RabbitMQ cannot run on data of a newer version "
            f"(set it back to {deployed})"
        )
    if want != next_series(have):
        step = next_series(have)
        return (
            f"{deployed} -> {wanted} skips a release series: RabbitMQ upgrades one minor series at a time "
            f"({dotted(map(str, have))} -> {dotted(map(str, step))}), each with every feature flag enabled; "
            "pin a version of each series in turn, or move to a new host (README: Upgrades)"
        )
    return None
