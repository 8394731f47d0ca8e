"""The whole program under Pulumi mocks: graph, type tokens, secrets, dependencies, bad config."""

import asyncio
import base64
import json
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import pulumi
import pytest
import yaml

from edd_infra.components import TYPE_TOKENS
from edd_infra.config_errors import ConfigError
from edd_infra import program
from edd_infra.broker_drift import BrokerDrift
from edd_infra.components.stack_health import rerun_digest
from edd_infra.program import OUTPUT_NAMES, deploy
from edd_infra.render.signing_files import previous_certificate_warning
from tests.unit.certificates import ca_and_server_pems, certificate_pem, server_certificate_pem

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "adminPassword": "adm1n p@ss:/;#%,'\"\\",
    "appPassword": "app p@ss:/;#%,'\"\\ x",
    "flowerBrokerPassword": "flw p@ss:/;#%,'\"\\ y",
    "flowerUiPassword": "ui p@ss:/;#%,'\"\\ z",
    # The committed prod stack serves the management API over TLS (its example CA and certificate).
    "brokerTlsKey": "-----BEGIN PRIVATE KEY-----\ntest key\n-----END PRIVATE KEY-----\n",
}


OLD_DEFINITIONS = {"users": [{"name": "edd_user", "password_hash": "0ld-h4sh"}], "queues": [], "bindings": []}


# What the probe and the services' health checks print on a host (shapes from RabbitMQ 4.0.5
# and a worker's check); a worker's stdout may hold anything else, such as a URL with its password.
SAID = {
    "health-probe": "checkedAt 2026-12-06T22:00:01Z\nversion 4.0.5\n"
    'cluster {"running_nodes":["rabbit@edd-queue"],"disk_nodes":["rabbit@edd-queue"]}\n'
    'queues [{"name":"edd","messages":3,"consumers":1},'
    '{"name":"edd-worker-1@edd-queue.celery.pidbox","messages":0,"consumers":1}]\n',
    "edd-worker-1-service": f"amqp://edd_user:{SECRETS['appPassword']}@127.0.0.1//edd\n"
    'edd-infra-health {"node": "edd-worker-1@edd-queue", "waitedSeconds": 2, '
    '"checkedAt": "2026-12-06T22:00:00Z"}\n',
    "flower-service": 'edd-infra-health {"status": 200, "body": "OK", "checkedAt": "2026-12-06T22:00:00Z"}\n',
}


class Recorder(pulumi.runtime.Mocks):
    deployed: dict = {}  # the stack's own outputs, as its self-reference reads them

    def new_resource(self, args):
        if args.typ == "pulumi:pulumi:StackReference":
            return [f"{args.name}_id", {"outputs": dict(self.deployed)}]
        if args.name.endswith("-migration-export"):  # what the old broker prints
            return [f"{args.name}_id", dict(args.inputs, stdout=json.dumps(OLD_DEFINITIONS))]
        if args.name in SAID:  # what the health checks print
            return [f"{args.name}_id", dict(args.inputs, stdout=SAID[args.name])]
        return [f"{args.name}_id", args.inputs]

    def call(self, args):
        return {}


def stack_config(stack):
    """The committed stack's plain keys, with test secrets in place of the encrypted ones."""
    data = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    config = {k: (json.dumps(v) if not isinstance(v, str) else v) for k, v in data.items() if "secure" not in str(v)}
    config.update({f"edd-infra:{k}": v for k, v in SECRETS.items()})
    return config


