"""A live broker moved off an unsupported version (issue 17): a Debian 12 / RabbitMQ 3.10 host
to a Debian 13 / RabbitMQ 4.0 host, blue/green, by the same stack.

The stack is deployed on the old host as a site runs it today (broker, worker and Flower on one
host). Its worker is stopped and 2,000 tasks are queued there. Then one `up` with `broker.host`,
the worker, Flower and EDD's settings on the new host and `broker.migrateFrom` naming the old
one: the new broker takes the old one's definitions (the passwords' hashes with them), the old
broker's shovel moves the queued tasks across, and every one of them runs on the new host,
exactly once. A second `up` without `migrateFrom` retires the old broker; a third changes nothing.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
import uuid

import pytest

from sandbox.deploy import configure, sandbox_config, send_task, tls_dir
from sandbox.image import APP_TARGET, VENV
from sandbox.tls import make_broker_certificates
from edd_infra.render.broker_migration import MIGRATION_USER, shovel_password
from edd_infra.workspace import ProjectStack
from tests.engine.conftest import PASSPHRASE
from tests.hosts.deployment import (
    WORKER_ENV,
    WORKER_UNIT,
    Deployment,
    Producer,
    completed_tasks,
    destroy,
    print_figures,
    secret_forms,
)

pytestmark = pytest.mark.hosts
OLD_DEBIAN, NEW_DEBIAN = 12, 13
TOTAL = 2000
FIGURES: dict[str, float] = {}


def rabbitmq_version(d: Deployment) -> str:
    return d.sh("rabbitmqctl -q version").strip()


def queued(d: Deployment, queue: str = "edd") -> int:
    """Messages (ready and unacked) in the app queue, as the broker host's rabbitmqctl says."""
    lines = d.sh("rabbitmqctl -q list_queues -p /edd name messages --no-table-headers").splitlines()
    return next(int(line.split()[1]) for line in lines if line.split()[0] == queue)


def succeeded(d: Deployment, prefix: str, task: str = "edd.add") -> list[str]:
    """Every `succeeded` line of the worker's journal for tasks of `prefix`, repeats included."""
    journal = d.sh(f"journalctl -u {WORKER_UNIT} -o cat --no-pager | grep -F '[{prefix}-' || true", timeout=300)
    return re.findall(rf"{re.escape(task)}\[({re.escape(prefix)}-\w+)\] succeeded", journal)


def wait_completed(d: Deployment, ids: set[str], prefix: str, started: float) -> None:
    while not ids <= completed_tasks(d, prefix) or queued(d):
        assert time.monotonic() - started < 600, (
            f"{len(ids - completed_tasks(d, prefix))} tasks never ran on {d.host.name}"
        )
        time.sleep(2)


LONG_TASK_SECONDS = 30


def queue_long_task(d: Deployment, prefix: str) -> str:
    """Queue `edd.work(LONG_TASK_SECONDS)` (EDD's tasks run for minutes) with an id of `prefix`."""
    task_id = f"{prefix}-long"
    code = f"from edd import work; work.apply_async(args=({LONG_TASK_SECONDS},), task_id={task_id!r})"
    d.sh(f"set -a; . {WORKER_ENV}; set +a; cd {APP_TARGET} && {VENV}/bin/python -c {shlex.quote(code)}")
    return task_id


class EmptyWatch(threading.Thread):
    """Polls the old broker's queue once a second from `start()`; `seconds` is how long until it
    first held nothing."""

    def __init__(self, d: Deployment):
        super().__init__(daemon=True)
        self.d, self.seconds, self.done = d, None, threading.Event()

    def run(self):
        started = time.monotonic()
        while not self.done.is_set():
            if queued(self.d) == 0:
                self.seconds = time.monotonic() - started
                return
            time.sleep(1)


@pytest.fixture(scope="module")
def migrated(plugins_ready, sandbox_hosts, tmp_path_factory, request):
    (old_host,) = sandbox_hosts("edd-mg12", debian=OLD_DEBIAN)
    (new_host,) = sandbox_hosts("edd-mg13", debian=NEW_DEBIAN)
    work = tmp_path_factory.mktemp("migration")
    (work / "state").mkdir()
    stack = ProjectStack(f"m{uuid.uuid4().hex[:6]}", work, f"file://{work / 'state'}", PASSPHRASE)
    configure(stack, old_host)
    secrets = {k.split(":", 1)[1]: v.value for k, v in stack.stack.get_all_config().items() if v.secret}
    old, new = Deployment(old_host, stack, secrets), Deployment(new_host, stack, secrets)
    try:
        result, FIGURES["fresh up on the old host"] = old.up()
        assert result.summary.result == "succeeded"
        assert rabbitmq_version(old).startswith("3.10.")
        yield old, new
    finally:
        print_figures(request, f"migration Debian {OLD_DEBIAN} -> {NEW_DEBIAN}", FIGURES)
        destroy(stack)


