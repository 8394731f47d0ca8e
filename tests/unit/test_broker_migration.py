"""A blue/green broker move (broker.migrateFrom): what is copied, the shovel, and the host
scripts run for real against a stand-in rabbitmqctl and systemctl."""

import json
import os
import subprocess
from urllib.parse import unquote, urlsplit

import pytest

from edd_infra.render import host_scripts
from edd_infra.render.broker_migration import (
    MIGRATION_USER,
    SHOVEL_NAME,
    copied_definitions,
    shovel_definitions,
    shovel_password,
)
from edd_infra.render.broker_urls import shovel_uri
from edd_infra.render.host_scripts import FileSpec
from tests.unit.samples import HOSTILE_PASSWORDS

# What `rabbitmqctl export_definitions` printed on a 3.10 broker running the stack, cut down.
EXPORTED = {
    "rabbit_version": "3.10.8",
    "users": [
        {
            "name": "edd_user",
            "password_hash": "h4sh",
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
            "limits": {},
        }
    ],
    "vhosts": [{"name": "/edd", "limits": [], "metadata": {"description": "", "tags": ""}}],
    "permissions": [{"user": "edd_user", "vhost": "/edd", "configure": "^$", "write": "^edd$", "read": "^edd$"}],
    "topic_permissions": [],
    "parameters": [{"vhost": "/edd", "component": "shovel", "name": SHOVEL_NAME, "value": {}}],
    "global_parameters": [{"name": "cluster_name", "value": "rabbit@old"}],
    "policies": [{"vhost": "/edd", "name": "edd-infra-app-queue", "pattern": "^edd$", "definition": {}}],
    "queues": [
        {"name": "edd", "vhost": "/edd", "durable": True, "auto_delete": False, "arguments": {}},
        {"name": "celeryev.1", "vhost": "/edd", "durable": False, "auto_delete": True, "arguments": {}},
    ],
    "exchanges": [{"name": "edd", "vhost": "/edd", "type": "direct", "durable": True, "auto_delete": False}],
    "bindings": [
        {"source": "edd", "vhost": "/edd", "destination": "edd", "destination_type": "queue", "routing_key": "edd"},
        {
            "source": "celeryev",
            "vhost": "/edd",
            "destination": "celeryev.1",
            "destination_type": "queue",
            "routing_key": "#",
        },
    ],
}


def test_the_new_broker_takes_accounts_and_durable_objects_not_the_old_nodes_own_state():
    copied = json.loads(copied_definitions(json.dumps(EXPORTED)))
    assert copied["users"] == EXPORTED["users"]  # the hash travels: no password changes
    assert [q["name"] for q in copied["queues"]] == ["edd"]
    assert [b["destination"] for b in copied["bindings"]] == ["edd"]
    assert copied["policies"] == EXPORTED["policies"] and copied["permissions"] == EXPORTED["permissions"]
    assert "parameters" not in copied and "global_parameters" not in copied


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_the_shovel_dials_the_new_broker_over_tls_with_any_password(password):
    uri = urlsplit(shovel_uri(MIGRATION_USER, password, "10.0.0.2", 5671, "/edd", "/etc/edd-infra/migration-ca.pem"))
    assert (uri.scheme, uri.hostname, uri.port) == ("amqps", "10.0.0.2", 5671)
    assert unquote(uri.password) == password and unquote(uri.path[1:]) == "/edd"
    assert uri.query == "cacertfile=/etc/edd-infra/migration-ca.pem&verify=verify_peer"


def test_the_shovel_acks_on_the_old_broker_only_after_the_new_one_confirmed():
    (parameter,) = json.loads(shovel_definitions(vhost="/edd", queue="edd", exchange="edd", dest_uri="amqps://x"))[
        "parameters"
    ]
    value = parameter["value"]
    assert (parameter["component"], parameter["vhost"], parameter["name"]) == ("shovel", "/edd", SHOVEL_NAME)
    assert value["src-uri"] == "amqp:///%2Fedd" and value["src-queue"] == "edd"
    assert value["dest-exchange"] == "edd" and "dest-exchange-key" not in value  # routing keys kept
    assert value["ack-mode"] == "on-confirm" and value["src-delete-after"] == "never"


def test_the_shovels_password_follows_the_admins_and_does_not_reveal_it():
    assert shovel_password("a") == shovel_password("a") != shovel_password("b")
    assert "a" * 3 not in shovel_password("aaa")


