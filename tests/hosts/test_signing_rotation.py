"""Signing-key rotation on a real host: tasks queued under the old key run after `up` rotates
the key and certificate (celerySigning.previousCertFile keeps the old certificate in every
store), and once celerySigning.previousTrustedUntil has passed the old certificate leaves the
stores and a task signed with the old key is refused.

One deployment (TLS and signing on, as the sandbox runs) on its own Debian 12 host
(`edd-sg12`), shared by the tests in file order: the second test goes on from the rotation the
first one made.
"""

from __future__ import annotations

import shlex
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from edd_infra.render.signing_files import signing_paths
from sandbox.deploy import send_task, tls_dir
from sandbox.image import APP_TARGET, VENV
from sandbox.tls import make_signing_certificate
from tests.hosts.deployment import WORKER_ENV, WORKER_UNIT, Producer, completed_tasks, deployment, print_figures

pytestmark = pytest.mark.hosts
HOST = "edd-sg12"
DEBIAN = 12
# Tasks published under the old key while the worker is stopped: all must run after the rotation.
QUEUED = 25
# A copy of the old key, certificate and store on the host, to sign with after the rotation.
OLD = "/root/old-signing"
FIGURES: dict[str, float] = {}
# celerySigning as the rotation test set it, for the test that goes on from there.
ROTATION: dict[str, str] = {}


@pytest.fixture(scope="module")
def deployed(plugins_ready, sandbox_hosts, tmp_path_factory, request):
    (host,) = sandbox_hosts(HOST, debian=DEBIAN)
    try:
        with deployment(host, tmp_path_factory.mktemp("signing"), prefix="sign", hardened=True) as d:
            FIGURES["fresh up"] = d.fresh_up_seconds
            yield d
    finally:
        print_figures(request, "signing rotation", FIGURES)