def move_to(stack: ProjectStack, old_host, new_host, migrate: bool) -> None:
    """The stack's config for the new host (TLS: the old broker's shovel dials it), with the
    old host kept and, while `migrate`, named in broker.migrateFrom."""
    directory = tls_dir(stack)
    files = make_broker_certificates(stack.work_dir / directory, new_host.address)
    config = sandbox_config(new_host, tls=directory)
    config["hosts"] |= sandbox_config(old_host)["hosts"]
    if migrate:
        config["broker"]["migrateFrom"] = {"host": old_host.name, "drainTimeout": 600}
    stack.set_plain(config)
    stack.set_secret("brokerTlsKey", files["server.key"].read_text())


def test_queued_tasks_move_to_the_new_broker_and_run_there_exactly_once(migrated):
    old, new = migrated
    old.sh(f"systemctl stop {WORKER_UNIT}")
    producer = Producer(old, TOTAL)
    try:
        producer.wait(600)
    finally:
        producer.stop()
    ids = producer.ids()
    long_task = queue_long_task(old, producer.prefix)
    assert len(ids) == TOTAL and queued(old) == TOTAL + 1

    move_to(old.stack, old.host, new.host, migrate=True)
    started = time.monotonic()
    watch = EmptyWatch(old)
    watch.start()
    try:
        result, FIGURES["migration up"] = new.up()
    finally:
        watch.done.set()
    assert result.summary.result == "succeeded"
    # `up` returns once the shovel has emptied the old queue.
    assert queued(old) == 0 and watch.seconds is not None
    FIGURES["old queue empty after up began"] = watch.seconds
    assert rabbitmq_version(new).startswith("4.0.")

    wait_completed(new, ids, producer.prefix, started)
    FIGURES["all 2,000 tasks and the 30 s one done after up began"] = time.monotonic() - started
    # A producer still on the old host (EDD before its settings move) loses nothing either:
    # the shovel goes on until the old broker is retired.
    late = Producer(old, 50)
    late.wait(300)
    wait_completed(new, late.ids(), late.prefix, started)
    expected = ids | late.ids()
    runs = succeeded(new, producer.prefix) + succeeded(new, late.prefix)
    assert sorted(runs) == sorted(expected), "a task ran twice or not at all"
    assert not succeeded(old, producer.prefix), "the stopped worker on the old host ran tasks"
    deadline = time.monotonic() + LONG_TASK_SECONDS * 4
    while not succeeded(new, producer.prefix, "edd.work"):
        assert time.monotonic() < deadline, "the 30 s task queued on the old broker never completed on the new one"
        time.sleep(2)
    assert succeeded(new, producer.prefix, "edd.work") == [long_task]

    # Nothing secret in the engine's output or the state: passwords, the shovel's, the hashes.
    shown = "".join(new.output) + new.stack.export()
    forms = secret_forms(new.secrets | {"shovel": shovel_password(new.secrets["adminPassword"])})
    assert not [f for f in forms if f in shown] and "password_hash" not in shown

    # Nothing rotated: the services log in with the passwords they had, and guest is gone.
    assert send_task(new.host, 20, 22) == "42"
    assert new.sh("systemctl is-active flower").strip() == "active"
    users = new.sh("rabbitmqctl -q list_users --no-table-headers").split()
    assert "guest" not in users and {"edd-infra-admin", "edd_user", MIGRATION_USER} <= set(users)
    assert "deprecated" not in new.sh("rabbitmq-diagnostics -q list_deprecated_features --used || true")


def test_without_migrate_from_the_old_broker_retires_and_the_next_up_is_a_no_op(migrated):
    old, new = migrated
    move_to(old.stack, old.host, new.host, migrate=False)
    result, FIGURES["retire up"] = new.up()
    assert result.summary.result == "succeeded"
    assert old.sh("systemctl is-active rabbitmq-server", check=False).strip() == "inactive"
    assert old.sh("systemctl is-enabled rabbitmq-server", check=False).strip() == "disabled"
    assert MIGRATION_USER not in new.sh("rabbitmqctl -q list_users --no-table-headers").split()
    result, _ = new.up()
    changes = {k: v for k, v in result.summary.resource_changes.items() if k != "same"}
    assert not changes, changes
    assert send_task(new.host, 1, 2) == "3"
