"""What a site's Prometheus scrapes: every RabbitMQ node's metrics and Flower's, as URLs.

No credentials: a target that needs a login says so, and the site's Prometheus has its own.
"""

from __future__ import annotations

from urllib.parse import urlencode

from ..settings import Broker, StackSettings
from .alert_rules import DETAILED_FAMILIES


def _base(broker: Broker, address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    if broker.tls:
        return f"https://{host}:{broker.tls.prometheus_port}"
    return f"http://{host}:{broker.prometheus_port}"


def detailed_path(vhost: str) -> str:
    """/metrics/detailed for the vhost's queues only (depth, ready, unacked, consumers)."""
    return "/metrics/detailed?" + urlencode([("vhost", vhost)] + [("family", f) for f in DETAILED_FAMILIES])


def scrape_targets(settings: StackSettings, node_addresses: list[tuple[str, str]]) -> list[dict]:
    """`node_addresses`: (node name, the address its metrics listener is on) per RabbitMQ node.
    Each target: url, what it serves, whether it needs basic auth, and with TLS the config key
    of the CA that verifies it."""
    broker = settings.broker
    verify = {"caFile": "broker.tls.caFile"} if broker.tls else {}
    targets = []
    for node, address in node_addresses:
        base = _base(broker, address)
        targets += [
            {
                "url": f"{base}/metrics",
                "what": f"RabbitMQ {node}: node metrics, alarms, totals",
                "basicAuth": False,
                **verify,
            },
            {
                "url": f"{base}{detailed_path(settings.vhost)}",
                "what": f"RabbitMQ {node}: the {settings.vhost} vhost's queues (messages, ready, unacked, consumers)",
                "basicAuth": False,
                **verify,
            },
        ]
    flower = settings.flower
    if flower.enabled:
        host = f"[{flower.address}]" if ":" in flower.address else flower.address
        prefix = f"/{flower.url_prefix}" if flower.url_prefix else ""
        flower_verify = (
            {"caFile": "flower.tls.caFile" if flower.tls.ca_file else "broker.tls.caFile"} if flower.tls else {}
        )
        # Flower 2.2 serves /metrics without its basic auth (measured by the hosts tier).
        targets.append(
            {
                "url": f"{flower.scheme}://{host}:{flower.port}{prefix}/metrics",
                "what": "Flower: Celery workers online, task events and runtimes",
                "basicAuth": False,
                **flower_verify,
            }
        )
    return targets