def run(config, secret_keys=None, drift=None, edited=None):
    """Run `deploy` under mocks; return (outputs, recorded resource args). `drift` stands in
    for what `observe_drift` would read from a broker (none is contacted here)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi.runtime.set_mocks(Recorder(), project="edd-infra", stack="test", preview=False)
    pulumi.runtime.set_all_config(
        config, secret_keys if secret_keys is not None else [f"edd-infra:{k}" for k in SECRETS]
    )
    recorded = []
    pulumi.runtime.register_stack_transformation(lambda args: recorded.append(args) or None)
    if drift is None:
        outputs = loop.run_until_complete(deploy(check_drift=False, project_dir=str(ROOT)))
    else:

        async def observed(*_):
            return drift

        async def edits(*_):
            return edited or {}

        real = program.observe_drift, program.observe_edits
        program.observe_drift, program.observe_edits = observed, edits
        try:
            outputs = loop.run_until_complete(deploy(project_dir=str(ROOT)))
        finally:
            program.observe_drift, program.observe_edits = real
    resolved = {
        key: loop.run_until_complete(pulumi.Output.from_input(value).future()) for key, value in outputs.items()
    }
    props = [
        (a.type_, a.name, a.props, a.opts, {k: loop.run_until_complete(_secretness(v)) for k, v in a.props.items()})
        for a in recorded
    ]
    return resolved, props, loop


async def _secretness(value):
    return await value.is_secret() if isinstance(value, pulumi.Output) else False


def plain(loop, value):
    return loop.run_until_complete(pulumi.Output.from_input(value).future()) if value is not None else None


@pytest.fixture(scope="module")
def prod():
    return run(stack_config("prod"))


def test_prod_graph_and_type_tokens(prod):
    _, resources, _ = prod
    graph = sorted((t, n) for t, n, *_ in resources)
    assert graph == sorted(
        [
            ("edd:infra:RabbitBroker", "broker"),
            ("command:remote:Command", "broker-server"),
            ("command:remote:Command", "broker-server-repair"),
            ("command:remote:Command", "broker-admin"),
            ("command:remote:Command", "broker-app-user-password"),
            ("command:remote:Command", "broker-flower-user-password"),
            ("pulumi:providers:rabbitmq", "broker-provider"),
            ("edd:infra:EddVhost", "edd"),
            ("rabbitmq:index/vHost:VHost", "edd-vhost"),
            ("rabbitmq:index/exchange:Exchange", "edd-exchange"),
            ("rabbitmq:index/queue:Queue", "edd-queue"),
            ("rabbitmq:index/binding:Binding", "edd-binding"),
            ("rabbitmq:index/exchange:Exchange", "edd-dead-letter-exchange"),
            ("rabbitmq:index/queue:Queue", "edd-dead-letter-queue"),
            ("rabbitmq:index/binding:Binding", "edd-dead-letter-binding"),
            ("rabbitmq:index/policy:Policy", "edd-app-queue-policy"),
            ("rabbitmq:index/user:User", "edd-app-user"),
            ("rabbitmq:index/permissions:Permissions", "edd-app-user-vhost-permissions"),
            ("rabbitmq:index/user:User", "edd-flower-user"),
            ("rabbitmq:index/permissions:Permissions", "edd-flower-user-vhost-permissions"),
            ("edd:infra:ServiceAccount", "edd-queue-celery"),
            ("command:remote:Command", "edd-queue-celery-account"),
            ("edd:infra:ServiceAccount", "edd-queue-flower"),
            ("command:remote:Command", "edd-queue-flower-account"),
            ("edd:infra:CeleryWorkerService", "edd-worker-1"),
            ("command:remote:Command", "edd-worker-1-service"),
            ("command:remote:Command", "edd-worker-1-service-repair"),
            ("edd:infra:FlowerService", "flower"),
            ("command:remote:Command", "flower-service"),
            ("command:remote:Command", "flower-service-repair"),
            ("edd:infra:BrokerBackups", "broker-backups"),
            ("command:remote:Command", "broker-backups"),
            ("command:remote:Command", "broker-backups-repair"),
            ("edd:infra:StackHealth", "health"),
            ("command:remote:Command", "health-probe"),
        ]
    )
    assert {t for t, *_ in resources if t.startswith("edd:")} == set(TYPE_TOKENS.values()) - {
        "edd:infra:EddSettingsFile",
        "edd:infra:BrokerMigration",
    }


def test_type_tokens_are_pinned():
    # Renaming a token orphans every resource of that type in existing stacks.
    assert TYPE_TOKENS == {
        "RabbitBroker": "edd:infra:RabbitBroker",
        "EddVhost": "edd:infra:EddVhost",
        "ServiceAccount": "edd:infra:ServiceAccount",
        "CeleryWorkerService": "edd:infra:CeleryWorkerService",
        "FlowerService": "edd:infra:FlowerService",
        "EddSettingsFile": "edd:infra:EddSettingsFile",
        "BrokerMigration": "edd:infra:BrokerMigration",
        "BrokerBackups": "edd:infra:BrokerBackups",
        "StackHealth": "edd:infra:StackHealth",
    }


def secret_forms(value):
    raw = value.encode()
    return {value, quote(value, safe=""), base64.b64encode(raw).decode(), json.dumps(value)[1:-1]}


def test_no_secret_in_any_command_text_and_secret_inputs_stay_secret(prod):
    _, resources, loop = prod
    commands = [r for r in resources if r[0] == "command:remote:Command"]
    assert commands
    for _type, name, props, opts, secret in commands:
        for field in ("create", "update", "delete"):
            text = plain(loop, props.get(field)) or ""
            for value in SECRETS.values():
                assert not any(form in text for form in secret_forms(value)), f"{name}.{field} holds a secret"
        if props.get("stdin") is not None:
            assert secret["stdin"], f"{name}: stdin not secret"
            assert props["logging"] == "none", f"{name}: logs a command that receives a secret"
            assert set(opts.additional_secret_outputs or []) >= {"stdout", "stderr"}, name
    passwords = [r for r in resources if r[0] == "rabbitmq:index/user:User"]
    assert all(secret["password"] for *_, secret in passwords)
    (provider,) = [r for r in resources if r[0] == "pulumi:providers:rabbitmq"]
    assert provider[4]["password"]


def test_nothing_touches_the_broker_before_it_answers(prod):
    _, resources, _ = prod
    by_name = {n: (t, p, o) for t, n, p, o, _ in resources}
    provider_opts = by_name["broker-provider"][2]
    assert [d._name for d in provider_opts.depends_on] == ["broker-admin"]
    assert [d._name for d in by_name["broker-admin"][2].depends_on] == ["broker-server"]
    for name, (type_, _, opts) in by_name.items():
        if type_.startswith("rabbitmq:index"):
            assert opts.provider is not None and opts.provider._name == "broker-provider", name
    worker_deps = {d._name for d in by_name["edd-worker-1-service"][2].depends_on}
    assert {"edd", "edd-queue-celery"} <= worker_deps


def test_outputs(prod):
    outputs, _, _ = prod
    assert set(outputs) == set(OUTPUT_NAMES)
    # prod turns on broker.tls for its management API; AMQP stays on loopback (plain and TLS).
    assert outputs["brokerEndpoints"] == [
        "amqp://127.0.0.1:5672//edd",
        "amqp://[::1]:5672//edd",
        "amqps://127.0.0.1:5671//edd",
        "amqps://[::1]:5671//edd",
    ]
    assert outputs["managementEndpoint"] == "https://192.0.2.10:15671"
    assert outputs["flowerUrl"] == "http://127.0.0.1:5555/"
    assert outputs["workerUnits"] == {"celery-edd-worker-1": "edd-queue"}
    # prod's management API (so its metrics) is on 192.0.2.10 over TLS; no target carries a login.
    assert [(t["url"], t["basicAuth"]) for t in outputs["scrapeTargets"]] == [
        ("https://192.0.2.10:15691/metrics", False),
        (
            "https://192.0.2.10:15691/metrics/detailed?vhost=%2Fedd&family=queue_coarse_metrics"
            "&family=queue_consumer_count",
            False,
        ),
        ("http://127.0.0.1:5555/metrics", False),
    ]
    assert outputs["alertRules"] == {"host": "edd-queue", "path": "/etc/edd-infra/prometheus/edd-infra.rules.yml"}
    assert outputs["health"] == {
        "broker": {
            "checkedAt": "2026-12-06T22:00:01Z",
            "version": "4.0.5",
            "nodesRunning": ["rabbit@edd-queue"],
            "nodesConfigured": 1,
            "queue": {"name": "edd", "consumers": 1, "messages": 3},
            "workersConnected": ["edd-worker-1@edd-queue"],
        },
        "workers": {
            "celery-edd-worker-1": {
                "answered": "edd-worker-1@edd-queue",
                "waitedSeconds": 2,
                "checkedAt": "2026-12-06T22:00:00Z",
            }
        },
        "workersAnswered": 1,
        "flower": {"healthcheck": 200, "body": "OK", "checkedAt": "2026-12-06T22:00:00Z"},
    }
    assert not any(v in json.dumps(outputs) for v in SECRETS.values())


def test_health_is_measured_after_every_service_and_again_when_any_of_them_runs(prod):
    """The probe waits for the broker node, every worker and Flower, and its stdin is a digest
    of their scripts and stdin: whatever reruns one of them reruns the probe (a no-op runs none)."""
    _, resources, loop = prod
    by_name = {n: (p, o) for _, n, p, o, _ in resources}
    followed = ["broker-server", "edd-worker-1-service", "flower-service"]
    props, opts = by_name["health-probe"]
    assert sorted(d._name for d in opts.depends_on) == followed
    assert "rabbitmqctl -q list_queues -p /edd" in plain(loop, props["create"]) and not props.get("triggers")
    assert plain(loop, props["stdin"]) == plain(loop, rerun_digest([Followed(by_name[n][0]) for n in followed]))
    changed = dict(by_name["edd-worker-1-service"][0], create="another script")
    assert plain(loop, props["stdin"]) != plain(
        loop,
        rerun_digest(
            [Followed(by_name["broker-server"][0]), Followed(changed), Followed(by_name["flower-service"][0])]
        ),
    )


class Followed:
    """A command's inputs as attributes, as `rerun_digest` reads them from a Command."""

    def __init__(self, props):
        self.create, self.update, self.stdin = props.get("create"), props.get("update"), props.get("stdin")


def test_alert_rules_go_beside_the_broker_config_and_never_restart_it(prod):
    _, resources, loop = prod
    (server,) = [p for t, n, p, *_ in resources if n == "broker-server"]
    create = plain(loop, server["create"])
    assert "[rabbitmq_management,rabbitmq_prometheus]." in create
    # prod serves the management API and the metrics over TLS on 192.0.2.10, plain only on loopback.
    assert "prometheus.ssl.ip = 192.0.2.10" in create and "prometheus.tcp.ip = 127.0.0.1" in create
    assert "management.ssl.ip = 192.0.2.10" in create and "management.tcp.ip = 127.0.0.1" in create
    rules_at = create.index("/etc/edd-infra/prometheus/edd-infra.rules.yml")
    # Written inside write_without_restart (between its "was=$changed" and "changed=$was").
    assert create.rfind("was=$changed", 0, rules_at) > create.rfind("changed=$was", 0, rules_at)
    assert "alert: EddQueueWithoutConsumers" in create
    assert "/etc/edd-infra/prometheus/edd-infra.rules.yml" in plain(loop, server["delete"])


