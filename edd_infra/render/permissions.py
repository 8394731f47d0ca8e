"""RabbitMQ permission regexes derived from Celery's naming, not guessed.

Celery 5.7 / kombu 5.7 name every object they touch after a few settings:
- `event_exchange` (`celeryev`): the exchange workers send events to; every event receiver
  (worker gossip, Flower, `celery events`) reads its own `<event_queue_prefix>.<uuid>` queue;
- `control_exchange` (`celery`): remote control is broadcast on `celery.pidbox`, each worker
  reads `<node>.celery.pidbox` (node `name@host`), replies go through `reply.celery.pidbox`
  to one `<uuid>.reply.celery.pidbox` queue per caller;
- the rpc result backend reads one queue per app thread named by a bare UUID;
- tasks go through the default exchange (checked by RabbitMQ as `amq.default`) to the queue;
- on quorum queues, countdown/ETA/retry use native delayed delivery (kombu's
  `native_delayed_delivery`): 28 levels, `celery_delayed_0`..`celery_delayed_27`, each a
  topic exchange with a queue of the same name chained to the level below, ending in the
  `celery_delayed_delivery` exchange, which the worker binds to the app's exchange.

RabbitMQ checks a resource name with `re:run(Name, Regex, [{capture, none}])`: a search, not
a full match, and an empty regex means `^$`. `rabbitmq_allows` mirrors that. Everything
generated here is anchored `^(...)$` with every name escaped, so search and full match agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Protocol

# kombu.transport.native_delayed_delivery: MAX_LEVEL 27, names without a prefix.
DELAYED_LEVEL = "(?:[0-9]|1[0-9]|2[0-7])"
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Concrete names the warnings test custom regexes against (Celery's UUIDs are lowercase).
SAMPLE_UUID = "3b5c8f0e-6a1d-4c2b-9e7f-0d4a2b6c8e1f"
SAMPLE_NODE = "edd-worker-1@edd-host"  # the worker unit's `-n <name>@%h`

PERMISSIONS = ("configure", "write", "read")


@dataclass(frozen=True)
class PermissionRegexes:
    """configure/write/read regexes on one vhost (the fields of settings.Permissions)."""

    configure: str
    write: str
    read: str


class HasPermissions(Protocol):
    """settings.Permissions or PermissionRegexes (read-only: the models are frozen)."""

    @property
    def configure(self) -> str: ...

    @property
    def write(self) -> str: ...

    @property
    def read(self) -> str: ...


@dataclass(frozen=True, kw_only=True)
class CeleryNames:
    """What names a Celery app uses on the broker: its queues, its exchanges, its settings."""

    queues: tuple[str, ...]
    # Exchanges tasks are published to besides the default one (EDD's fanout `edd`).
    exchanges: tuple[str, ...] = ()
    control_exchange: str = "celery"
    event_exchange: str = "celeryev"
    event_queue_prefix: str = "celeryev"
    rpc_results: bool = True
    # Quorum queues: Celery (worker_detect_quorum_queues) uses native delayed delivery.
    delayed_delivery: bool = False

    def __post_init__(self):
        object.__setattr__(self, "queues", tuple(self.queues))
        object.__setattr__(self, "exchanges", tuple(self.exchanges))
        if not self.queues:
            raise ValueError("a Celery app consumes at least one queue")
        named = (*self.queues, *self.exchanges, self.control_exchange, self.event_exchange, self.event_queue_prefix)
        if not all(named):
            raise ValueError("queue, exchange and Celery naming settings must not be empty")


@dataclass(frozen=True)
class Need:
    """One name Celery uses, the permissions it cannot work without, and what breaks."""

    pattern: str  # unanchored regex fragment, names escaped
    sample: str  # a concrete name Celery uses, checked against custom regexes
    shown: str  # the name as messages print it
    why: str
    required: tuple[str, ...] = PERMISSIONS
    # What the generated set grants: everything but amq.default in all three, as measured.
    granted: tuple[str, ...] = PERMISSIONS


def celery_needs(names: CeleryNames) -> tuple[Need, ...]:
    """Every name Celery 5.7 declares, binds, consumes or publishes to, for this app.

    The operations behind `required` (RabbitMQ's access-control table): exchange.declare and
    queue.declare need configure; queue.bind needs write on the queue and read on the exchange;
    basic.publish needs write on the exchange; basic.consume needs read on the queue.
    """
    c, ev, evq = (re.escape(n) for n in (names.control_exchange, names.event_exchange, names.event_queue_prefix))
    ctl = names.control_exchange
    dies = "without it the worker dies at start and remote control (ping, inspect, rate_limit) fails"
    needs = [
        Need(
            re.escape(q),
            q,
            q,
            f"the worker declares queue {q!r} (by default with an exchange of the same name), "
            "binds and consumes it; without it the worker cannot start",
        )
        for q in dict.fromkeys(names.queues)
    ]
    needs += [
        Need(
            re.escape(x),
            x,
            x,
            f"tasks published to exchange {x!r} need it declared, bound and written to; without "
            "write the publish is refused after apply_async returned and the task is lost",
        )
        for x in dict.fromkeys(names.exchanges)
        if x not in names.queues
    ]
    needs += [
        Need(
            ev,
            names.event_exchange,
            names.event_exchange,
            "workers send heartbeats and task events (what Flower "
            "shows) to this exchange and bind their event queues to it; without it the worker dies at start",
        ),
        Need(
            f"{evq}\\.{UUID}",
            f"{names.event_queue_prefix}.{SAMPLE_UUID}",
            f"{names.event_queue_prefix}.<uuid>",
            "every event receiver (worker gossip, Flower) declares, binds and reads its own queue; without it the "
            "worker dies at start",
        ),
        Need(
            f"{c}\\.pidbox", f"{ctl}.pidbox", f"{ctl}.pidbox", f"remote control is broadcast on this exchange; {dies}"
        ),
        Need(
            f"reply\\.{c}\\.pidbox",
            f"reply.{ctl}.pidbox",
            f"reply.{ctl}.pidbox",
            f"workers answer remote control through this exchange; {dies}",
        ),
        Need(
            f".+@.+\\.{c}\\.pidbox",
            f"{SAMPLE_NODE}.{ctl}.pidbox",
            f"<node>.{ctl}.pidbox",
            f"each worker declares, binds and reads its own control queue; {dies}",
        ),
        Need(
            f"{UUID}\\.reply\\.{c}\\.pidbox",
            f"{SAMPLE_UUID}.reply.{ctl}.pidbox",
            f"<uuid>.reply.{ctl}.pidbox",
            f"each remote control caller declares, binds and reads its own reply queue; {dies}",
        ),
    ]
    if names.rpc_results:
        # Declared without a binding (kombu binds only to a named exchange): no write needed,
        # but the measured set grants it, so the generated one does too.
        needs.append(
            Need(
                UUID,
                SAMPLE_UUID,
                "<uuid>",
                "the rpc result backend declares and reads one reply queue "
                "per app thread, named by a bare UUID; without it result.get() fails",
                required=("configure", "read"),
            )
        )
    if names.delayed_delivery:
        needs += [
            Need(
                f"celery_delayed_{DELAYED_LEVEL}",
                "celery_delayed_27",
                "celery_delayed_<0-27>",
                "countdown, ETA and retry() on a quorum queue go through these 28 delay levels (exchange and "
                "queue each), which the worker declares and chains at start; without them such a task is refused "
                "at publish or waits in the worker's memory",
            ),
            Need(
                "celery_delayed_delivery",
                "celery_delayed_delivery",
                "celery_delayed_delivery",
                "the last delay level hands a task back through this exchange, which the worker binds to the "
                "app's exchange; without it a delayed task never comes back",
            ),
        ]
    # Write only: RabbitMQ refuses to declare `amq.*` and nothing binds to the default exchange.
    needs.append(
        Need(
            "amq\\.default",
            "amq.default",
            "amq.default",
            "Celery publishes tasks through the default exchange; without it apply_async silently drops tasks",
            required=("write",),
            granted=("write",),
        )
    )
    return tuple(needs)


def _anchored(patterns: Iterable[str]) -> str:
    return "^(" + "|".join(dict.fromkeys(patterns)) + ")$"


def least_privilege(names: CeleryNames) -> PermissionRegexes:
    """The app user's regexes: exactly the names in `celery_needs`, anchored."""
    needs = celery_needs(names)
    regexes = {p: _anchored(n.pattern for n in needs if p in n.granted) for p in PERMISSIONS}
    return PermissionRegexes(**regexes)


def rabbitmq_allows(regex: str, name: str, *, exchange: bool = False) -> bool:
    """Whether RabbitMQ's internal backend lets a permission regex touch `name`.

    Mirrors rabbit_auth_backend_internal: an unanchored search, `""` meaning `^$`, and the
    default exchange (`""`) checked as `amq.default` (rabbit_access_control). Python's `re`
    stands in for PCRE: the same for literals, classes, alternation, `.+` and anchors.
    """
    if exchange and name == "":
        name = "amq.default"
    return re.search(regex or "^$", name) is not None


def missing_for_celery(
    permissions: HasPermissions, names: CeleryNames, *, where: str = "appUser.permissions"
) -> list[str]:
    """One warning per permission a custom set lacks of what Celery needs, in RabbitMQ's semantics."""
    warnings = []
    for perm in PERMISSIONS:
        regex = getattr(permissions, perm)
        for need in celery_needs(names):
            if perm in need.required and not rabbitmq_allows(regex, need.sample):
                warnings.append(f"{where}.{perm} does not allow {need.shown!r}: {need.why}")
    return warnings


def monitor_regex(
    control_exchange: str = "celery", event_exchange: str = "celeryev", *, event_queue_prefix: str = "celeryev"
) -> str:
    """Exactly the exchanges and queues a Celery monitor declares, binds and reads."""
    c, e, q = re.escape(control_exchange), re.escape(event_exchange), re.escape(event_queue_prefix)
    return _anchored([e, f"{q}\\.{UUID}", f"{c}\\.pidbox", f"reply\\.{c}\\.pidbox", f"{UUID}\\.reply\\.{c}\\.pidbox"])
