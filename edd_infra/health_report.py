"""The `health` stack output: what `up` measured, read back from the commands that measured it.

Three sources, each the stdout of a command `up` ran (no Pulumi import here: plain text in,
a dict out):
- the broker probe (`host_scripts.health_probe`), run on the broker host after every worker and
  Flower whenever any of them, or the broker, ran: the server's version, the nodes running, the
  app queue's consumers and messages, and the workers holding their control queue;
- each worker's health check, which prints a `MARKER` line once the worker answered `inspect conf`;
- Flower's, which prints one once `/healthcheck` answered.

Worker and Flower stdout is secret (their commands read secrets on stdin): only fields that match
strict patterns are kept, so nothing else of it can reach the output.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Optional

MARKER = "edd-infra-health "
# Node names (name@host), host names, versions, queue names: what the report may carry.
SAFE = re.compile(r"^[A-Za-z0-9@._+:~-]{1,255}$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def marker_fields(stdout: Optional[str]) -> Optional[dict[str, Any]]:
    """The last `MARKER` line's JSON object, or None when there is none (not checked yet)."""
    for line in reversed((stdout or "").splitlines()):
        if line.startswith(MARKER):
            try:
                fields = json.loads(line[len(MARKER) :])
            except ValueError:
                return None
            return fields if isinstance(fields, dict) else None
    return None


def _safe(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and SAFE.match(value) else None


def _stamp(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and STAMP.match(value) else None


def _count(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def worker_report(stdout: Optional[str]) -> dict[str, Any]:
    """{"answered": "node@host", "checkedAt", "waitedSeconds"} from a worker's health check."""
    fields = marker_fields(stdout)
    if fields is None or not _safe(fields.get("node")):
        return {"answered": None, "why": "no health check recorded (launchd, or not run since this version)"}
    return {
        "answered": fields["node"],
        "waitedSeconds": _count(fields.get("waitedSeconds")),
        "checkedAt": _stamp(fields.get("checkedAt")),
    }


def flower_report(stdout: Optional[str]) -> dict[str, Any]:
    """{"healthcheck": HTTP status, "body", "checkedAt"} from Flower's health check."""
    fields = marker_fields(stdout)
    if fields is None or _count(fields.get("status")) is None:
        return {"healthcheck": None, "why": "no health check recorded (not run since this version)"}
    body = fields.get("body")
    return {
        "healthcheck": fields["status"],
        "body": body if _safe(body) else None,
        "checkedAt": _stamp(fields.get("checkedAt")),
    }


def probe_sections(stdout: Optional[str]) -> dict[str, str]:
    """`<section> <text>` lines of the broker probe (the first word names the section)."""
    sections = {}
    for line in (stdout or "").splitlines():
        key, _, text = line.partition(" ")
        sections[key] = text.strip()
    return sections


def broker_report(stdout: Optional[str], queue: str, expected_nodes: int) -> dict[str, Any]:
    """The broker probe's figures: version, nodes running of those configured, the app queue's
    consumers and messages, and which Celery workers hold their control (pidbox) queue."""
    sections = probe_sections(stdout)
    cluster = _json(sections.get("cluster"), {})
    queues = _json(sections.get("queues"), [])
    nodes = cluster.get("running_nodes") if isinstance(cluster, dict) else None
    running = sorted(n for n in nodes if _safe(n)) if isinstance(nodes, list) else []
    rows = {q.get("name"): q for q in queues if isinstance(q, dict)} if isinstance(queues, list) else {}
    app = rows.get(queue, {})
    pidbox = ".celery.pidbox"
    connected = sorted(
        n[: -len(pidbox)]
        for n, q in rows.items()
        if isinstance(n, str) and n.endswith(pidbox) and _count(q.get("consumers")) and _safe(n)
    )
    return {
        "checkedAt": _stamp(sections.get("checkedAt")),
        "version": _versions(cluster) or _safe(sections.get("version")),
        "nodesRunning": running,
        "nodesConfigured": expected_nodes,
        "queue": {"name": queue, "consumers": _count(app.get("consumers")), "messages": _count(app.get("messages"))},
        "workersConnected": connected,
    }


def _versions(cluster: Any) -> Optional[str]:
    """The RabbitMQ version the running nodes report (`cluster_status`'s `versions`); during a
    rolling upgrade, each one, joined by `+` (`3.13.7+4.0.5`)."""
    versions = cluster.get("versions") if isinstance(cluster, dict) else None
    found = (
        {v.get("rabbitmq_version") for v in versions.values() if isinstance(v, dict)}
        if isinstance(versions, dict)
        else set()
    )
    safe = sorted(v for v in found if isinstance(v, str) and _safe(v))
    return "+".join(safe) or None


def _json(text: Optional[str], empty: Any) -> Any:
    try:
        return json.loads(text) if text else empty
    except ValueError:
        return empty


def stack_health(
    broker: Optional[Mapping[str, Any]], workers: Mapping[str, dict[str, Any]], flower: Optional[Mapping[str, Any]]
) -> dict[str, Any]:
    """The `health` output: the broker's figures (None: external broker, not measured here),
    each worker unit's answer, Flower's healthcheck ("off" when Flower is not deployed)."""
    return {
        "broker": dict(broker) if broker is not None else {"measured": False, "why": "external broker"},
        "workers": dict(workers),
        "workersAnswered": sum(1 for w in workers.values() if w.get("answered")),
        "flower": dict(flower) if flower is not None else "off",
    }
