"""App user permissions: the names Celery 5.7 really uses, in RabbitMQ's matching, and nothing else.

The broker traffic below is not hard-coded: a Celery app built from the same naming settings
declares, binds and consumes its queues through kombu's own code on a recording channel, and
the names it publishes to come from Celery's objects. Each AMQP call is turned into the
permission check RabbitMQ makes for it (exchange.declare and queue.declare: configure on the
name; queue.bind: write on the queue, read on the exchange; basic.publish: write on the
exchange; basic.consume: read on the queue).
"""

import re

import pytest
from celery import Celery
from kombu import Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    calculate_routing_key,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from edd_infra.render.permissions import (
    SAMPLE_NODE,
    SAMPLE_UUID,
    UUID,
    CeleryNames,
    PermissionRegexes,
    celery_needs,
    least_privilege,
    missing_for_celery,
    monitor_regex,
    rabbitmq_allows,
)
from edd_infra.settings import Permissions

PERMS = ("configure", "write", "read")

# The set measured against a real worker (field-facts.md, "What Celery 5.7 really needs").
MEASURED = (
    r"edd|celeryev|celeryev\.UUID|celery\.pidbox|reply\.celery\.pidbox|.+@.+\.celery\.pidbox"
    r"|UUID\.reply\.celery\.pidbox|UUID"
).replace("UUID", UUID)
AMQ_DEFAULT_WARNING = (
    "appUser.permissions.write does not allow 'amq.default': Celery publishes tasks through the "
    "default exchange; without it apply_async silently drops tasks"
)


class Traffic:
    """Stands in for an AMQP channel and a producer; records (permission, kind, name) as RabbitMQ checks them."""

    def __init__(self):
        self.checks = []

    def exchange_declare(self, exchange, **_):
        self.checks.append(("configure", "exchange", exchange))

    def queue_declare(self, queue, **_):
        self.checks.append(("configure", "queue", queue))
        return queue, 0, 0

    def queue_bind(self, queue, exchange, **_):
        self.checks += [("write", "queue", queue), ("read", "exchange", exchange)]

    def exchange_bind(self, destination, source, **_):
        self.checks += [("write", "exchange", destination), ("read", "exchange", source)]

    def channel(self):  # kombu's delayed-delivery setup asks its connection for a channel
        return self

    def prepare_queue_arguments(self, arguments, **_):
        return arguments

    def consume(self, queue):
        queue.declare(channel=self)
        self.checks.append(("read", "queue", queue.name))

    def publish(self, body=None, *, exchange, declare=None, **_):
        for entity in declare or ():
            entity.declare(channel=self)
        self.checks.append(("write", "exchange", getattr(exchange, "name", exchange)))


SCENARIOS = {
    # The seed: `-Q edd`, Celery creates queue and direct exchange `edd`, rpc results.
    "seed": (CeleryNames(queues=["edd"]), None),
    # EDD's router: queue `edd` bound to the fanout exchange `edd`.
    "edd-fanout": (
        CeleryNames(queues=["edd"], exchanges=["edd"]),
        [Queue("edd", Exchange("edd", type="fanout"), routing_key="edd")],
    ),
    # Everything renamed, a second queue on its own fanout exchange, no rpc backend.
    "renamed": (
        CeleryNames(
            queues=["edd", "edd-bulk"],
            exchanges=["edd-broadcast"],
            control_exchange="edd",
            event_exchange="edd.events",
            event_queue_prefix="edd.ev",
            rpc_results=False,
        ),
        [
            Queue("edd", Exchange("edd"), routing_key="edd"),
            Queue("edd-bulk", Exchange("edd-broadcast", type="fanout"), routing_key="edd-bulk"),
        ],
    ),
    # The cluster topology: EDD's fanout, a quorum queue, countdown/ETA/retry by native delayed delivery.
    "quorum-delayed": (
        CeleryNames(queues=["edd"], exchanges=["edd"], delayed_delivery=True),
        [Queue("edd", Exchange("edd", type="fanout"), routing_key="edd", queue_arguments={"x-queue-type": "quorum"})],
    ),
}


