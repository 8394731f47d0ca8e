"""examples/consumer, a Pulumi program of its own that installs edd-infra and composes its
components by hand, previewed by the real CLI (through the Python language host, as a
consumer's program runs): it plans the broker, the vhost with its users and queue, the
account and the worker, without this project's stack config."""

from __future__ import annotations

import pytest

from tests.engine.example_consumer import ExampleStack, example_problem, example_venv

pytestmark = pytest.mark.engine

SECRETS = {
    "adminPassword": "adm1n p@ss:/;#%,'\"\\",
    "appPassword": "app p@ss:/;#%,'\"\\ x",
    "flowerPassword": "flw p@ss:/;#%,'\"\\ y",
}


@pytest.fixture(scope="module")
def example_ready():
    problem = example_problem()
    if problem:
        pytest.skip(problem)


def test_the_example_consumer_previews_the_components_it_composes(example_ready, tmp_path):
    venv, install_seconds = example_venv()
    if install_seconds is not None:
        print(
            f"\nexample virtualenv: fresh `pip install -r examples/consumer/requirements.txt` took {install_seconds:.0f} s"
        )
    stack = ExampleStack(
        tmp_path,
        venv,
        {"address": "192.0.2.10", "workingDirectory": "/srv/edd", "virtualenv": "/srv/edd/venv"},
        SECRETS,
    )
    steps = stack.preview()
    print("\nresources planned by `pulumi preview` of examples/consumer:")
    for op, type_, name in steps:
        print(f"  {op:7} {type_:45} {name}")
    planned = {(type_, name) for op, type_, name in steps if op == "create"}
    assert {
        ("edd:infra:RabbitBroker", "broker"),
        ("command:remote:Command", "broker-server"),
        ("command:remote:Command", "broker-admin"),
        ("pulumi:providers:rabbitmq", "broker-provider"),
        ("edd:infra:EddVhost", "edd"),
        ("rabbitmq:index/vHost:VHost", "edd-vhost"),
        ("rabbitmq:index/user:User", "edd-app-user"),
        ("rabbitmq:index/queue:Queue", "edd-queue"),
        ("edd:infra:ServiceAccount", "queue-celery"),
        ("edd:infra:CeleryWorkerService", "worker-1"),
        ("command:remote:Command", "worker-1-service"),
    } <= planned, planned
    # The example has no stack config of edd-infra's: nothing of the stack program (health, backups) is made.
    assert not [name for _, name in planned if name.startswith(("health", "broker-backups"))]
