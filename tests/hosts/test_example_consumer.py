"""examples/consumer deployed for real on its own sandbox host (`edd-ex13`): the program that
composes edd-infra's components by hand brings up RabbitMQ, the vhost and a worker, a task
runs through that worker, and `destroy` takes it all away again."""

from __future__ import annotations

import secrets
import shlex
from pathlib import Path

import pytest

from sandbox import hosts as host_api
from sandbox.image import APP_TARGET, VENV, client_key
from tests.engine.example_consumer import ExampleStack, example_problem, example_venv

pytestmark = pytest.mark.hosts
HOST = "edd-ex13"


def test_the_example_consumer_deploys_and_runs_a_task(sandbox_hosts, tmp_path):
    problem = example_problem()
    if problem:
        pytest.skip(problem)
    (host,) = sandbox_hosts(HOST, debian=13)
    venv, _ = example_venv()
    stack = ExampleStack(
        tmp_path,
        venv,
        {
            "address": host.address,
            "user": host.user,
            "hostKey": host.host_key,
            "managementAddress": host.address,
            "workingDirectory": APP_TARGET,
            "virtualenv": VENV,
            "purgeOnDestroy": "true",
        },
        {
            "sshPrivateKey": Path(client_key()).read_text(),
            **{
                key: secrets.token_urlsafe(16) + " :/@'\"" for key in ("adminPassword", "appPassword", "flowerPassword")
            },
        },
    )
    try:
        stack.run("up", "--yes", "--skip-preview", timeout=1500)
        outputs = stack.outputs()
        assert outputs["workerUnit"] == "celery-worker-1" and outputs["vhost"] == "/edd"
        assert outputs["managementEndpoint"] == f"http://{host.address}:15672"
        active = host_api.run(host, "systemctl is-active rabbitmq-server celery-worker-1", timeout=60)
        assert active.stdout.split() == ["active", "active"], active.stdout + active.stderr
        # A task through the deployed worker; the broker URL comes from its env file on the host.
        code = "from edd import add; print(add.delay(2, 3).get(timeout=60))"
        task = host_api.run(
            host,
            f"set -a; . /etc/edd-infra/celery-worker-1.env; set +a; cd {APP_TARGET} && "
            f"{VENV}/bin/python -c {shlex.quote(code)}",
            timeout=120,
        )
        assert task.stdout.strip() == "5", task.stderr[-2000:]
        # A second `up` changes nothing.
        again = stack.run("preview", "--diff", "--expect-no-changes")
        assert again.returncode == 0
    finally:
        # The app queue is protected (its messages): unprotect, then destroy.
        stack.run("state", "unprotect", "--all", "--yes", check=False)
        stack.run("destroy", "--yes", "--skip-preview", check=False, timeout=900)
    gone = host_api.run(
        host,
        "systemctl is-active celery-worker-1 rabbitmq-server; "
        "test -e /etc/edd-infra/celery-worker-1.env && echo env-left || true",
        timeout=60,
    )
    assert "env-left" not in gone.stdout and "active\n" not in gone.stdout.replace("inactive", ""), gone.stdout