def celery_traffic(names, task_queues):
    """What a worker, a producer, an event monitor and a remote-control caller of this app do on the broker."""
    app = Celery(
        "edd",
        set_as_current=False,
        broker="amqp://u:p@127.0.0.1:1//edd",
        backend="rpc://" if names.rpc_results else None,
    )
    app.conf.update(
        control_exchange=names.control_exchange,
        event_exchange=names.event_exchange,
        event_queue_prefix=names.event_queue_prefix,
    )
    if task_queues:
        app.conf.task_queues = task_queues
    t = Traffic()
    for queue in names.queues:
        t.consume(app.amqp.queues[queue])  # the worker
        app.amqp.send_task_message(t, "edd.add", ({}, {}, b"", None), queue=queue)  # the producer
    with app.connection_for_write() as conn:
        events = app.events.Dispatcher(conn, enabled=False).exchange
    t.publish(exchange=events.name, declare=[events])
    t.consume(app.events.Receiver(None).queue)
    mailbox = app.control.mailbox
    t.consume(mailbox.get_queue("edd-worker-1@queue"))  # the worker's control queue
    t.consume(mailbox.reply_queue)  # `celery inspect ping`
    t.publish(exchange=mailbox.exchange.name, declare=[mailbox.exchange])
    t.publish(exchange=mailbox.reply_exchange.name, declare=[mailbox.reply_exchange])
    if names.delayed_delivery:  # the worker's DelayedDelivery bootstep, then apply_async(countdown=...)
        declare_native_delayed_delivery_exchanges_and_queues(t, "quorum")
        for queue in names.queues:
            bind_queue_to_native_delayed_delivery_exchange(t, app.amqp.queues[queue])
        # Celery.send_task with a countdown on a quorum queue drops the queue (nothing declared)
        # and publishes to the top level with kombu's routing key.
        t.publish(exchange=Exchange("celery_delayed_27", type="topic"), routing_key=calculate_routing_key(30, "edd"))
    if names.rpc_results:
        t.consume(app.backend.binding)  # result.get()
        t.publish(exchange=app.backend.exchange.name)  # the worker stores a result
    return t.checks


def as_checked(kind, name):
    return "amq.default" if kind == "exchange" and name == "" else name


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_access_celery_makes_is_allowed(scenario):
    names, task_queues = SCENARIOS[scenario]
    perms = least_privilege(names)
    refused = [
        (p, kind, name)
        for p, kind, name in celery_traffic(names, task_queues)
        if not rabbitmq_allows(getattr(perms, p), name, exchange=kind == "exchange")
    ]
    assert refused == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_needs_are_exactly_what_celery_does(scenario):
    names, task_queues = SCENARIOS[scenario]
    traffic = {(p, as_checked(kind, name)) for p, kind, name in celery_traffic(names, task_queues)}
    needs = celery_needs(names)
    # Every check is named by a need, so a custom set that lacks it gets a warning...
    unnamed = [
        (p, name) for p, name in traffic if not any(p in n.required and re.fullmatch(n.pattern, name) for n in needs)
    ]
    assert unnamed == []
    # ...and every required permission is one Celery really uses: no warning for nothing.
    unused = [
        (p, n.shown)
        for n in needs
        for p in n.required
        if not any(q == p and re.fullmatch(n.pattern, name) for q, name in traffic)
    ]
    assert unused == []


def test_seed_defaults_generate_the_measured_set():
    for names in (CeleryNames(queues=["edd"]), CeleryNames(queues=["edd"], exchanges=["edd"])):
        assert least_privilege(names) == PermissionRegexes(
            configure=f"^({MEASURED})$", write=f"^({MEASURED}|amq\\.default)$", read=f"^({MEASURED})$"
        )