def test_dev_stack_uses_local_commands_launchd_and_an_external_broker():
    _, resources, loop = run(stack_config("dev"))
    types = {t for t, *_ in resources}
    names = {n for _, n, *_ in resources}
    assert "command:local:Command" in types and "command:remote:Command" not in types
    assert "broker-provider" in names and not {"broker-server", "broker-admin"} & names
    (worker,) = [p for t, n, p, *_ in resources if n == "edd-worker-1-service"]
    assert "/Library/LaunchDaemons/org.celeryq.edd-worker-1.plist" in plain(loop, worker["create"])
    assert plain(loop, worker["create"]).startswith("sudo -n sh -c ")


def test_bad_config_stops_before_any_resource():
    config = stack_config("prod")
    config["edd-infra:workers"] = json.dumps([{"name": "w", "host": "edd-queue", "concurrency": 0}])
    config["edd-infra:appPassword"] = ""
    with pytest.raises(ConfigError) as err:
        run(config)
    text = str(err.value)
    assert "edd-infra:workers[0].concurrency" in text and "edd-infra:workers[0].workingDirectory: required" in text
    assert "edd-infra:appPassword: must not be empty" in text


def test_plaintext_secret_is_refused():
    with pytest.raises(ConfigError, match="edd-infra:adminPassword: stored in plaintext"):
        run(stack_config("prod"), secret_keys=[f"edd-infra:{k}" for k in SECRETS if k != "adminPassword"])


def test_unknown_top_level_key_is_refused():
    config = dict(stack_config("prod"), **{"edd-infra:worker": "[]"})
    with pytest.raises(ConfigError, match="edd-infra:worker: unknown key"):
        run(config)


def stdin_of(loop, resources, name):
    (found,) = [(p, o) for t, n, p, o, _ in resources if n == name]
    return plain(loop, found[0]["stdin"]), found[1].ignore_changes or []


GUARDED = ["stdin", "create", "update", "delete", "connection", "logging", "triggers"]


def test_accounts_in_sync_ignore_every_change_so_a_noop_up_runs_nothing():
    _, resources, loop = run(stack_config("prod"), drift=BrokerDrift(admin="ok"))
    for name in ("broker-admin", "broker-app-user-password", "broker-flower-user-password"):
        stdin, ignored = stdin_of(loop, resources, name)
        assert ignored == GUARDED and stdin.count("\n") == 1, name


def test_drifted_accounts_get_a_token_that_reruns_their_restore():
    drift = BrokerDrift(admin="ok", guest_present=True, drifted_users={"edd_user": "drift-abc"})
    _, resources, loop = run(stack_config("prod"), drift=drift)
    stdin, ignored = stdin_of(loop, resources, "broker-app-user-password")
    assert ignored == [] and stdin == SECRETS["appPassword"] + "\n# repair drift-abc\n"
    stdin, ignored = stdin_of(loop, resources, "broker-admin")
    assert ignored == [] and stdin.startswith(SECRETS["adminPassword"] + "\n# repair guest-present-")
    assert stdin_of(loop, resources, "broker-flower-user-password")[1] == GUARDED


def test_unreadable_broker_changes_no_account_command():
    # preview, or a broker whose API does not answer: nothing known, nothing to repair.
    _, resources, loop = run(stack_config("prod"), drift=BrokerDrift(admin="unknown"))
    for name in ("broker-admin", "broker-app-user-password", "broker-flower-user-password"):
        stdin, ignored = stdin_of(loop, resources, name)
        assert ignored == GUARDED and stdin.count("\n") == 1, name


def bundle_files(stdin):
    """The files in a secret bundle: path -> (mode, owner, group, text)."""
    files = {}
    for line in stdin.splitlines():
        mode, owner, group, path, _on_failure, data = line.split(" ")
        files[path] = (mode, owner, group, base64.b64decode(data).decode())
    return files


def tls_config(tmp_path, with_key=True):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n")
    (tmp_path / "server.pem").write_text("-----BEGIN CERTIFICATE-----\nsrv\n-----END CERTIFICATE-----\n")
    config = stack_config("prod")
    broker = json.loads(config["edd-infra:broker"])
    broker.update(
        tls={"caFile": str(tmp_path / "ca.pem"), "certFile": str(tmp_path / "server.pem")},
        managementAddress="10.0.0.2",
        amqpListeners=["127.0.0.1", "10.0.0.2"],
    )
    config["edd-infra:broker"] = json.dumps(broker)
    keys = [f"edd-infra:{k}" for k in SECRETS if k != "brokerTlsKey"]
    config.pop("edd-infra:brokerTlsKey")
    if with_key:
        config["edd-infra:brokerTlsKey"] = "-----BEGIN PRIVATE KEY-----\nk3y-s3cr3t\n-----END PRIVATE KEY-----\n"
        keys.append("edd-infra:brokerTlsKey")
    return config, keys


def test_tls_wires_provider_ca_broker_files_and_key_on_stdin(tmp_path):
    config, keys = tls_config(tmp_path)
    outputs, resources, loop = run(config, secret_keys=keys)
    by_name = {n: (p, s) for t, n, p, o, s in resources}
    provider, _ = by_name["broker-provider"]
    assert plain(loop, provider["endpoint"]) == "https://10.0.0.2:15671"
    assert plain(loop, provider["cacert_file"] if "cacert_file" in provider else provider.get("cacertFile")) == str(
        tmp_path / "ca.pem"
    )
    server, secret = by_name["broker-server"]
    create = plain(loop, server["create"])
    assert "listeners.ssl.2 = 10.0.0.2:5671" in create and "-----BEGIN CERTIFICATE-----\nsrv" in create
    assert "k3y-s3cr3t" not in create and secret["stdin"]
    assert bundle_files(plain(loop, server["stdin"])) == {
        "/etc/rabbitmq/tls/key.pem": ("0640", "root", "rabbitmq", config["edd-infra:brokerTlsKey"])
    }
    assert outputs["brokerEndpoints"] == [
        "amqp://127.0.0.1:5672//edd",
        "amqps://127.0.0.1:5671//edd",
        "amqps://10.0.0.2:5671//edd",
    ]
    (flower, _) = by_name["flower-service"]
    flower_config = bundle_files(plain(loop, flower["stdin"]))["/etc/edd-infra/flowerconfig.py"][3]
    assert "broker_api = 'http://127.0.0.1:15672/api/'" in flower_config


def test_tls_without_its_key_is_refused(tmp_path):
    config, keys = tls_config(tmp_path, with_key=False)
    with pytest.raises(ConfigError, match="edd-infra:brokerTlsKey: required when broker.tls is set"):
        run(config, secret_keys=keys)


