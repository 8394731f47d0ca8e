"""Workers on hosts of their own: the broker on one sandbox host, workers on others reaching
it over TLS, and the fleet scaled by config with only the affected resources changing.

Tests run in file order against one stack; the last one destroys it.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from sandbox import hosts as sandbox_hosts
from sandbox.deploy import configure, random_secrets, send_task
from sandbox.probes import ConsumerSampler
from edd_infra.workspace import ProjectStack
from tests.engine.conftest import PASSPHRASE
from tests.hosts.deployment import WORKER_ENV, Deployment, Producer, print_figures

pytestmark = pytest.mark.hosts
FIGURES: dict[str, float] = {}
BROKER, WORKER_HOSTS = "edd-fl", ("edd-flw1", "edd-flw2", "edd-flw3")  # short: "ve-" + name is a link name


@pytest.fixture(scope="module")
def fleet(plugins_ready, sandbox_hosts, tmp_path_factory, request):
    broker, *workers = sandbox_hosts(BROKER, *WORKER_HOSTS)
    work = tmp_path_factory.mktemp("fleet")
    (work / "state").mkdir()
    stack = ProjectStack(f"fleet{uuid.uuid4().hex[:6]}", work, f"file://{work / 'state'}", PASSPHRASE)
    configure(stack, broker, hardened=True, worker_hosts=(workers[0],))
    result = stack.stack.up(color="never")
    assert result.summary.result == "succeeded"
    yield stack, broker, workers
    print_figures(request, "fleet", FIGURES)
    stack.cli_run("state", "unprotect", "--all", "--yes", check=False)
    try:
        stack.stack.destroy(color="never")
    except Exception:  # noqa: BLE001 - the hosts are thrown away anyway
        pass


def sh(host, command: str) -> str:
    result = sandbox_hosts.run(host, command, timeout=120)
    assert result.returncode == 0, f"{command}: {result.stderr[-800:]}"
    return result.stdout


def processed_by(host, worker: str) -> int:
    """How many tasks the worker on `host` has finished, from its journal."""
    journal = sh(host, f"journalctl -u celery-{worker} --no-pager -o cat")
    return sum(1 for line in journal.splitlines() if "Task edd.add[" in line and " succeeded " in line)


def test_remote_worker_consumes_over_tls(fleet):
    stack, broker, (w1, *_) = fleet
    assert sh(w1, "systemctl is-active celery-edd-worker-2").strip() == "active"
    env = sh(w1, "cat /etc/edd-infra/celery-edd-worker-2.env")
    assert f"@{broker.address}:5671//edd" in env and "amqps://" in env
    # Its connection is TLS on the broker's address; plain AMQP there is refused.
    established = sh(broker, "ss -Htn state established '( sport = :5671 )'")
    assert w1.address in established
    listeners = {line.split()[3] for line in sh(broker, "ss -Hltn").splitlines()}
    assert {a for a in listeners if a.endswith(":5672")} == {"127.0.0.1:5672", "[::1]:5672"}
    before = processed_by(w1, "edd-worker-2")
    results = [send_task(broker, i, 1) for i in range(8)]
    assert results == [str(i + 1) for i in range(8)]
    assert processed_by(w1, "edd-worker-2") > before, "the remote worker took none of 8 tasks"


def changes(stack, config) -> dict:
    stack.set_plain(config)
    return stack.stack.up(color="never").summary.resource_changes


def test_scaling_the_fleet_changes_only_the_added_and_removed_workers(fleet):
    """From one worker host to three and back: each added host gets its service account,
    worker unit and repair twin (5 resources), each removed one loses them; the broker's
    command rewrites the alert rules (they expect that many workers) without restarting
    RabbitMQ; nothing else moves."""
    stack, broker, (w1, *more) = fleet
    rabbit = sh(broker, "systemctl show -p MainPID --value rabbitmq-server").strip()
    base = json.loads(stack.stack.get_config("edd-infra:workers").value)
    hosts = json.loads(stack.stack.get_config("edd-infra:hosts").value)
    grown_hosts = dict(
        hosts, **{w.name: {"address": w.address, "user": w.user, "port": w.port, "hostKey": w.host_key} for w in more}
    )
    grown = base + [dict(base[-1], name=f"edd-worker-{i}", host=w.name) for i, w in enumerate(more, 3)]
    added = changes(stack, {"hosts": grown_hosts, "workers": grown})
    # Updated: the broker's command (the alert rules expect more workers) and the health probe.
    assert added == {"same": added.get("same"), "create": 5 * len(more), "update": 2}, added
    rules = sh(broker, "cat /etc/edd-infra/prometheus/edd-infra.rules.yml")
    assert f"flower_worker_online == 1) or vector(0)) < {len(grown)}" in rules
    for i, w in enumerate(more, 3):
        assert sh(w, f"systemctl is-active celery-edd-worker-{i}").strip() == "active"
    # The `health` output counts them: every worker answered, each consumes from `edd`.
    health = stack.stack.outputs()["health"].value
    assert health["workersAnswered"] == len(grown), health
    assert health["broker"]["queue"]["consumers"] == len(grown), health
    assert health["broker"]["workersConnected"] == sorted(f"{w['name']}@{w['host']}" for w in grown), health
    assert [send_task(broker, i, 1) for i in range(12)] == [str(i + 1) for i in range(12)]
    removed = changes(stack, {"hosts": hosts, "workers": base})
    assert removed == {"same": removed.get("same"), "delete": 5 * len(more), "update": 2}, removed
    assert sh(broker, "systemctl show -p MainPID --value rabbitmq-server").strip() == rabbit
    for i, w in enumerate(more, 3):
        assert sandbox_hosts.run(w, f"systemctl cat celery-edd-worker-{i}", timeout=60).returncode != 0
        assert sh(w, "getent passwd celery || true").strip() == ""
    assert send_task(broker, 2, 2) == "4"


def completed(hosts_and_units, prefix: str) -> list[str]:
    """Every `succeeded` line for tasks of `prefix` in the journals of the given worker units."""
    runs = []
    for host, unit in hosts_and_units:
        journal = sh(host, f"journalctl -u {unit} --no-pager -o cat | grep -F '[{prefix}-' || true")
        runs += re.findall(rf"edd\.work\[({prefix}-\d+)\] succeeded", journal)
    return runs


def test_a_rotation_restarts_the_fleet_one_worker_at_a_time_and_the_queue_keeps_consumers(fleet):
    """Four workers (one on the broker host, three on their own), 1 s tasks flowing, appPassword
    rotated: each worker restarts after the one before it answers again, so the `edd` queue
    never has no consumer, and every task runs once."""
    stack, broker, workers = fleet
    base = json.loads(stack.stack.get_config("edd-infra:workers").value)
    hosts = json.loads(stack.stack.get_config("edd-infra:hosts").value)
    grown_hosts = dict(
        hosts,
        **{w.name: {"address": w.address, "user": w.user, "port": w.port, "hostKey": w.host_key} for w in workers[1:]},
    )
    grown = base + [dict(base[-1], name=f"edd-worker-{i}", host=w.name) for i, w in enumerate(workers[1:], 3)]
    stack.set_plain({"hosts": grown_hosts, "workers": grown})
    assert stack.stack.up(color="never").summary.result == "succeeded"
    units = [(broker, "celery-edd-worker-1")] + [(w, f"celery-edd-worker-{i}") for i, w in enumerate(workers, 2)]
    secrets = {k.split(":", 1)[1]: v.value for k, v in stack.stack.get_all_config().items() if v.secret}
    d = Deployment(broker, stack, secrets)
    producer = Producer(d, 240, pace=0.1, work_seconds=1)
    try:
        sampler = ConsumerSampler(broker, WORKER_ENV)
        time.sleep(3)  # tasks are running on every worker
        stack.set_secret("appPassword", random_secrets()["appPassword"])
        started = time.monotonic()
        result = stack.stack.up(color="never")
        FIGURES["rotation up, 4 workers in turn"] = time.monotonic() - started
        assert result.summary.result == "succeeded"
        lowest, longest_gap = sampler.stop()
        FIGURES["fewest consumers on edd"], FIGURES["longest time with none"] = lowest, longest_gap
        assert lowest >= 1 and longest_gap == 0.0, (lowest, longest_gap)
        producer.wait(300)
    finally:
        producer.stop()
    ids = producer.ids()
    deadline = time.monotonic() + 300
    while set(completed(units, producer.prefix)) != ids:
        assert time.monotonic() < deadline, f"{len(ids - set(completed(units, producer.prefix)))} tasks never ran"
        time.sleep(3)
    runs = completed(units, producer.prefix)
    assert sorted(runs) == sorted(ids), "a task ran twice"
    # In turn: each worker began to stop only once the one before it was running again (the
    # hosts share one kernel, so their monotonic clocks compare).
    times = [
        dict(
            line.split("=", 1)
            for line in sh(
                host, f"systemctl show -p ActiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic {unit}"
            ).split()
        )
        for host, unit in units
    ]
    entered = [int(t["ActiveEnterTimestampMonotonic"]) for t in times]
    left = [int(t["ActiveExitTimestampMonotonic"]) for t in times]
    assert all(left[i + 1] >= entered[i] for i in range(len(units) - 1)), times
