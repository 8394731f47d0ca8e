"""Checks that Flower is isolated on a deployed host: its own account, its own files, no
signing key, a private database, HTTPS verified against the stack's CA. Each fails if its door
opens again. Shared by the core suite (deploy_suite.py) and test_flower_isolation.py; `d` is
either suite's deployment (`sh`, `host`, `secrets`, `ca_file`, `stack`).
"""

from __future__ import annotations

import base64
import json
import shlex
import ssl
import time
import urllib.error
import urllib.request

import pytest

from edd_infra.components.flower_service import flower_tls_paths
from sandbox import hosts as sandbox_hosts
from sandbox.deploy import WORKER

WORKER_ENV = f"/etc/edd-infra/celery-{WORKER}.env"
WORKER_KEY = f"/etc/edd-infra/signing/celery-{WORKER}/key.pem"
FLOWER_KEY = "/etc/edd-infra/signing/flower/key.pem"
FLOWER_ENV = "/etc/edd-infra/flower.env"
# Flower's secret-bearing files, and the directories of its own that hold more.
FLOWER_FILES = ("/etc/edd-infra/flowerconfig.py", FLOWER_ENV, *flower_tls_paths())
FLOWER_DIRS = ("/etc/edd-infra/signing/flower", "/etc/edd-infra/tls/flower")
STATE_DIR = "/var/lib/flower"


def refused_as(d, user: str, path: str) -> bool:
    """`runuser -u USER -- cat PATH` fails with a permission error (and the file exists)."""
    d.sh(f"test -e {shlex.quote(path)}")
    result = sandbox_hosts.run(d.host, f"runuser -u {shlex.quote(user)} -- cat {shlex.quote(path)}", timeout=60)
    return result.returncode != 0 and "Permission denied" in result.stderr


def flower_files(d) -> list[str]:
    """Every file Flower has under /etc/edd-infra (config, env, TLS, signing)."""
    found = d.sh(f"find {' '.join(FLOWER_DIRS)} -type f 2>/dev/null; true").split()
    return sorted(set(found) | set(FLOWER_FILES))


def check_own_account(d) -> None:
    """Flower runs as flower:flower; neither it nor the workers' account is in the other's group."""
    shown = dict(line.split("=", 1) for line in d.sh("systemctl show -p User -p Group flower").split())
    assert shown == {"User": "flower", "Group": "flower"}, shown
    pid = d.sh("systemctl show -p MainPID --value flower").strip()
    assert d.sh(f"ps -o user=,group= -p {pid}").split() == ["flower", "flower"]
    assert d.sh("id -Gn flower").split() == ["flower"]
    assert "flower" not in d.sh("id -Gn celery").split()


def check_workers_files_refused_to_flower(d) -> None:
    for path in (WORKER_ENV, WORKER_KEY):
        assert refused_as(d, "flower", path), f"Flower's user can read {path}"


def check_flowers_files_refused_to_workers(d) -> None:
    files = flower_files(d)
    assert len(files) >= 7, files  # config, env, TLS cert/key/CA, signing cert and store
    for path in files:
        assert d.sh(f"stat -c '%a %U %G' {path}").split() == ["640", "root", "flower"], path
        assert refused_as(d, "celery", path), f"the workers' user can read {path}"
    for path in d.sh(f"find {STATE_DIR} -type f").split():
        assert refused_as(d, "celery", path), f"the workers' user can read {path}"