def test_samples_are_names_celery_would_use():
    for names, _ in SCENARIOS.values():
        perms = least_privilege(names)
        for need in celery_needs(names):
            assert re.fullmatch(need.pattern, need.sample), need
            assert all(rabbitmq_allows(getattr(perms, p), need.sample) for p in need.granted), need
    assert re.fullmatch(UUID, SAMPLE_UUID) and "@" in SAMPLE_NODE


REFUSED_EVERYWHERE = [
    "celery",  # Celery's default queue: not this app's
    "other-app",
    "edd2",
    "xedd",
    "edd.bulk",
    "edd.",
    "EDD",
    "amq.topic",
    "amq.direct",
    "amq.fanout",
    "amq.headers",
    "amq.rabbitmq.trace",
    "celeryevil",
    "celeryev.",
    "celeryev.not-a-uuid",
    f"celeryev.{SAMPLE_UUID.upper()}",
    f"celeryev.{SAMPLE_UUID}x",
    "celery.pidbox.x",
    "xcelery.pidbox",
    "reply.celery.pidbox2",
    "no-host.celery.pidbox",
    "@.celery.pidbox",
    f"{SAMPLE_UUID}.reply.celery.pidbox.x",
    f"{SAMPLE_UUID}x",
    SAMPLE_UUID[:-1],
    "edd.pidbox",
    "reply.edd.pidbox",
]


@pytest.mark.parametrize("name", REFUSED_EVERYWHERE)
def test_names_outside_the_set_are_refused(name):
    perms = least_privilege(CeleryNames(queues=["edd"], exchanges=["edd"]))
    assert [p for p in PERMS if rabbitmq_allows(getattr(perms, p), name)] == []


def test_default_exchange_is_write_only():
    perms = least_privilege(CeleryNames(queues=["edd"]))
    assert rabbitmq_allows(perms.write, "", exchange=True)
    assert not rabbitmq_allows(perms.configure, "amq.default") and not rabbitmq_allows(perms.read, "amq.default")


def test_renamed_control_and_event_settings_move_the_set():
    perms = least_privilege(
        CeleryNames(queues=["edd"], control_exchange="edd", event_exchange="edd.events", event_queue_prefix="edd.ev")
    )
    allowed = [
        "edd.pidbox",
        "reply.edd.pidbox",
        "edd-worker-1@queue.edd.pidbox",
        f"{SAMPLE_UUID}.reply.edd.pidbox",
        "edd.events",
        f"edd.ev.{SAMPLE_UUID}",
    ]
    refused = [
        "celery.pidbox",
        "reply.celery.pidbox",
        "edd-worker-1@queue.celery.pidbox",
        "celeryev",
        f"celeryev.{SAMPLE_UUID}",
        f"edd.events.{SAMPLE_UUID}",
        "edd.ev",
    ]
    for p in PERMS:
        assert [n for n in allowed if not rabbitmq_allows(getattr(perms, p), n)] == [], p
        assert [n for n in refused if rabbitmq_allows(getattr(perms, p), n)] == [], p


def test_rpc_reply_queues_only_with_the_rpc_backend():
    with_rpc, without = (least_privilege(CeleryNames(queues=["edd"], rpc_results=rpc)) for rpc in (True, False))
    assert rabbitmq_allows(with_rpc.read, SAMPLE_UUID) and not rabbitmq_allows(without.read, SAMPLE_UUID)


def test_every_name_is_escaped():
    perms = least_privilege(CeleryNames(queues=["edd.tasks", "edd-bulk"]))
    assert rabbitmq_allows(perms.read, "edd.tasks") and rabbitmq_allows(perms.read, "edd-bulk")
    assert not rabbitmq_allows(perms.read, "eddxtasks")


def test_rabbitmq_matches_by_unanchored_search():
    assert rabbitmq_allows("edd", "not-edd-at-all")  # re:run is a search: unanchored regexes allow more
    assert not rabbitmq_allows("^edd$", "not-edd-at-all")
    assert rabbitmq_allows("", "") and not rabbitmq_allows("", "edd")  # "" is RabbitMQ's ^$, not match-all
    assert rabbitmq_allows("^amq\\.default$", "", exchange=True) and not rabbitmq_allows("^amq\\.default$", "")