def test_signing_puts_key_certificate_and_store_beside_each_service(tmp_path):
    (tmp_path / "signing.pem").write_text("-----BEGIN CERTIFICATE-----\nsig\n-----END CERTIFICATE-----\n")
    config = stack_config("prod")
    config["edd-infra:celerySigning"] = json.dumps({"certFile": str(tmp_path / "signing.pem")})
    config["edd-infra:celerySigningKey"] = "-----BEGIN PRIVATE KEY-----\nsign1ng-k3y\n-----END PRIVATE KEY-----\n"
    keys = [f"edd-infra:{k}" for k in SECRETS] + ["edd-infra:celerySigningKey"]
    _, resources, loop = run(config, secret_keys=keys)
    by_name = {n: p for t, n, p, o, s in resources}
    for resource, service in (("edd-worker-1-service", "celery-edd-worker-1"), ("flower-service", "flower")):
        props = by_name[resource]
        files = bundle_files(plain(loop, props["stdin"]))
        base = f"/etc/edd-infra/signing/{service}"
        env = [text for path, (*_, text) in files.items() if path.endswith(".env")][0]
        assert f"CELERY_SECURITY_CERT_STORE='{base}/store/*.pem'" in env
        assert f"CELERY_SECURITY_CERTIFICATE={base}/cert.pem\n" in env
        assert (
            files[f"{base}/store/cert.pem"][3] == files[f"{base}/cert.pem"][3] == (tmp_path / "signing.pem").read_text()
        )
        assert "sign1ng-k3y" not in plain(loop, props["create"]) + plain(loop, props["delete"])
        assert f"{base}/key.pem" in plain(loop, props["delete"])
    worker = bundle_files(plain(loop, by_name["edd-worker-1-service"]["stdin"]))
    base = "/etc/edd-infra/signing/celery-edd-worker-1"
    assert worker[f"{base}/key.pem"] == ("0640", "root", "celery", config["edd-infra:celerySigningKey"])
    assert worker[f"{base}/cert.pem"][:3] == ("0644", "root", "root")
    # Flower verifies only (no flower.canSendTasks): no key in its bundle, none named in its
    # env file, and one left by an earlier up is removed; its certificates are its own group's.
    flower = bundle_files(plain(loop, by_name["flower-service"]["stdin"]))
    base = "/etc/edd-infra/signing/flower"
    assert f"{base}/key.pem" not in flower and "sign1ng-k3y" not in plain(loop, by_name["flower-service"]["stdin"])
    assert "CELERY_SECURITY_KEY" not in flower["/etc/edd-infra/flower.env"][3]
    assert {flower[p][:3] for p in (f"{base}/cert.pem", f"{base}/store/cert.pem")} == {("0640", "root", "flower")}
    assert f"mv -f {base}/key.pem {base}/key.pem.edd-infra-old" in plain(loop, by_name["flower-service"]["create"])


def test_flower_can_send_tasks_gets_the_signing_key_with_a_warning_for_a_monitoring_broker_user(tmp_path, monkeypatch):
    (tmp_path / "signing.pem").write_text("-----BEGIN CERTIFICATE-----\nsig\n-----END CERTIFICATE-----\n")
    config = stack_config("prod")
    config["edd-infra:celerySigning"] = json.dumps({"certFile": str(tmp_path / "signing.pem")})
    config["edd-infra:celerySigningKey"] = "-----BEGIN PRIVATE KEY-----\nsign1ng-k3y\n-----END PRIVATE KEY-----\n"
    config["edd-infra:flower"] = json.dumps({**json.loads(config["edd-infra:flower"]), "canSendTasks": True})
    warnings = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: warnings.append(message))
    _, resources, loop = run(config, secret_keys=[f"edd-infra:{k}" for k in SECRETS] + ["edd-infra:celerySigningKey"])
    props = {n: p for t, n, p, o, s in resources}["flower-service"]
    files = bundle_files(plain(loop, props["stdin"]))
    base = "/etc/edd-infra/signing/flower"
    assert files[f"{base}/key.pem"] == ("0640", "root", "flower", config["edd-infra:celerySigningKey"])
    assert f"CELERY_SECURITY_KEY={base}/key.pem\n" in files["/etc/edd-infra/flower.env"][3]
    assert f"{base}/key.pem.edd-infra-old" not in plain(loop, props["create"])
    assert [w for w in warnings if w.startswith("flower.canSendTasks:")], warnings


def test_flower_runs_as_its_own_account_and_its_files_are_its_groups_only():
    _, resources, loop = run(stack_config("prod"))
    by_name = {n: (p, o) for t, n, p, o, s in resources}
    account = plain(loop, by_name["edd-queue-flower-account"][0]["create"])
    assert "groupadd --system flower" in account and "--gid flower" in account and "flower" in account
    props, opts = by_name["flower-service"]
    assert "edd-queue-flower" in {d._name for d in opts.depends_on}
    create = plain(loop, props["create"])
    assert "User=flower\nGroup=flower\n" in create and "SupplementaryGroups" not in create.split("flower.service")[0]
    assert "StateDirectory=flower\nStateDirectoryMode=0700\nUMask=0077\n" in create
    assert 'chmod go= "$f"' in create  # a database written before the umask becomes 0600
    files = bundle_files(plain(loop, props["stdin"]))
    assert {path: f[:3] for path, f in files.items() if not path.endswith("celeryconfig.py")} == {
        "/etc/edd-infra/flowerconfig.py": ("0640", "root", "flower"),
        "/etc/edd-infra/flower.env": ("0640", "root", "flower"),
    }
    worker = bundle_files(plain(loop, by_name["edd-worker-1-service"][0]["stdin"]))
    assert worker["/etc/edd-infra/celery-edd-worker-1.env"][:3] == ("0640", "root", "celery")
    # The workers' account is not Flower's: no group in common.
    assert "flower" not in plain(loop, by_name["edd-queue-celery-account"][0]["create"])


@pytest.mark.parametrize(
    "flower, warned",
    [
        ({"user": "celery"}, "flower.user: Flower runs as workers[0]'s user 'celery'"),
        ({"user": "flowerd"}, "flower.group: Flower's group 'celery' is also workers[0]'s"),
        ({"user": "flowerd", "group": "flowerd"}, None),
        ({"user": "flower"}, None),
    ],
)
def test_a_stack_that_set_flower_user_keeps_its_account_and_is_warned_when_shared(monkeypatch, flower, warned):
    config = stack_config("prod")
    config["edd-infra:flower"] = json.dumps({**json.loads(config["edd-infra:flower"]), **flower})
    warnings = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: warnings.append(message))
    _, resources, loop = run(config)
    create = plain(loop, {n: p for t, n, p, o, s in resources}["flower-service"]["create"])
    group = flower.get("group", "celery" if flower["user"] != "flower" else "flower")
    assert f"User={flower['user']}\nGroup={group}\n" in create
    accounts = {n for t, n, *_ in resources if t == "edd:infra:ServiceAccount"}
    assert accounts == {"edd-queue-celery"} | ({f"edd-queue-{flower['user']}"} if flower["user"] != "celery" else set())
    flagged = [w for w in warnings if w.startswith(("flower.user", "flower.group"))]
    assert flagged == ([] if warned is None else [flagged[0]]) and (warned is None or flagged[0].startswith(warned))


def flower_tls_config(tmp_path, address="10.0.0.2", with_key=True, ca_for=None, ca_key_usage=True):
    """prod with broker.tls and Flower on `address` over HTTPS, its certificate from the broker's
    CA (or, with `ca_for`, from another CA)."""
    config, keys = tls_config(tmp_path)
    ca, cert, key = ca_and_server_pems(address, ca_key_usage=ca_key_usage)
    if ca_for:
        cert = ca_and_server_pems(ca_for, ca_name="another CA")[1]
    (tmp_path / "ca.pem").write_text(ca)
    (tmp_path / "flower.pem").write_text(cert)
    config["edd-infra:flower"] = json.dumps(
        {
            **json.loads(config["edd-infra:flower"]),
            "address": address,
            "tls": {"certFile": str(tmp_path / "flower.pem")},
        }
    )
    if with_key:
        config["edd-infra:flowerTlsKey"] = key
        keys.append("edd-infra:flowerTlsKey")
    return config, keys


