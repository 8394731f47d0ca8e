"""What a blue/green broker move copies and runs (broker.migrateFrom), as plain data.

The old broker's definitions go to the new one without what belongs to the old node only:
runtime parameters (a shovel), global parameters (its cluster name) and transient queues
(Celery's reply and event queues, which their owners declare again). A dynamic shovel on
the old broker then moves the app queue's messages to the new broker's app exchange, each
acked on the old side only once the new broker confirmed it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import quote

# The account the shovel logs in as on the new broker: it may publish to the app exchange only.
MIGRATION_USER = "edd-infra-shovel"
SHOVEL_NAME = "edd-infra-migration"
# The new broker's CA on the old host, for the shovel's certificate check.
MIGRATION_CA_PATH = "/etc/edd-infra/migration-ca.pem"
COPIED_KEYS = ("users", "vhosts", "permissions", "topic_permissions", "policies", "exchanges")


def shovel_password(admin_password: str) -> str:
    """The migration account's password, derived from the admin's: nothing new to configure,
    and it changes with a rotation of the admin password."""
    return hmac.new(admin_password.encode(), b"edd-infra migration shovel", hashlib.sha256).hexdigest()


def copied_definitions(exported: str) -> str:
    """`rabbitmqctl export_definitions` output reduced to what the new broker takes over."""
    source = json.loads(exported)
    queues = [q for q in source.get("queues", []) if q.get("durable") and not q.get("auto_delete")]
    kept = {(q["vhost"], q["name"]) for q in queues}
    bindings = [
        b
        for b in source.get("bindings", [])
        if b.get("destination_type") != "queue" or (b["vhost"], b["destination"]) in kept
    ]
    copied = {key: source.get(key, []) for key in COPIED_KEYS}
    return json.dumps(copied | {"queues": queues, "bindings": bindings}, sort_keys=True)


def shovel_definitions(*, vhost: str, queue: str, exchange: str, dest_uri: str) -> str:
    """Definitions holding one dynamic shovel: the old broker's `queue` to the new broker's
    `exchange` (routing keys kept), acked after the new broker's confirm, never stopping by
    itself (what producers still send to the old broker moves too, until it is retired)."""
    value = {
        "src-protocol": "amqp091",
        "src-uri": f"amqp:///{quote(vhost, safe='')}",
        "src-queue": queue,
        "dest-protocol": "amqp091",
        "dest-uri": dest_uri,
        "dest-exchange": exchange,
        "ack-mode": "on-confirm",
        "src-delete-after": "never",
    }
    return json.dumps({"parameters": [{"vhost": vhost, "component": "shovel", "name": SHOVEL_NAME, "value": value}]})
