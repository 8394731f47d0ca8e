"""RabbitMQ from "its own repository", pinned, and upgraded by a config change (issue 17), on a
real Debian 13 host.

The repository is made here (tests/hosts/apt_repo.py): Debian's rabbitmq-server repackaged
as two newer builds of the same series, one good and one whose server never starts, signed
with a throw-away key and served on the host's link. The stack installs Debian's build with
the repository configured (`broker.aptSource`), then:
- upgrades to the good build while a producer with publisher confirms sends 1,000 tasks and
  a 30 s task runs: no confirmed task is lost; a task may run twice only if it was running when
  the broker stopped (its ack went with the connection), and how many did is printed, as is how
  often the long one completed and the broker's down-time;
- "upgrades" to the broken build: `up` fails naming the broker, the old package is put back and
  started, and every service still logs in and runs tasks;
- asks for a jump RabbitMQ does not support (4.0 -> 4.3): refused by `preview` (the stack reads
  the version it deployed last from its own output) and by `up` before anything changes.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
from pulumi import automation as auto

from sandbox.deploy import configure, sandbox_config, send_task
from sandbox.image import ensure_image
from edd_infra.workspace import ProjectStack
from tests.engine.conftest import PASSPHRASE
from tests.hosts import apt_repo
from tests.hosts.deployment import (
    LONG_TASK_SECONDS,
    UNITS,
    WORKER_UNIT,
    Deployment,
    Producer,
    destroy,
    print_figures,
    start_long_task,
    wait_all_completed,
    wait_long_task,
)

pytestmark = pytest.mark.hosts
DEBIAN = 13
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def upgradable(plugins_ready, sandbox_hosts, tmp_path_factory, request):
    missing = apt_repo.missing_tools()
    if missing:
        pytest.skip(f"hosts tier skipped: building a test apt repository needs {', '.join(missing)}")
    (host,) = sandbox_hosts("edd-upg", debian=DEBIAN)
    work = tmp_path_factory.mktemp("upgrade")
    base = apt_repo.debian_deb(ensure_image(DEBIAN))
    debian_version = apt_repo.deb_version(base)
    good, broken = f"{debian_version}+edd1", f"{debian_version}+edd2"
    repo, key = apt_repo.build_repo(base, {good: False, broken: True}, work)
    (work / "repo.asc").write_text(key)
    gateway = host.address.rsplit(".", 1)[0] + ".1"  # this machine's end of the host's link
    with apt_repo.serve(repo, gateway) as url:
        (work / "state").mkdir()
        stack = ProjectStack(f"u{uuid.uuid4().hex[:6]}", work, f"file://{work / 'state'}", PASSPHRASE)
        configure(stack, host)
        broker = sandbox_config(host)["broker"]
        source = {"url": url, "suite": apt_repo.SUITE, "keyFile": str(work / "repo.asc")}

        def pin(version: str) -> None:
            stack.set_plain({"broker": dict(broker, aptSource=source, packageVersion=version)})

        pin(debian_version)
        secrets = {k.split(":", 1)[1]: v.value for k, v in stack.stack.get_all_config().items() if v.secret}
        d = Deployment(host, stack, secrets)
        d.pin, d.versions = pin, {"debian": debian_version, "good": good, "broken": broken}
        try:
            result, _ = d.up()
            assert result.summary.result == "succeeded"
            yield d
        finally:
            print_figures(request, f"upgrade on Debian {DEBIAN}", FIGURES)
            destroy(stack)


def installed(d: Deployment) -> str:
    return d.sh("dpkg-query -W -f='${Version}' rabbitmq-server").strip()


def succeeded_counts(d: Deployment, prefix: str) -> dict[str, int]:
    journal = d.sh(f"journalctl -u {WORKER_UNIT} -o cat --no-pager | grep -F '[{prefix}-' || true", timeout=300)
    counts: dict[str, int] = {}
    for task_id in re.findall(rf"edd\.add\[({re.escape(prefix)}-\d+)\] succeeded", journal):
        counts[task_id] = counts.get(task_id, 0) + 1
    return counts


def broker_downtime(d: Deployment, since: float) -> float:
    """Seconds from the broker's last stop to its next start, from its journal."""
    lines = d.sh(f"journalctl -u rabbitmq-server -o short-unix --no-pager --since=@{int(since)}").splitlines()
    stops = [float(line.split()[0]) for line in lines if "Stopping rabbitmq-server" in line]
    starts = [float(line.split()[0]) for line in lines if "Started rabbitmq-server" in line]
    assert stops and starts, "\n".join(lines[-20:])
    return max(starts) - min(stops)


