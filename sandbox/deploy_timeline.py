"""Where a `pulumi up`'s time goes: each resource's span from the engine's events and the
critical path through the dependencies the state records.

A resource's span runs from its `ResourcePreEvent` to its `ResOutputsEvent` (the engine's
step: for a remote command, the SSH session and the script). The critical path starts at the
resource that finished last and steps back, each time to the dependency that finished last:
what it was waiting for. A component stands for its children (Pulumi waits for all of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence


@dataclass(frozen=True)
class Span:
    urn: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def name(self) -> str:
        """The resource's own name and type (`broker-install (command:remote:Command)`)."""
        parts = self.urn.split("::")
        return f"{parts[-1]} ({parts[-2].split('$')[-1]})" if len(parts) >= 2 else self.urn


def spans(starts: Mapping[str, float], ends: Mapping[str, float]) -> dict[str, Span]:
    """Spans of the resources that both started and finished."""
    return {urn: Span(urn, starts[urn], ends[urn]) for urn in starts if urn in ends}


def _leaves(urn: str, children: Mapping[str, Sequence[str]], timed: Mapping[str, Span]) -> list[str]:
    """`urn` itself when timed, else its descendants that are (a component's resources)."""
    if urn in timed:
        return [urn]
    return [leaf for child in children.get(urn, ()) for leaf in _leaves(child, children, timed)]


def critical_path(
    timed: Mapping[str, Span],
    dependencies: Mapping[str, Sequence[str]],
    parents: Mapping[str, str],
) -> list[Span]:
    """The chain of spans that ended last, first step first. A resource depends on what the
    state says and, as Pulumi orders them, on whatever its ancestors' dependencies are."""
    children: dict[str, list[str]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)

    def waited_on(urn: str) -> list[Span]:
        found, node = [], urn
        while node:
            for dep in dependencies.get(node, ()):
                found += [timed[leaf] for leaf in _leaves(dep, children, timed)]
            node = parents.get(node, "")
        span = timed[urn]
        return [s for s in found if s.urn != urn and s.end <= span.start + 0.5]

    if not timed:
        return []
    path = [max(timed.values(), key=lambda s: s.end)]
    while before := waited_on(path[-1].urn):
        path.append(max(before, key=lambda s: s.end))
    return path[::-1]


def slowest(timed: Iterable[Span], count: int) -> list[Span]:
    return sorted(timed, key=lambda s: s.seconds, reverse=True)[:count]