def custom(configure=".*", write=".*", read=".*"):
    return PermissionRegexes(configure=configure, write=write, read=read)


def lacks(warnings):
    """(permission, name) of each warning."""
    return [re.match(r"appUser\.permissions\.(\w+) does not allow '([^']*)': ", w).groups() for w in warnings]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_seed_and_generated_sets_need_no_warning(scenario):
    names, _ = SCENARIOS[scenario]
    assert missing_for_celery(Permissions(), names) == []
    assert missing_for_celery(least_privilege(names), names) == []


def test_write_without_the_default_exchange_warns_about_lost_tasks():
    names = CeleryNames(queues=["edd"])
    perms = least_privilege(names)
    custom = PermissionRegexes(
        configure=perms.configure, write=perms.write.replace("|amq\\.default", ""), read=perms.read
    )
    assert missing_for_celery(custom, names) == [AMQ_DEFAULT_WARNING]


def test_unanchored_custom_set_is_judged_as_rabbitmq_would():
    # `celery` is searched for, so it allows celeryev, celery.pidbox, <node>.celery.pidbox...:
    # only what does not contain it is missing.
    celery_anywhere = custom("celery", "celery", "celery")
    assert lacks(missing_for_celery(celery_anywhere, CeleryNames(queues=["edd"]))) == [
        ("configure", "edd"),
        ("configure", "<uuid>"),
        ("write", "edd"),
        ("write", "amq.default"),
        ("read", "edd"),
        ("read", "<uuid>"),
    ]


def test_empty_regex_allows_nothing():
    assert lacks(missing_for_celery(custom(write=""), CeleryNames(queues=["edd"], rpc_results=False))) == [
        ("write", "edd"),
        ("write", "celeryev"),
        ("write", "celeryev.<uuid>"),
        ("write", "celery.pidbox"),
        ("write", "reply.celery.pidbox"),
        ("write", "<node>.celery.pidbox"),
        ("write", "<uuid>.reply.celery.pidbox"),
        ("write", "amq.default"),
    ]


def test_renaming_without_new_regexes_names_the_new_objects():
    renamed = CeleryNames(queues=["edd"], control_exchange="edd", event_queue_prefix="edd.ev")
    stale = least_privilege(CeleryNames(queues=["edd"]))
    assert lacks(missing_for_celery(stale, renamed)) == [
        (p, name)
        for p in PERMS
        for name in ("edd.ev.<uuid>", "edd.pidbox", "reply.edd.pidbox", "<node>.edd.pidbox", "<uuid>.reply.edd.pidbox")
    ]


def test_warnings_name_the_config_key_and_the_consequence():
    [warning] = missing_for_celery(
        custom(write="^(?!amq\\.default$)"), CeleryNames(queues=["edd"]), where="edd-infra:appUser.permissions"
    )
    assert warning == "edd-infra:" + AMQ_DEFAULT_WARNING


def test_names_must_not_be_empty():
    with pytest.raises(ValueError):
        CeleryNames(queues=[])
    with pytest.raises(ValueError):
        CeleryNames(queues=["edd"], control_exchange="")


def test_monitor_regex_is_what_a_monitor_uses():
    app = Celery("edd", set_as_current=False, broker="amqp://u:p@127.0.0.1:1//edd")
    regex = monitor_regex()
    used = [
        app.events.Receiver(None).queue.name,
        app.conf.event_exchange,
        app.control.mailbox.exchange.name,
        app.control.mailbox.reply_exchange.name,
        app.control.mailbox.reply_queue.name,
    ]
    assert [n for n in used if not rabbitmq_allows(regex, n)] == []
    assert [
        n for n in ("edd", "amq.default", "edd-worker-1@queue.celery.pidbox", SAMPLE_UUID) if rabbitmq_allows(regex, n)
    ] == []
    assert rabbitmq_allows(monitor_regex(event_queue_prefix="mon"), f"mon.{SAMPLE_UUID}")