# A stand-in rabbitmqctl: `list_queues` prints the next count of {state}.counts (or fails once
# they are used up), `import_definitions` copies the file it is given, the rest is logged.
FAKE_RABBITMQCTL = r"""#!/bin/sh
case "$*" in
  *list_users*) cat {state}.users 2>/dev/null; exit 0 ;;
  *list_queues*)
    n=$(head -n 1 {state}.counts 2>/dev/null) || true
    [ -n "$n" ] || exit 69
    sed -i 1d {state}.counts; [ "$n" = none ] && exit 0
    case "$*" in *messages*) printf 'edd\t%s\n' "$n" ;; *) echo edd ;; esac; exit 0 ;;
  *import_definitions*) for a; do f=$a; done; cp "$f" {state}.imported; echo "import_definitions" >> {state}.log ;;
  *add_user*|*change_password*) read -r pw; echo "$1 $2 $pw" >> {state}.log ;;
  *) echo "$*" >> {state}.log ;;
esac
"""
FAKE_SYSTEMCTL = r"""#!/bin/sh
echo "systemctl $*" >> {state}.log
case "$1" in is-active) [ -f {state}.active ] ;; esac
"""


@pytest.fixture
def host(tmp_path):
    """Run a script with the stand-ins first on PATH; chown and rabbitmq-plugins do nothing."""
    state, bin_dir = tmp_path / "state", tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in [
        ("rabbitmqctl", FAKE_RABBITMQCTL),
        ("systemctl", FAKE_SYSTEMCTL),
        ("chown", "#!/bin/sh\n"),
        ("rabbitmq-plugins", '#!/bin/sh\necho "plugins $*" >> {state}.log\n'),
    ]:
        (bin_dir / name).write_text(text.format(state=state))
        (bin_dir / name).chmod(0o755)

    def run(script, stdin="", counts=()):
        (tmp_path / "state.counts").write_text("".join(f"{c}\n" for c in counts))
        result = subprocess.run(
            ["sh", "-c", script],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"),
        )
        log = (tmp_path / "state.log").read_text() if (tmp_path / "state.log").exists() else ""
        return result, log

    run.path = lambda suffix: tmp_path / f"state.{suffix}"
    return run


def test_import_takes_the_definitions_and_gives_the_shovel_a_publish_only_account(host):
    text = host_scripts.definitions_import(
        user=MIGRATION_USER, vhost="/edd", queue="edd", exchange="edd", start_timeout=10
    )
    definitions = copied_definitions(json.dumps(EXPORTED))
    result, log = host(text, stdin=f"s3cret pw\n{definitions}\n", counts=["0"])
    assert result.returncode == 0, result.stderr
    assert json.loads(host.path("imported").read_text()) == json.loads(definitions)
    assert f"add_user {MIGRATION_USER} s3cret pw" in log  # on stdin: not in the script, not on argv
    assert f"-q set_permissions -p /edd {MIGRATION_USER} ^$ ^edd$ ^$" in log
    assert "s3cret" not in text


def test_up_waits_until_the_shovel_emptied_the_old_queue(host):
    text = host_scripts.shovel_start(
        ca=FileSpec(str(host.path("ca.pem")), "CA\n"), vhost="/edd", queue="edd", drain_timeout=30, start_timeout=10
    )
    result, log = host(
        text,
        stdin=shovel_definitions(vhost="/edd", queue="edd", exchange="edd", dest_uri="x"),
        counts=["2000", "12", "0"],
    )
    assert result.returncode == 0, result.stderr
    assert "plugins -q enable rabbitmq_shovel" in log and "import_definitions" in log
    assert "the old edd queue was empty after 4 s" in result.stdout
    assert host.path("ca.pem").read_text() == "CA\n"


def test_a_broker_that_stops_answering_is_not_taken_for_an_empty_queue(host):
    text = host_scripts.shovel_start(
        ca=FileSpec(str(host.path("ca.pem")), "CA\n"), vhost="/edd", queue="edd", drain_timeout=2, start_timeout=10
    )
    result, _ = host(text, stdin="{}", counts=["5"])  # then list_queues fails
    assert result.returncode == 1
    assert (
        "unknown messages still in edd on the old broker after 2 s (broker.migrateFrom.drainTimeout)" in result.stderr
    )


@pytest.mark.parametrize("left, code", [("3", 1), ("0", 0), ("none", 0)])
def test_retiring_refuses_while_the_old_queue_holds_messages_then_stops_the_old_services(host, left, code):
    host.path("active").write_text("")
    result, log = host(
        host_scripts.shovel_retire(vhost="/edd", queue="edd", units=["celery-edd-worker-1", "flower"]), counts=[left]
    )
    assert result.returncode == code, result.stderr
    if code:
        assert "3 messages still in edd on the old broker" in result.stderr and "disable" not in log
    else:
        assert f"-q clear_parameter -p /edd shovel {SHOVEL_NAME}" in log
        assert all(f"systemctl disable --now {u}" in log for u in ("celery-edd-worker-1", "flower", "rabbitmq-server"))