def check_no_signing_key(d) -> None:
    """No key file, no key path in its env file or its process, the key's text in none of its files."""
    d.sh(f"! test -e {FLOWER_KEY}")
    env = d.sh(f"cat {FLOWER_ENV}")
    assert "CELERY_SECURITY_KEY" not in env
    assert "CELERY_SECURITY_CERT_STORE=" in env  # it still verifies
    pid = d.sh("systemctl show -p MainPID --value flower").strip()
    assert "CELERY_SECURITY_KEY" not in d.sh(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    key_body = "".join(d.secrets["celerySigningKey"].strip().splitlines()[1:-1])[:64]
    assert len(key_body) == 64
    paths = " ".join(flower_files(d) + [STATE_DIR])
    hits = d.sh(f"grep -rlF -- {shlex.quote(key_body)} {paths} 2>/dev/null; true").split()
    assert hits == [], f"the signing key is in {hits}"


def check_private_database(d) -> None:
    """Flower writes its database at stop: restart it, then every file there is 0600 flower."""
    d.sh("systemctl restart flower")
    assert d.sh(f"stat -c '%a %U %G' {STATE_DIR}").split() == ["700", "flower", "flower"]
    files = d.sh(f"find {STATE_DIR} -type f").split()
    assert any(f.startswith(f"{STATE_DIR}/flower.db") for f in files), files
    for path in files:
        assert d.sh(f"stat -c '%a %U' {path}").split() == ["600", "flower"], path
    assert refused_as(d, "nobody", files[0])


def flower_request(d, path: str, auth: bool = True, data: dict | None = None, cafile: str | None = "stack"):
    """(status, body) of Flower's `path` over its URL (https), verified against the stack's CA."""
    url = f"https://{d.host.address}:5555/{path}"
    request = urllib.request.Request(
        url, data=json.dumps(data).encode() if data is not None else None, method="POST" if data is not None else "GET"
    )
    if auth:
        token = base64.b64encode(f"admin:{d.secrets['flowerUiPassword']}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=d.ca_file if cafile == "stack" else cafile)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def check_https_from_the_stack_ca(d) -> None:
    assert d.stack.stack.outputs()["flowerUrl"].value == f"https://{d.host.address}:5555/"
    assert flower_request(d, "healthcheck", auth=False)[0] == 200  # CA and address verified
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        flower_request(d, "healthcheck", auth=False, cafile=None)  # the system's CAs do not know it
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plain HTTP on the port
        urllib.request.urlopen(f"http://{d.host.address}:5555/healthcheck", timeout=10).close()
    assert flower_request(d, "api/workers", auth=False)[0] == 401


def send_from_flower(d, expect: str) -> tuple[int, str]:
    """POST a task through Flower's API; (status, Flower's journal since), the journal read
    until it holds `expect` or 15 s passed (journald writes Flower's traceback a little later)."""
    since = d.sh("date +%s").strip()
    status, _ = flower_request(d, "api/task/async-apply/edd.add", data={"args": [1, 2]})
    deadline = time.monotonic() + 15
    while True:
        journal = d.sh(f"journalctl -u flower --no-pager -o cat --since=@{since}")
        if expect in journal or time.monotonic() > deadline:
            return status, journal
        time.sleep(1)


SIGN = "import edd; from kombu.serialization import dumps; dumps({'x': 1}, serializer='auth'); print('signed')"


def flower_signs(d) -> tuple[bool, str]:
    """Whether Flower's app, in Flower's environment and as its user, can sign a message."""
    result = sandbox_hosts.run(
        d.host,
        f"set -a; . {FLOWER_ENV}; set +a; cd /opt/edd-sandbox/app && "
        f"runuser -u flower -- /opt/edd-sandbox/venv/bin/python -c {shlex.quote(SIGN)}",
        timeout=120,
    )
    return result.returncode == 0 and result.stdout.strip() == "signed", result.stdout + result.stderr


def check_cannot_sign_tasks(d) -> None:
    """Without the key Flower's app cannot sign (it says why), and a send from Flower's API
    fails loudly. (Which refusal Flower meets first varies: the broker refuses its read-only user
    the rpc reply queue that `apply_async` declares before it signs, or signing fails.)"""
    signs, output = flower_signs(d)
    assert not signs and "no signing key" in output, output[-1500:]
    status, journal = send_from_flower(d, "no signing key")
    assert status >= 500, status
    assert "no signing key" in journal or "ACCESS_REFUSED" in journal, journal[-1500:]


def check_dashboard_sees_the_worker_online(d, timeout: float = 90) -> None:
    """Without the key Flower still captures events (the workers send them by themselves): its
    workers data, what the dashboard renders, shows the worker Online."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = flower_request(d, "workers?json=1")
        online = {w.get("hostname"): w.get("status") for w in json.loads(body or '{"data": []}')["data"]}
        if status == 200 and online.get(f"{WORKER}@{d.host.name}") is True:
            return
        assert time.monotonic() < deadline, f"Flower never showed {WORKER} online: {status} {online}"
        time.sleep(2)


def check_all(d) -> None:
    """Every check, in an order that leaves the deployment as it was (the database check restarts Flower)."""
    for check in (
        check_own_account,
        check_workers_files_refused_to_flower,
        check_flowers_files_refused_to_workers,
        check_no_signing_key,
        check_https_from_the_stack_ca,
        check_cannot_sign_tasks,
        check_dashboard_sees_the_worker_online,
        check_private_database,
    ):
        check(d)