def test_flower_off_loopback_serves_https_from_the_stacks_ca(tmp_path):
    config, keys = flower_tls_config(tmp_path)
    outputs, resources, loop = run(config, secret_keys=keys)
    props = {n: p for t, n, p, o, s in resources}["flower-service"]
    files = bundle_files(plain(loop, props["stdin"]))
    tls = "/etc/edd-infra/tls/flower"
    assert files[f"{tls}/key.pem"] == ("0640", "root", "flower", config["edd-infra:flowerTlsKey"])
    assert files[f"{tls}/cert.pem"] == ("0640", "root", "flower", (tmp_path / "flower.pem").read_text())
    assert files[f"{tls}/ca.pem"] == ("0640", "root", "flower", (tmp_path / "ca.pem").read_text())
    conf = files["/etc/edd-infra/flowerconfig.py"][3]
    assert f"certfile = '{tls}/cert.pem'" in conf and f"keyfile = '{tls}/key.pem'" in conf
    create = plain(loop, props["create"])
    assert "PRIVATE KEY" not in create and "https://10.0.0.2:5555/healthcheck" in create
    assert f"{tls}/ca.pem" in create  # the health check verifies Flower against the CA
    assert outputs["flowerUrl"] == "https://10.0.0.2:5555/"
    assert outputs["scrapeTargets"][-1] == {
        "url": "https://10.0.0.2:5555/metrics",
        "basicAuth": False,
        "caFile": "broker.tls.caFile",
        "what": "Flower: Celery workers online, task events and runtimes",
    }


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"tls": None}, "edd-infra:flower.address: 10.0.0.2 is not loopback, so flower.tls is required"),
        ({"with_key": False}, "edd-infra:flowerTlsKey: required when flower.tls is set"),
        ({"ca_for": "10.0.0.2"}, "edd-infra:flower.tls.certFile: not issued by broker.tls.caFile"),
        (
            {"address": "10.0.0.3", "ca_for": "10.0.0.2"},
            "edd-infra:flower.tls.certFile: the certificate is not for flower.address 10.0.0.3",
        ),
        (
            {"ca_key_usage": False},
            "edd-infra:broker.tls.caFile: the CA certificate has no key usage allowing it to sign",
        ),
    ],
)
def test_flower_tls_that_cannot_work_is_refused_before_any_resource(tmp_path, change, problem):
    change = dict(change)
    drop_tls = change.pop("tls", "keep") is None
    config, keys = flower_tls_config(tmp_path, **change)
    if drop_tls:
        flower = json.loads(config["edd-infra:flower"])
        del flower["tls"]
        config["edd-infra:flower"] = json.dumps(flower)
    with pytest.raises(ConfigError) as err:
        run(config, secret_keys=keys)
    assert problem in str(err.value)
    assert "PRIVATE KEY" not in str(err.value)


def test_signing_without_its_key_is_refused(tmp_path):
    (tmp_path / "signing.pem").write_text("-----BEGIN CERTIFICATE-----\nsig\n-----END CERTIFICATE-----\n")
    config = stack_config("prod")
    config["edd-infra:celerySigning"] = json.dumps({"certFile": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError) as err:
        run(config)
    assert "edd-infra:celerySigningKey: required when celerySigning is set" in str(err.value)
    assert "edd-infra:celerySigning.certFile: cannot read" in str(err.value)


def rotation_config(tmp_path, until):
    """Signing with a rotation in progress: the new certificate, and the previous one until `until`."""
    (tmp_path / "new.pem").write_text(certificate_pem(serial=2))
    (tmp_path / "old.pem").write_text(certificate_pem(serial=1))
    config = stack_config("prod")
    config["edd-infra:celerySigning"] = json.dumps(
        {
            "certFile": str(tmp_path / "new.pem"),
            "previousTrustedUntil": until,
            "previousCertFile": str(tmp_path / "old.pem"),
        }
    )
    config["edd-infra:celerySigningKey"] = "-----BEGIN PRIVATE KEY-----\nsign1ng-k3y\n-----END PRIVATE KEY-----\n"
    return config, [f"edd-infra:{k}" for k in SECRETS] + ["edd-infra:celerySigningKey"]


SIGNED_SERVICES = (("edd-worker-1-service", "celery-edd-worker-1"), ("flower-service", "flower"))


def test_during_a_rotation_every_store_holds_the_previous_certificate_too(tmp_path, monkeypatch):
    config, keys = rotation_config(tmp_path, "2099-01-01")
    warnings = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: warnings.append(message))
    _, resources, loop = run(config, secret_keys=keys)
    by_name = {n: p for t, n, p, o, s in resources}
    for resource, service in SIGNED_SERVICES:
        files = bundle_files(plain(loop, by_name[resource]["stdin"]))
        store = f"/etc/edd-infra/signing/{service}/store"
        owner = ("0640", "root", "flower") if service == "flower" else ("0644", "root", "root")
        assert files[f"{store}/previous.pem"] == (*owner, (tmp_path / "old.pem").read_text())
        assert files[f"{store}/cert.pem"][3] == (tmp_path / "new.pem").read_text()
        assert f"{store}/previous.pem" not in plain(loop, by_name[resource]["create"])
        assert f"{store}/previous.pem" in plain(loop, by_name[resource]["delete"])
    assert not [w for w in warnings if "previousTrustedUntil" in w]


def test_past_its_time_the_previous_certificate_leaves_every_store_with_a_warning(tmp_path, monkeypatch):
    config, keys = rotation_config(tmp_path, "2020-01-01")
    (tmp_path / "old.pem").unlink()  # not read once past its time
    warnings = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: warnings.append(message))
    _, resources, loop = run(config, secret_keys=keys)
    by_name = {n: p for t, n, p, o, s in resources}
    for resource, service in SIGNED_SERVICES:
        store = f"/etc/edd-infra/signing/{service}/store"
        assert not [p for p in bundle_files(plain(loop, by_name[resource]["stdin"])) if p.endswith("previous.pem")]
        assert f"mv -f {store}/previous.pem {store}/previous.pem.edd-infra-old" in plain(
            loop, by_name[resource]["create"]
        )
    assert warnings == [previous_certificate_warning(datetime(2020, 1, 1, tzinfo=timezone.utc))]


def test_edited_unit_reruns_only_that_services_repair_twin():
    _, resources, loop = run(
        stack_config("prod"), drift=BrokerDrift(admin="ok"), edited={"edd-queue": {"edd-worker-1-service"}}
    )
    by_name = {n: (p, o) for t, n, p, o, _ in resources}
    props, opts = by_name["edd-worker-1-service-repair"]
    assert opts.ignore_changes == [] and "\n# repair edited-" in plain(loop, props["stdin"])
    # It reinstalls exactly what the service command installs, recording the manifest again.
    main, _ = by_name["edd-worker-1-service"]
    assert plain(loop, props["update"]) == plain(loop, main["update"])
    assert plain(loop, main["create"]).startswith("manifest=/var/lib/edd-infra/manifests/edd-worker-1-service\n")
    for other in ("flower-service-repair", "broker-server-repair"):
        assert by_name[other][1].ignore_changes == GUARDED, other


