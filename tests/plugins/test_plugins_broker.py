"""EddVhost and a secret-taking local command through the real engine and plugins, against a
real RabbitMQ: assertions are made on the broker, not on Pulumi's view of it."""

from __future__ import annotations

import json
import uuid

import pulumi
import pulumi_rabbitmq as rabbitmq
import pytest
from pulumi import automation as auto
from kombu import Connection

from edd_infra.components import EddVhost
from edd_infra.hosts import HostTarget
from edd_infra.render import host_scripts
from edd_infra.render.broker_urls import amqp_url, management_endpoint
from edd_infra.render.host_scripts import FileSpec
from edd_infra.settings import AppQueue, AppUser, FlowerBrokerUser, Host
from edd_infra.render.permissions import monitor_regex
from edd_infra.workspace import ProjectStack
from tests.engine.conftest import PASSPHRASE

pytestmark = pytest.mark.plugins
HOSTILE = "p@ss:/;#%,'\"\\ w0rd"
ADMIN = "plugins-admin"
ADMIN_PASSWORD = "adm1n:/;#% pw"


def program_for(broker, out_dir):
    def program():
        config = pulumi.Config()
        app_password = config.require_secret("appPassword")
        provider = rabbitmq.Provider(
            "provider",
            endpoint=management_endpoint("127.0.0.1", broker.management_port),
            username=ADMIN,
            password=config.require_secret("adminPassword"),
        )
        EddVhost(
            "edd",
            vhost="/edd",
            app_user=AppUser(),
            flower_user=FlowerBrokerUser(),
            app_queue=AppQueue(),
            app_password=app_password,
            flower_password=config.require_secret("flowerPassword"),
            provider=provider,
        )
        env_path = f"{out_dir}/worker.env"
        me = __import__("getpass").getuser()
        HostTarget("local", Host(connection="local")).run(
            "env-file",
            create=host_scripts.script(host_scripts.READ_SECRET_FILES),
            delete=f"rm -f {env_path}",
            stdin=app_password.apply(
                lambda pw: host_scripts.secret_bundle(
                    [
                        FileSpec(
                            env_path,
                            f"URL={amqp_url('edd_user', pw, '127.0.0.1', broker.amqp_port, '/edd')}\n",
                            "0600",
                            me,
                            me,
                        )
                    ]
                )
            ),
        )

    return program


def can_connect(broker, user, password, vhost="/edd"):
    try:
        with Connection(amqp_url(user, password, "127.0.0.1", broker.amqp_port, vhost), connect_timeout=5) as conn:
            conn.connect()
            channel = conn.channel()
            # An event queue, as a Celery monitor declares it: inside the default least profile.
            channel.queue_declare(f"celeryev.{uuid.uuid4()}", auto_delete=True)
            return True
    except Exception:  # noqa: BLE001 - any refusal counts as "cannot"
        return False


def users(broker):
    return {line.split("\t")[0] for line in broker.ctl("list_users", "-q", "--no-table-headers").stdout.splitlines()}


def plugin_stack(broker, tmp_path):
    """The admin Pulumi uses (made once on the broker) and a stack of `program_for` with its
    secrets set; returns (stack, the directory its env file goes to)."""
    if ADMIN not in users(broker):
        broker.ctl("add_user", ADMIN, stdin=ADMIN_PASSWORD + "\n")
        broker.ctl("set_user_tags", ADMIN, "administrator")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    stack = ProjectStack(
        f"p{uuid.uuid4().hex[:8]}",
        tmp_path,
        f"file://{tmp_path}",
        PASSPHRASE,
        program=program_for(broker, out_dir),
        project="edd-infra-plugins-test",
    )
    for key, value in {"adminPassword": ADMIN_PASSWORD, "appPassword": HOSTILE, "flowerPassword": "fl0wer pw"}.items():
        stack.set_secret(key, value)
    return stack, out_dir


