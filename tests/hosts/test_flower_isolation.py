"""Flower isolated (issue #20), on a real hardened deployment per Debian release (`edd-fi13`,
`edd-fi12`): its own account, files neither it nor the workers can read of the other, no
signing key unless `flower.canSendTasks`, a private database, the UI over HTTPS from the stack's
CA. Each test fails if its door opens again; the last turns canSendTasks on and off again.
"""

from __future__ import annotations

import json

import pytest

from tests.hosts import flower_isolation as iso
from tests.hosts.deployment import deployment, print_figures

pytestmark = pytest.mark.hosts
HOSTS = {13: "edd-fi13", 12: "edd-fi12"}
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module", params=sorted(HOSTS, reverse=True), ids=lambda debian: f"debian{debian}")
def deployed(request, plugins_ready, sandbox_hosts, tmp_path_factory):
    (host,) = sandbox_hosts(HOSTS[request.param], debian=request.param)
    with deployment(host, tmp_path_factory.mktemp(f"fi{request.param}"), prefix="fi", hardened=True) as d:
        FIGURES[f"fresh up, Debian {request.param}"] = d.fresh_up_seconds
        yield d
    print_figures(request, "flower isolation", FIGURES)
    FIGURES.clear()


def test_flower_runs_as_its_own_user_and_group(deployed):
    iso.check_own_account(deployed)


def test_flower_cannot_read_the_workers_files(deployed):
    iso.check_workers_files_refused_to_flower(deployed)


def test_the_workers_cannot_read_flowers_files(deployed):
    iso.check_flowers_files_refused_to_workers(deployed)


def test_flower_holds_no_signing_key_and_cannot_sign(deployed):
    iso.check_no_signing_key(deployed)
    iso.check_cannot_sign_tasks(deployed)


def test_without_the_key_flower_still_sees_the_worker_online(deployed):
    iso.check_dashboard_sees_the_worker_online(deployed)


def test_flower_serves_https_verified_against_the_stacks_ca(deployed):
    iso.check_https_from_the_stack_ca(deployed)
    targets = deployed.stack.stack.outputs()["scrapeTargets"].value
    (flower,) = [t for t in targets if ":5555/" in t["url"]]
    assert flower["url"] == f"https://{deployed.host.address}:5555/metrics" and flower["caFile"] == "broker.tls.caFile"
    assert iso.flower_request(deployed, "metrics", auth=False)[0] == 200


def test_flowers_database_is_private(deployed):
    iso.check_private_database(deployed)


def set_can_send_tasks(d, value: bool) -> None:
    current = d.stack.stack.get_config("edd-infra:flower").value
    flower = json.loads(current) if isinstance(current, str) else current
    d.stack.set_plain({"flower": {**flower, "canSendTasks": value}})


def test_can_send_tasks_gives_flower_the_key_and_taking_it_away_removes_it(deployed):
    d = deployed
    set_can_send_tasks(d, True)
    result, FIGURES[f"up with canSendTasks, {d.host.name}"] = d.up()
    assert result.summary.result == "succeeded"
    assert d.sh(f"stat -c '%a %U %G' {iso.FLOWER_KEY}").split() == ["640", "root", "flower"]
    assert f"CELERY_SECURITY_KEY={iso.FLOWER_KEY}" in d.sh(f"cat {iso.FLOWER_ENV}")
    assert iso.refused_as(d, "celery", iso.FLOWER_KEY)
    signs, output = iso.flower_signs(d)  # Flower's app, in its environment, as its user
    assert signs, output[-1500:]
    # A send from its API still fails: the broker refuses Flower's read-only (monitoring) user,
    # which Flower reports instead of a task id; signing is not what stops it now.
    status, journal = iso.send_from_flower(d, "ACCESS_REFUSED")
    assert status >= 500 and "ACCESS_REFUSED" in journal and "no signing key" not in journal, journal[-1500:]
    set_can_send_tasks(d, False)
    result, _ = d.up()
    assert result.summary.result == "succeeded"
    iso.check_no_signing_key(d)
    iso.check_cannot_sign_tasks(d)
    again, _ = d.up()
    assert set(again.summary.resource_changes) == {"same"}, again.summary.resource_changes