def test_queue_and_fanout_exchange_are_durable_and_protected():
    _, resources, loop = run(stack_config("prod"))
    by_name = {n: (p, o) for t, n, p, o, _ in resources}
    exchange, exchange_opts = by_name["edd-exchange"]
    queue, queue_opts = by_name["edd-queue"]
    assert plain(loop, exchange["name"]) == "edd" and plain(loop, queue["name"]) == "edd"
    assert exchange["settings"].type == "fanout" and exchange["settings"].durable is True
    assert queue["settings"].durable is True and queue["settings"].auto_delete is False
    assert exchange_opts.protect and queue_opts.protect


def test_edd_settings_file_and_output_carry_the_passwords_secretly():
    config = stack_config("prod")
    config["edd-infra:eddSettings"] = json.dumps({"host": "edd-queue", "format": "env"})
    config["edd-infra:resultBackend"] = "db+postgresql://edd:p%40ss@db.example.org:5432/edd"
    outputs, resources, loop = run(
        config, secret_keys=[f"edd-infra:{k}" for k in SECRETS] + ["edd-infra:resultBackend"]
    )
    assert outputs["eddSettings"] == {
        "hostname": "127.0.0.1",
        "edd_user": "edd_user",
        "edd_pass": SECRETS["appPassword"],
        "edd_vhost": "/edd",
        "port": "5672",
        "mgmt_user": "bunny",
        "mgmt_pass": SECRETS["flowerBrokerPassword"],
        "mgmt_port": "15672",
    }
    by_name = {n: (p, s) for t, n, p, o, s in resources}
    props, secret = by_name["edd-settings-file"]
    ((path, (mode, owner, group, text)),) = bundle_files(plain(loop, props["stdin"])).items()
    assert (path, mode, owner, group) == ("/etc/edd-infra/edd-rabbitmq.json", "0640", "root", "www-data")
    assert "RABBITMQ_EDD_PASS=" in text and secret["stdin"]
    worker_env = [
        t
        for p, (*_, t) in bundle_files(plain(loop, by_name["edd-worker-1-service"][0]["stdin"])).items()
        if p.endswith(".env")
    ][0]
    assert "CELERY_RESULT_BACKEND=db+postgresql://edd:p%40ss@db.example.org:5432/edd\n" in worker_env


def test_bad_result_backend_is_refused_without_echoing_it():
    config = stack_config("prod")
    config["edd-infra:resultBackend"] = "postgresql://edd:s3cr3t@db/edd"
    with pytest.raises(ConfigError) as err:
        run(config, secret_keys=[f"edd-infra:{k}" for k in SECRETS] + ["edd-infra:resultBackend"])
    assert "edd-infra:resultBackend: scheme 'postgresql' is not supported" in str(err.value)
    assert "s3cr3t" not in str(err.value)


def permissions_of(loop, resources, name):
    (props,) = [p for t, n, p, *_ in resources if n == name]
    perms = props["permissions"]
    return perms.configure, perms.write, perms.read


def test_app_user_gets_least_privilege_by_default():
    _, resources, loop = run(stack_config("prod"))
    configure, write, read = permissions_of(loop, resources, "edd-app-user-vhost-permissions")
    assert configure == read and write != configure and "amq\\.default" in write
    assert configure.startswith("^(edd|celeryev|") and ".*" not in configure.replace(".+@.+", "")


def test_full_profile_is_the_seeds_and_custom_is_checked(monkeypatch):
    config = stack_config("prod")
    config["edd-infra:appUser"] = json.dumps({"permissionProfile": "full"})
    _, resources, loop = run(config)
    assert permissions_of(loop, resources, "edd-app-user-vhost-permissions") == (".*", ".*", ".*")
    warnings = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warnings.append(message))
    config["edd-infra:appUser"] = json.dumps(
        {"permissionProfile": "custom", "permissions": {"configure": ".*", "write": "^edd$", "read": ".*"}}
    )
    _, resources, loop = run(config)
    assert permissions_of(loop, resources, "edd-app-user-vhost-permissions") == (".*", "^edd$", ".*")
    assert any("edd-infra:appUser.permissions.write does not allow 'amq.default'" in w for w in warnings), warnings


def test_worker_on_another_host_dials_the_broker_over_tls(tmp_path):
    config, keys = tls_config(tmp_path)
    hosts = json.loads(config["edd-infra:hosts"])
    hosts["edd-work"] = dict(next(iter(hosts.values())), address="192.0.2.20")
    config["edd-infra:hosts"] = json.dumps(hosts)
    workers = json.loads(config["edd-infra:workers"])
    workers.append(dict(workers[0], name="edd-worker-2", host="edd-work"))
    config["edd-infra:workers"] = json.dumps(workers)
    _, resources, loop = run(config, secret_keys=keys)
    by_name = {n: p for t, n, p, *_ in resources}
    files = bundle_files(plain(loop, by_name["edd-worker-2-service"]["stdin"]))
    env = files["/etc/edd-infra/celery-edd-worker-2.env"][3]
    assert "CELERY_BROKER_URL=amqps://edd_user:" in env and "@10.0.0.2:5671//edd" in env
    assert "CELERY_BROKER_CA_FILE=/etc/edd-infra/tls/celery-edd-worker-2/ca.pem" in env
    assert files["/etc/edd-infra/tls/celery-edd-worker-2/ca.pem"][3].startswith("-----BEGIN CERTIFICATE-----")
    local_env = bundle_files(plain(loop, by_name["edd-worker-1-service"]["stdin"]))[
        "/etc/edd-infra/celery-edd-worker-1.env"
    ][3]
    assert "@127.0.0.1:5672//edd" in local_env and "CELERY_BROKER_CA_FILE" not in local_env
    # The app user may now log in from other hosts; guest stays loopback-only.
    conf = plain(loop, by_name["broker-server"]["create"])
    assert "loopback_users.guest = true" in conf and "loopback_users.edd_user" not in conf
    assert "cluster_partition_handling" not in conf  # a single node has no partition to handle


def cluster_config(tmp_path, nodes=("edd-node2", "edd-node3")):
    """prod with TLS and a cluster: the broker host's node plus `nodes`, 10.0.0.3, 10.0.0.4..."""
    config, keys = tls_config(tmp_path)
    hosts = json.loads(config["edd-infra:hosts"])
    members = [{"host": name, "address": f"10.0.0.{i}"} for i, name in enumerate(nodes, 3)]
    for member in members:
        hosts[member["host"]] = dict(next(iter(hosts.values())), address=member["address"])
    config["edd-infra:hosts"] = json.dumps(hosts)
    broker = json.loads(config["edd-infra:broker"])
    broker.update(nodeAddress="10.0.0.2", nodeName="rabbit@10.0.0.2", clusterNodes=members)
    config["edd-infra:broker"] = json.dumps(broker)
    config["edd-infra:appQueue"] = json.dumps({"queueType": "quorum"})
    config["edd-infra:erlangCookie"] = "c00kie" * 6
    return config, keys + ["edd-infra:erlangCookie"]