def test_vhost_users_and_secret_command_round_trip(local_broker, tmp_path):
    broker = local_broker
    stack, out_dir = plugin_stack(broker, tmp_path)
    engine_output = []

    first = stack.stack.up(on_output=engine_output.append)
    assert first.summary.result == "succeeded"
    assert "edd_user" in users(broker) and "bunny" in users(broker)
    assert can_connect(broker, "edd_user", HOSTILE)
    assert not can_connect(broker, "edd_user", HOSTILE, vhost="/")
    assert (out_dir / "worker.env").read_text().startswith("URL=amqp://edd_user:")
    perms = broker.ctl("list_user_permissions", "bunny", "-q", "--no-table-headers").stdout.split()
    assert perms == ["/edd"] + [monitor_regex()] * 3
    assert "monitoring" in broker.ctl("list_users", "-q").stdout.split("bunny", 1)[1].splitlines()[0]

    again = stack.stack.up(on_output=engine_output.append)
    assert again.summary.resource_changes == {"same": again.summary.resource_changes.get("same", 0)}

    new_password = 'n3w;p@ss %41 "q"'
    stack.set_secret("appPassword", new_password)
    rotated = stack.stack.up(on_output=engine_output.append)
    assert rotated.summary.resource_changes.get("update") == 2  # the user and the env file
    assert not can_connect(broker, "edd_user", HOSTILE)
    assert can_connect(broker, "edd_user", new_password)

    exported = stack.export()
    text = "".join(engine_output) + exported
    for secret in (HOSTILE, new_password, ADMIN_PASSWORD):
        for form in (secret, json.dumps(secret)[1:-1], json.dumps(json.dumps(secret)[1:-1])[1:-1]):
            assert form not in text

    # The queue and exchange are protected: destroy stops at them until they are unprotected.
    with pytest.raises(auto.CommandError, match="protected"):
        stack.stack.destroy(on_output=engine_output.append)
    assert "edd" in broker.ctl("list_queues", "-p", "/edd", "-q", "name", "--no-table-headers").stdout.split()
    stack.cli_run("state", "unprotect", "--all", "--yes")
    stack.stack.destroy(on_output=engine_output.append)
    assert "edd_user" not in users(broker) and "bunny" not in users(broker)
    assert "/edd" not in broker.ctl("list_vhosts", "-q", "--no-table-headers").stdout.split()
    assert not (out_dir / "worker.env").exists()
    stack.stack.workspace.remove_stack(stack.name)


def test_an_older_stacks_queue_is_kept_and_a_rejected_task_is_dead_lettered(local_broker, tmp_path, monkeypatch):
    """A stack whose `edd` queue was created before its type was declared (as every stack made
    on RabbitMQ 3.10 before this change) sees no change to the protected queue; a task
    rejected without requeue lands in the kept dead-letter queue, not nowhere."""
    from edd_infra.components import edd_vhost

    broker = local_broker
    stack, _ = plugin_stack(broker, tmp_path)
    with monkeypatch.context() as old_program:  # the program before: no type, no dead-letter objects
        old_program.setattr(edd_vhost, "queue_arguments", lambda queue: None)
        old_program.setattr(edd_vhost.EddVhost, "_dead_letter", lambda *args: None)
        assert stack.stack.up().summary.result == "succeeded"
    preview = stack.stack.preview(diff=True)
    # The dead-letter exchange, queue, binding and policy are new; nothing is replaced.
    assert preview.change_summary == {"same": preview.change_summary["same"], "create": 4}, preview.stdout
    assert stack.stack.up().summary.result == "succeeded"

    with Connection(amqp_url("edd_user", HOSTILE, "127.0.0.1", broker.amqp_port, "/edd"), connect_timeout=5) as conn:
        channel = conn.channel()
        channel.basic_publish(__import__("amqp").Message("poison"), exchange="edd", routing_key="edd")
        for _ in range(50):
            message = channel.basic_get("edd", no_ack=False)
            if message:
                break
            __import__("time").sleep(0.1)
        assert message is not None
        channel.basic_reject(message.delivery_tag, requeue=False)
    for _ in range(50):
        depth = broker.ctl("list_queues", "-p", "/edd", "-q", "name", "messages", "--no-table-headers").stdout
        if "edd.dead-letter\t1" in depth:
            break
        __import__("time").sleep(0.1)
    assert "edd.dead-letter\t1" in depth and "edd\t0" in depth

    stack.cli_run("state", "unprotect", "--all", "--yes")
    stack.stack.destroy()
    stack.stack.workspace.remove_stack(stack.name)
