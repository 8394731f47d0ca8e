"""RabbitMQ permission regexes derived from Celery's naming, not guessed.

Celery names the objects a monitor (Flower, `celery inspect`) touches after its settings:
the event exchange (`celeryev`) with one `celeryev.<uuid>` queue per receiver, and the
control exchange (`celery`) as `celery.pidbox` plus `reply.celery.pidbox` with one
`<uuid>.reply.celery.pidbox` queue per caller.
"""

from __future__ import annotations

import re

UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def monitor_regex(control_exchange: str = "celery", event_exchange: str = "celeryev") -> str:
    """Exactly the exchanges and queues a Celery monitor declares, binds and reads."""
    c, e = re.escape(control_exchange), re.escape(event_exchange)
    names = [e, f"{e}\\.{UUID}", f"{c}\\.pidbox", f"reply\\.{c}\\.pidbox", f"{UUID}\\.reply\\.{c}\\.pidbox"]
    return "^(" + "|".join(names) + ")$"