def utc(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


# Flower's files are its own (0640 root:flower, issue 20); the worker's store is world-readable
# certificates only.
STORE_MODES = {WORKER_UNIT: "644 root root", "flower": "640 root flower"}


def store(d, service: str) -> dict[str, str]:
    """The files in a service's certificate store: name -> 'mode owner group'."""
    directory = signing_paths(service)[2].rsplit("/", 1)[0]
    lines = d.sh(f"stat -c '%n %a %U %G' {directory}/*").splitlines()
    return {line.split()[0].rsplit("/", 1)[1]: " ".join(line.split()[1:]) for line in lines}


def queued(d) -> int:
    """Messages in the app queue, as the broker counts them now (not the API's 5 s samples)."""
    out = d.sh("rabbitmqctl -q list_queues -p /edd name messages --no-table-headers")
    return int(dict(line.split("\t") for line in out.splitlines())["edd"])


def set_signing(d, **signing) -> None:
    """celerySigning as given (the certificates relative to the project directory)."""
    d.stack.set_plain({"celerySigning": signing})


def journal_since(d, since: str) -> str:
    return d.sh(f"journalctl -u {WORKER_UNIT} -o cat --no-pager --since=@{since}", timeout=120)


def test_tasks_queued_under_the_old_key_run_after_the_rotation(deployed):
    d = deployed
    worker_store = signing_paths(WORKER_UNIT)[2].rsplit("/", 1)[0]
    assert store(d, WORKER_UNIT) == {"cert.pem": "644 root root"}
    # Keep the old key for the second test (a producer that never got the new one).
    key, cert, _, _ = signing_paths(WORKER_UNIT)
    d.sh(f"mkdir -p {OLD}/store && cp {key} {cert} {OLD}/ && cp {cert} {OLD}/store/")

    # The worker is down (say, the host was being patched) while EDD queues tasks under the old key.
    d.sh(f"systemctl stop {WORKER_UNIT}")
    producer = Producer(d, QUEUED)
    producer.wait(timeout=120)
    assert queued(d) == QUEUED

    # The operator rotates: new key and certificate, the old certificate trusted for a day more.
    project = d.stack.work_dir
    tls = tls_dir(d.stack)
    new = make_signing_certificate(project / ".pulumi-state" / f"rotated-{uuid.uuid4().hex[:6]}")
    d.stack.set_secret("celerySigningKey", new["signing.key"].read_text())
    ROTATION.update(
        certFile=str(new["signing.pem"].relative_to(project)),
        previousCertFile=f"{tls}/signing.pem",
        previousTrustedUntil=utc(datetime.now(timezone.utc) + timedelta(days=1)),
    )
    set_signing(d, **ROTATION)
    since = d.sh("date +%s").strip()
    result, seconds = d.up()
    FIGURES["rotating up"] = seconds
    assert result.summary.result == "succeeded", result.summary

    # Every store holds both certificates; the key and certificate are the new ones.
    old_cert = (project / tls / "signing.pem").read_text()
    for service in (WORKER_UNIT, "flower"):
        mode = STORE_MODES[service]
        assert store(d, service) == {"cert.pem": mode, "previous.pem": mode}, service
        stored = signing_paths(service)
        assert d.sh(f"cat {stored[3]}") == old_cert
        assert d.sh(f"cat {stored[1]}") == d.sh(f"cat {stored[2]}") == new["signing.pem"].read_text()
    assert d.sh(f"ls {worker_store}").split() == ["cert.pem", "previous.pem"]

    # Every task queued under the old key runs: none is dropped as untrusted.
    started = time.monotonic()
    ids = producer.ids()
    while not ids <= completed_tasks(d, producer.prefix) or queued(d):
        assert time.monotonic() - started < 180, (
            f"{len(ids - completed_tasks(d, producer.prefix))} of {QUEUED} old-key tasks never ran; "
            f"journal: {journal_since(d, since)[-3000:]}"
        )
        time.sleep(2)
    FIGURES[f"{QUEUED} old-key tasks run"] = time.monotonic() - started
    journal = journal_since(d, since)
    # No task dropped: a refused task would log "Can't decode message body" for its signed type.
    # The workers also refuse the keyless Flower's unsigned (JSON) control broadcasts: by design.
    refused = [
        line for line in journal.splitlines() if "decode message body" in line and "application/json" not in line
    ]
    assert not refused and "Unknown certificate" not in journal, journal[-3000:]
    # And the new key signs: the producer's environment file was rewritten with it.
    assert send_task(d.host, 5, 6) == "11"


OLD_KEY_TASK = "from edd import add; add.apply_async((40, 2), task_id={task_id!r}, ignore_result=True)"


def test_past_its_time_the_old_certificate_leaves_the_stores_and_old_key_tasks_are_refused(deployed):
    d = deployed
    assert ROTATION, "goes on from the rotation test"
    worker_pid = d.main_pid(WORKER_UNIT)
    set_signing(d, **{**ROTATION, "previousTrustedUntil": utc(datetime.now(timezone.utc) - timedelta(minutes=1))})
    d.output.clear()
    result, seconds = d.up()
    FIGURES["up past previousTrustedUntil"] = seconds
    assert result.summary.result == "succeeded", result.summary
    shown = "".join(d.output)
    assert (
        "previousTrustedUntil" in shown and "has passed" in shown and "remove celerySigning.previousCertFile" in shown
    )

    # The previous certificate is gone from every store, and the worker restarted on that.
    for service in (WORKER_UNIT, "flower"):
        assert store(d, service) == {"cert.pem": STORE_MODES[service]}, service
    assert d.main_pid(WORKER_UNIT) != worker_pid

    # A producer still signing with the old key: the worker refuses its task (and acks it:
    # Celery drops what it cannot verify, which is what the overlap was for).
    since = d.sh("date +%s").strip()
    task_id = f"old-{uuid.uuid4().hex[:8]}"
    env = (
        f"set -a; . {WORKER_ENV}; CELERY_SECURITY_KEY={OLD}/key.pem; CELERY_SECURITY_CERTIFICATE={OLD}/cert.pem; "
        f"CELERY_SECURITY_CERT_STORE='{OLD}/store/*.pem'; set +a"
    )
    d.sh(f"{env}; cd {APP_TARGET} && {VENV}/bin/python -c {shlex.quote(OLD_KEY_TASK.format(task_id=task_id))}")
    deadline = time.monotonic() + 60
    while task_id not in (journal := journal_since(d, since)):
        assert time.monotonic() < deadline, f"the worker never saw {task_id}: {journal[-2000:]}"
        time.sleep(1)
    assert "Unknown certificate" in journal, journal[-3000:]
    assert f"edd.add[{task_id}] succeeded" not in journal
    assert queued(d) == 0
    # The new key still signs.
    assert send_task(d.host, 1, 2) == "3"

    # Nothing left to do: a second `up` changes nothing on the host.
    result, _ = d.up()
    changes = {k: v for k, v in (result.summary.resource_changes or {}).items() if k != "same"}
    assert changes == {}, changes