def test_cluster_nodes_join_the_seed_before_the_queue_and_workers_fail_over(tmp_path):
    config, keys = cluster_config(tmp_path)
    outputs, resources, loop = run(config, secret_keys=keys)
    by_name = {n: (p, o, s) for t, n, p, o, s in resources}
    for host, address in (("edd-node2", "10.0.0.3"), ("edd-node3", "10.0.0.4")):
        props, _, secret = by_name[f"broker-node-{host}"]
        create = plain(loop, props["create"])
        assert f"NODENAME=rabbit@{address}\nUSE_LONGNAME=true" in create
        assert f"listeners.ssl.2 = {address}:5671" in create and "management.tcp.ip = 127.0.0.1" in create
        assert "c00kie" not in create and secret["stdin"]
        assert "cluster_partition_handling = pause_minority" in create  # every node, the seed too
        files = bundle_files(plain(loop, props["stdin"]))
        assert files["/var/lib/edd-infra/erlang.cookie"] == ("0400", "root", "root", "c00kie" * 6)
        join, opts, _ = by_name[f"broker-node-{host}-join"]
        assert "join_cluster rabbit@10.0.0.2" in plain(loop, join["create"])
        assert "reset" in plain(loop, join["delete"])
    assert "cluster_partition_handling = pause_minority" in plain(loop, by_name["broker-server"][0]["create"])
    # The seed gets the same cookie; the provider (so the quorum queue) waits for every join.
    assert "/var/lib/edd-infra/erlang.cookie" in bundle_files(plain(loop, by_name["broker-server"][0]["stdin"]))
    # Nodes restart one at a time, drained first: each node's command waits for the one before.
    chain = [{d._name for d in by_name[n][1].depends_on} for n in ("broker-node-edd-node2", "broker-node-edd-node3")]
    assert chain == [
        {"broker-server", "broker-node-edd-node2-firewall"},
        {"broker-node-edd-node2", "broker-node-edd-node3-firewall"},
    ]
    for name in ("broker-server", "broker-node-edd-node2"):
        assert "await_online_quorum_plus_one" in plain(loop, by_name[name][0]["create"])
    provider_deps = {d._name for d in by_name["broker-provider"][1].depends_on}
    assert {"broker-admin", "broker-node-edd-node2-join", "broker-node-edd-node3-join"} <= provider_deps
    queue = by_name["edd-queue"][0]["settings"]
    assert plain(loop, queue.arguments) == {"x-queue-type": "quorum"}
    assert plain(loop, by_name["edd-app-queue-policy"][0]["policy"]).definition == {
        "dead-letter-exchange": "edd.dead-letter",
        "delivery-limit": "20",
        "dead-letter-strategy": "at-least-once",
        "overflow": "reject-publish",
    }
    # Every worker, on the broker host too, fails over between all three nodes over TLS.
    env = bundle_files(plain(loop, by_name["edd-worker-1-service"][0]["stdin"]))[
        "/etc/edd-infra/celery-edd-worker-1.env"
    ][3]
    url = next(line for line in env.splitlines() if line.startswith("CELERY_BROKER_URL="))
    assert [u.split("@")[1] for u in url.strip("'").split(";")] == [
        "10.0.0.2:5671//edd",
        "10.0.0.3:5671//edd",
        "10.0.0.4:5671//edd",
    ]
    assert "CELERY_BROKER_CA_FILE=" in env
    config_module = bundle_files(plain(loop, by_name["edd-worker-1-service"][0]["stdin"]))[
        "/etc/edd-infra/celery/celery-edd-worker-1/edd_infra_celeryconfig.py"
    ][3]
    assert "task_default_queue_type = 'quorum'" in config_module
    assert outputs["brokerEndpoints"][-2:] == ["amqps://10.0.0.3:5671//edd", "amqps://10.0.0.4:5671//edd"]
    # Every node serves its metrics over TLS where a site's Prometheus reaches it; the rules count 3 nodes.
    assert "prometheus.ssl.ip = 10.0.0.3" in plain(loop, by_name["broker-node-edd-node2"][0]["create"])
    assert "edd-infra.rules.yml" not in plain(loop, by_name["broker-node-edd-node2"][0]["create"])
    assert [t["url"] for t in outputs["scrapeTargets"] if t["url"].endswith("/metrics")][:3] == [
        "https://10.0.0.2:15691/metrics",
        "https://10.0.0.3:15691/metrics",
        "https://10.0.0.4:15691/metrics",
    ]
    assert "< 3" in plain(loop, by_name["broker-server"][0]["create"])


def test_removing_a_cluster_node_removes_only_its_resources(tmp_path):
    three = {n for _, n, *_ in run(*cluster_config(tmp_path))[1]}
    two = {n for _, n, *_ in run(*cluster_config(tmp_path, nodes=("edd-node2",)))[1]}
    assert three - two == {
        "broker-node-edd-node3",
        "broker-node-edd-node3-repair",
        "broker-node-edd-node3-join",
        "broker-node-edd-node3-firewall",
        "broker-node-edd-node3-firewall-repair",
    }
    assert two <= three


def cluster_certificate(tmp_path, *addresses):
    (tmp_path / "server.pem").write_text(server_certificate_pem(dns=addresses, ips=addresses))


def test_inter_node_tls_goes_to_every_node_and_each_firewall_names_the_other_nodes(tmp_path):
    config, keys = cluster_config(tmp_path)
    cluster_certificate(tmp_path, "10.0.0.2", "10.0.0.3", "10.0.0.4")
    broker = json.loads(config["edd-infra:broker"])
    config["edd-infra:broker"] = json.dumps(dict(broker, interNodeTls=True))
    _, resources, loop = run(config, secret_keys=keys)
    by_name = {n: (p, o) for t, n, p, o, s in resources}
    addresses = {"broker-server": "10.0.0.2", "broker-node-edd-node2": "10.0.0.3", "broker-node-edd-node3": "10.0.0.4"}
    for name, address in addresses.items():
        create = plain(loop, by_name[name][0]["create"])
        assert 'CTL_ERL_ARGS="-proto_dist inet_tls -ssl_dist_optfile /etc/rabbitmq/tls/inter_node_tls.config"' in create
        assert "SERVER_ADDITIONAL_ERL_ARGS=" in create and "{fail_if_no_peer_cert, true}" in create
        # Refused on a running node that runs the other way, before anything is written.
        assert create.index("cannot roll") < create.index("put ")
        firewall = "broker-firewall" if name == "broker-server" else f"{name}-firewall"
        rules = plain(loop, by_name[firewall][0]["create"])
        others = ", ".join(a for a in sorted(addresses.values()) if a != address)
        assert f"elements = {{ {others} }}" in rules and "tcp dport { 4369, 25672, 35672-35682 }" in rules
        # Its delete stops the unit, whose ExecStop deletes the table.
        assert "systemctl disable --now -q edd-infra-firewall" in plain(loop, by_name[firewall][0]["delete"])
        # The table is in place before the node's package or config change goes in.
        assert firewall in {d._name for d in by_name[name][1].depends_on}
    # A node joins once every node's table lets it in.
    join_deps = {d._name for d in by_name["broker-node-edd-node3-join"][1].depends_on}
    assert {"broker-firewall", "broker-node-edd-node2-firewall", "broker-node-edd-node3-firewall"} <= join_deps


def test_without_inter_node_tls_or_the_firewall_nothing_of_them_is_made(tmp_path):
    config, keys = cluster_config(tmp_path)
    broker = json.loads(config["edd-infra:broker"])
    config["edd-infra:broker"] = json.dumps(dict(broker, clusterFirewall=False))
    _, resources, loop = run(config, secret_keys=keys)
    names = {n for _, n, *_ in resources}
    assert not {n for n in names if n.endswith("-firewall")}
    create = plain(loop, {n: p for _, n, p, *_ in resources}["broker-node-edd-node2"]["create"])
    assert "inet_tls" not in create.split("cannot roll")[-1] and "inter_node_tls.config" not in create