def test_the_repository_is_configured_pinned_and_held(upgradable):
    d = upgradable
    assert installed(d) == d.versions["debian"]
    sources = d.sh("cat /etc/apt/sources.list.d/edd-infra-rabbitmq.sources")
    assert "Signed-By: /etc/apt/keyrings/edd-infra-rabbitmq.asc" in sources
    policy = d.sh("apt-cache policy rabbitmq-server")
    # apt sees the repository's newer builds, yet the pin keeps the configured one.
    assert d.versions["good"] in policy and f"Candidate: {d.versions['debian']}" in policy, policy
    assert "rabbitmq-server" in d.sh("apt-mark showhold").split()


# Tasks running when the broker stops can run twice (their acks are lost with the connection):
# at most what the worker runs at once (concurrency 2) plus a finished one or two whose ack was in flight.
MAX_RERUN = 4


def test_an_upgrade_under_load_loses_no_confirmed_task(upgradable):
    d = upgradable
    total = 1000
    producer = Producer(d, total, pace=0.05)
    try:
        while producer.published() < total // 5:
            time.sleep(0.5)
        assert producer.running(), "the producer finished before the upgrade: nothing flowed through it"
        long_task = start_long_task(d, LONG_TASK_SECONDS)
        since = float(d.sh("date +%s.%N"))
        d.pin(d.versions["good"])
        started = time.monotonic()
        result, seconds = d.up()
        assert result.summary.result == "succeeded"
        FIGURES["upgrade up"] = seconds
        FIGURES["broker down"] = broker_downtime(d, since)
        producer.wait(600)
        ids = producer.ids()
        assert len(ids) == total
        FIGURES["all tasks done after up"] = (
            wait_all_completed(d, ids, producer.prefix) + time.monotonic() - started - seconds
        )
        FIGURES["producer retries"] = producer.retries()
    finally:
        producer.stop()
    counts = succeeded_counts(d, producer.prefix)
    assert set(counts) == ids, f"{len(ids - set(counts))} confirmed tasks never ran"
    reruns = {k: v for k, v in counts.items() if v != 1}
    FIGURES["short tasks run twice"] = len(reruns)
    assert len(reruns) <= MAX_RERUN and set(reruns.values()) <= {2}, reruns
    # The task that was running when the broker went away is not lost (at least once).
    runs = wait_long_task(d, long_task, LONG_TASK_SECONDS * 4)
    FIGURES["30 s task in flight: times it completed"] = runs
    # Its run was cut when the connection went (worker_cancel_long_running_tasks_on_connection_loss):
    # the broker's second delivery is the one that completes.
    assert runs == 1
    assert installed(d) == d.versions["good"]
    flags = d.sh("rabbitmqctl -q list_feature_flags name state stability --no-table-headers").splitlines()
    assert not [f for f in flags if f.split()[1] != "enabled" and "experimental" not in f], flags


def test_a_build_that_does_not_start_is_rolled_back_and_every_service_logs_in(upgradable):
    d = upgradable
    d.pin(d.versions["broken"])
    with pytest.raises(auto.CommandError) as failed:
        d.up()
    text = str(failed.value)
    assert "broker-server" in text and f"putting rabbitmq-server {d.versions['good']} back" in text, text[-3000:]
    assert installed(d) == d.versions["good"]
    for unit in UNITS:
        assert d.sh(f"systemctl is-active {unit}").strip() == "active"
    assert send_task(d.host, 20, 22) == "42"  # the worker's account logs in and runs a task
    d.pin(d.versions["good"])
    result, _ = d.up()
    assert result.summary.result == "succeeded"


def test_a_jump_rabbitmq_does_not_support_is_refused_before_anything_changes(upgradable):
    d = upgradable
    pid = d.main_pid("rabbitmq-server")
    d.pin("4.3.6-1")
    try:
        for attempt in (d.stack.stack.preview, d.up):  # preview says it first; up stops before any resource
            with pytest.raises(auto.CommandError) as refused:
                attempt()
            text = str(refused.value)
            assert re.search(
                r"edd-infra:broker\.packageVersion: \S+ -> 4\.3\.6-1 skips a release series: RabbitMQ "
                r"upgrades one minor series at a time \(4\.0 -> 4\.1\)",
                text,
            ), text[-2000:]
        assert d.main_pid("rabbitmq-server") == pid and installed(d) == d.versions["good"]
    finally:
        d.pin(d.versions["good"])
    again, _ = d.up()
    assert again.summary.result == "succeeded"
