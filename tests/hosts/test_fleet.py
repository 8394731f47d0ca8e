"""Workers on hosts of their own: the broker on one sandbox host, workers on others reaching
it over TLS, and the fleet scaled by config with only the affected resources changing.

Tests run in file order against one stack; the last one destroys it.
"""

from __future__ import annotations

import json
import uuid

import pytest

from sandbox import hosts as sandbox_hosts
from sandbox.deploy import configure, send_task
from edd_infra.workspace import ProjectStack
from tests.engine.conftest import PASSPHRASE

pytestmark = pytest.mark.hosts
BROKER, WORKER_HOSTS = "edd-fl", ("edd-flw1", "edd-flw2", "edd-flw3")  # short: "ve-" + name is a link name


@pytest.fixture(scope="module")
def fleet(plugins_ready, sandbox_hosts, tmp_path_factory):
    broker, *workers = sandbox_hosts(BROKER, *WORKER_HOSTS)
    work = tmp_path_factory.mktemp("fleet")
    (work / "state").mkdir()
    stack = ProjectStack(f"fleet{uuid.uuid4().hex[:6]}", work, f"file://{work / 'state'}", PASSPHRASE)
    configure(stack, broker, hardened=True, worker_hosts=(workers[0],))
    result = stack.stack.up(color="never")
    assert result.summary.result == "succeeded"
    yield stack, broker, workers
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
    worker unit and repair twin (5 resources), each removed one loses them; nothing else moves."""
    stack, broker, (w1, *more) = fleet
    base = json.loads(stack.stack.get_config("edd-infra:workers").value)
    hosts = json.loads(stack.stack.get_config("edd-infra:hosts").value)
    grown_hosts = dict(hosts, **{w.name: {"address": w.address, "user": w.user, "port": w.port, "hostKey": w.host_key}
                                 for w in more})
    grown = base + [dict(base[-1], name=f"edd-worker-{i}", host=w.name) for i, w in enumerate(more, 3)]
    added = changes(stack, {"hosts": grown_hosts, "workers": grown})
    assert added == {"same": added.get("same"), "create": 5 * len(more)}, added
    for i, w in enumerate(more, 3):
        assert sh(w, f"systemctl is-active celery-edd-worker-{i}").strip() == "active"
    assert [send_task(broker, i, 1) for i in range(12)] == [str(i + 1) for i in range(12)]
    removed = changes(stack, {"hosts": hosts, "workers": base})
    assert removed == {"same": removed.get("same"), "delete": 5 * len(more)}, removed
    for i, w in enumerate(more, 3):
        assert sandbox_hosts.run(w, f"systemctl cat celery-edd-worker-{i}", timeout=60).returncode != 0
        assert sh(w, "getent passwd celery || true").strip() == ""
    assert send_task(broker, 2, 2) == "4"