def test_a_classic_app_queue_names_its_type_and_keeps_its_creation_arguments():
    """RabbitMQ 4 reports `x-queue-type` on every queue: a new queue declares it, and a queue of
    an older stack (created without it) is not replaced for it (the key reuses old inputs)."""
    _, resources, loop = run(stack_config("prod"))
    by_name = {n: (p, o) for _, n, p, o, _ in resources}
    settings, opts = by_name["edd-queue"]
    assert plain(loop, settings["settings"].arguments) == {"x-queue-type": "classic"}
    assert opts.ignore_changes == ['settings.arguments["x-queue-type"]'] and opts.protect


def test_poison_tasks_go_to_a_kept_dead_letter_queue_after_the_delivery_limit():
    _, resources, loop = run(stack_config("prod"))
    by_name = {n: (p, o) for _, n, p, o, _ in resources}
    policy = plain(loop, by_name["edd-app-queue-policy"][0]["policy"])
    assert policy.pattern == "^edd$" and policy.apply_to == "queues"
    # Classic: a key of quorum queues only (delivery-limit) would void the whole policy.
    assert policy.definition == {"dead-letter-exchange": "edd.dead-letter"}
    queue, queue_opts = by_name["edd-dead-letter-queue"]
    assert plain(loop, queue["name"]) == "edd.dead-letter" and queue_opts.protect
    assert by_name["edd-dead-letter-exchange"][1].protect


@pytest.mark.parametrize(
    "deployed, wanted, refused",
    [
        (None, "4.0.5-1", None),  # first deploy with a pin
        ("4.0.5-1", "4.0.5-2", None),  # a patch release
        ("3.13.7-1", "4.0.5-1", None),  # the next series
        (
            "3.10.8-1.1+deb12u1",
            "4.0.5-6+deb13u2",
            "skips a release series: RabbitMQ upgrades one minor series at a time (3.10 -> 3.11)",
        ),
        ("4.1.0-1", "4.0.5-1", "is a downgrade"),
    ],
)
def test_preview_refuses_a_version_change_rabbitmq_cannot_upgrade(monkeypatch, deployed, wanted, refused):
    """The version a stack deployed last comes back through its reference to itself; a new
    pin that skips a series or goes back fails before any resource is registered."""
    monkeypatch.setattr(Recorder, "deployed", {"brokerPackageVersion": deployed} if deployed else {})
    config = stack_config("prod")
    broker = json.loads(config["edd-infra:broker"])
    config["edd-infra:broker"] = json.dumps(dict(broker, packageVersion=wanted))
    if refused is None:
        outputs, resources, _ = run(config)
        assert outputs["brokerPackageVersion"] == wanted
        assert any(t == "pulumi:pulumi:StackReference" for t, *_ in resources)
    else:
        with pytest.raises(ConfigError) as error:
            run(config)
        (message,) = error.value.problems
        assert message.startswith("edd-infra:broker.packageVersion: ") and refused in message, message


def migration_config(tmp_path, **migrate_from):
    """prod with TLS, moving the broker from `edd-old` (10.0.0.9) to its host (broker.migrateFrom)."""
    config, keys = tls_config(tmp_path)
    hosts = json.loads(config["edd-infra:hosts"])
    hosts["edd-old"] = dict(next(iter(hosts.values())), address="10.0.0.9")
    config["edd-infra:hosts"] = json.dumps(hosts)
    broker = json.loads(config["edd-infra:broker"])
    config["edd-infra:broker"] = json.dumps(
        dict(broker, migrateFrom={"host": "edd-old", **migrate_from}, packageVersion="4.0.5-6+deb13u2")
    )
    return config, keys


def test_a_migration_copies_definitions_then_shovels_the_old_queue_before_the_provider_acts(tmp_path, monkeypatch):
    # The old broker ran 3.10: no upgrade path applies to a fresh install on another host.
    monkeypatch.setattr(Recorder, "deployed", {"brokerPackageVersion": "3.10.8-1.1+deb12u1"})
    config, keys = migration_config(tmp_path)
    _, resources, loop = run(config, secret_keys=keys)
    by_name = {n: (p, o, s) for t, n, p, o, s in resources}
    hosts = {n: plain(loop, p["connection"].host) for n, (p, *_) in by_name.items() if "connection" in p}
    assert [hosts[f"broker-migration-{step}"] for step in ("export", "import", "shovel")] == [
        "10.0.0.9",
        hosts["broker-server"],
        "10.0.0.9",
    ]
    export, export_opts, _ = by_name["broker-migration-export"]
    assert export["logging"] == "none" and {"stdout", "stderr"} <= set(export_opts.additional_secret_outputs)
    assert [d._name for d in by_name["broker-provider"][1].depends_on] == ["broker-admin", "broker-migration-import"]
    assert [d._name for d in by_name["broker-migration-shovel"][1].depends_on] == ["broker-migration-import"]
    # The admin is made on the new host too (and guest dropped there): its move is a repair.
    admin, admin_opts, _ = by_name["broker-admin"]
    assert plain(loop, admin["stdin"]).endswith("# repair moved-to-edd-queue\n") and not admin_opts.ignore_changes
    imported, _, secret = by_name["broker-migration-import"]
    assert secret["stdin"] and '"password_hash": "0ld-h4sh"' in plain(loop, imported["stdin"])
    shovel, _, secret = by_name["broker-migration-shovel"]
    assert secret["stdin"] and "cacertfile=/etc/edd-infra/migration-ca.pem" in plain(loop, shovel["stdin"])
    units = plain(loop, shovel["delete"])
    assert "for unit in celery-edd-worker-1 flower rabbitmq-server; do systemctl disable --now" in units


def test_without_migrate_from_there_is_no_migration_and_the_admin_ignores_the_host():
    _, resources, loop = run(stack_config("prod"))
    assert not [n for _, n, *_ in resources if "migration" in n]
    assert next(o for _, n, _, o, _ in resources if n == "broker-admin").ignore_changes


@pytest.mark.parametrize(
    "change, problem",
    [
        (
            {"host": "edd-queue"},
            "edd-infra:broker.migrateFrom.host: the host the broker moves away from, not broker.host",
        ),
        ({"host": "gone"}, "edd-infra:broker.migrateFrom.host: host 'gone' is not in edd-infra:hosts"),
        ({"drainTimeout": 5}, "edd-infra:broker.migrateFrom.drainTimeout: Input should be greater than or equal to 30"),
        ({"plain": True}, "edd-infra:broker.migrateFrom: needs broker.tls and a non-loopback address"),
    ],
)
def test_a_migration_that_cannot_work_is_refused_naming_the_key(tmp_path, change, problem):
    config, keys = migration_config(tmp_path)
    broker = json.loads(config["edd-infra:broker"])
    if change.pop("plain", False):
        broker = {k: v for k, v in broker.items() if k not in ("tls", "amqpListeners")}
    broker["migrateFrom"] |= change
    config["edd-infra:broker"] = json.dumps(broker)
    with pytest.raises(ConfigError) as error:
        run(config, secret_keys=keys)
    assert any(p.startswith(problem) for p in error.value.problems), error.value.problems
