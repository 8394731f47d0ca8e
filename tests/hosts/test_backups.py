"""Definitions backups on a real broker host: the timer, what a backup holds, and a restore
after the broker's data is destroyed (issue 19).

One deployment per Debian release on its own sandbox host (`edd-bk12`: RabbitMQ 3.10,
`edd-bk13`: 4.0), tests in file order: the backup test leaves backups that the restore test
restores from.
"""

from __future__ import annotations

import json
import time

import pytest

from edd_infra.render.broker_backups import BACKUP_DIR
from sandbox.deploy import send_task
from tests.hosts.deployment import amqp_login, deployment, print_figures

pytestmark = pytest.mark.hosts
KEEP = 3
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module", params=[12, 13], ids=["debian12", "debian13"])
def deployed(plugins_ready, sandbox_hosts, tmp_path_factory, request):
    (host,) = sandbox_hosts(f"edd-bk{request.param}", debian=request.param)
    try:
        with deployment(host, tmp_path_factory.mktemp("backups"), prefix="bk") as d:
            d.stack.set_plain({"backups": {"keep": KEEP, "schedule": "*-*-* 03:00"}})
            result, _ = d.up()
            assert result.summary.result == "succeeded"
            yield d
    finally:
        print_figures(request, f"backups, Debian {request.param}", FIGURES)


def backups(d) -> list[str]:
    return d.sh(f"ls -1 {BACKUP_DIR}").split()


def test_the_timer_keeps_the_newest_backups_each_with_every_definition_root_only(deployed):
    d = deployed
    assert d.sh("systemctl is-enabled edd-infra-backup.timer").strip() == "enabled"
    assert d.sh("systemctl is-active edd-infra-backup.timer").strip() == "active"
    assert "03:00:00" in d.sh("systemctl show -p TimersCalendar edd-infra-backup.timer")
    for _ in range(KEEP + 1):  # what the timer starts, started by hand: one run each
        started = time.monotonic()
        d.sh("systemctl start edd-infra-backup.service")
        FIGURES["one backup took"] = time.monotonic() - started
        time.sleep(1.1)  # file names carry the second
    names = backups(d)
    digest = d.sh("cat /var/lib/edd-infra/manifests/*.sha256 | sha256sum | cut -c1-12").strip()
    assert len(names) == KEEP and all(n.startswith("definitions-") and n.endswith(f"-{digest}.json") for n in names)
    assert d.sh(f"stat -c '%a %U' {BACKUP_DIR} {BACKUP_DIR}/{names[-1]}").split("\n")[:2] == ["700 root", "600 root"]
    definitions = json.loads(d.sh(f"cat {BACKUP_DIR}/{names[-1]}"))
    FIGURES["export size (bytes)"] = len(json.dumps(definitions))
    users = {u["name"]: u for u in definitions["users"]}
    assert {"edd-infra-admin", "edd_user", "bunny"} <= set(users) and "guest" not in users
    assert all(users[u]["password_hash"] for u in ("edd-infra-admin", "edd_user", "bunny"))
    assert "/edd" in {v["name"] for v in definitions["vhosts"]}
    assert {(p["user"], p["vhost"]) for p in definitions["permissions"]} >= {("edd_user", "/edd"), ("bunny", "/edd")}
    assert "edd-infra-app-queue" in {p["name"] for p in definitions["policies"]}
    assert {"edd", "edd.dead-letter"} <= {q["name"] for q in definitions["queues"]}
    assert {"edd", "edd.dead-letter"} <= {x["name"] for x in definitions["exchanges"]}
    assert definitions["bindings"]


def test_a_broker_whose_data_is_destroyed_comes_back_from_the_latest_backup(deployed):
    """The node's data directory is deleted (as on a fresh host): it starts empty, with guest.
    `edd-infra-restore` brings back every user with its password, the vhost, the queues and
    the policy; the next `up` then changes nothing, and tasks flow again."""
    d = deployed
    d.sh(
        "systemctl stop rabbitmq-server && rm -rf /var/lib/rabbitmq/mnesia && systemctl start rabbitmq-server",
        timeout=300,
    )
    assert "guest" in d.sh("rabbitmqctl -q list_users --no-table-headers")
    assert "edd_user" not in d.sh("rabbitmqctl -q list_users --no-table-headers")
    started = time.monotonic()
    out = d.sh("edd-infra-restore", timeout=300)
    FIGURES["restore took"] = time.monotonic() - started
    assert f"restored {BACKUP_DIR}/{backups(d)[-1]}" in out
    users = d.sh("rabbitmqctl -q list_users --no-table-headers").split()
    assert "guest" not in users and {"edd-infra-admin", "edd_user", "bunny"} <= set(users)
    assert amqp_login(d, "edd_user", d.secrets["appPassword"])
    assert amqp_login(d, "bunny", d.secrets["flowerBrokerPassword"])
    assert d.management_get("whoami")["name"] == "edd-infra-admin"
    result, _ = d.up()
    assert set(result.summary.resource_changes) == {"same"}, result.summary.resource_changes
    assert send_task(d.host, 20, 22) == "42"  # the worker reconnected with its password
