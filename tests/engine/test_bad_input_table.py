"""Bad input (issue 5), table-driven through the real engine.

Each row is one invalid stack configuration. It is written into a real stack and run
through `pulumi preview` (the CLI, the project's Pulumi.yaml, the inline program of
`edd_infra.workspace.ProjectStack`). For every row: preview fails, the error lists exactly
the expected problems, each starting with its Pulumi config key and saying what is allowed,
and no resource but the stack itself was registered.

One stack serves the whole table: its config file is reset to the good secrets before each
row (set_plain only adds keys to the file it reads), so a row costs one preview, not a
`stack init` and four `config set --secret` calls.
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest
import yaml
from pulumi import automation as auto

from edd_infra.config_errors import secret_problems, validate
from edd_infra.workspace import ProjectStack
from tests.engine.conftest import PASSPHRASE
from tests.unit.certificates import certificate_pem
from tests.unit.samples import DELETE, sample_raw, with_changes

pytestmark = pytest.mark.engine

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"
GOOD_SECRETS = {
    "adminPassword": "adm1n p@ss:/;#%",
    "appPassword": "app p@ss,'\"\\",
    "flowerBrokerPassword": "flower p@ss $HOME",
    "flowerUiPassword": "ui p@ss `x`",
}


def base_config() -> dict[str, Any]:
    """A valid stack (checked below): the unit tests' sample plus a second worker, so rows
    can name workers[1] and use concurrency without tripping the autoscale rule."""
    raw = copy.deepcopy(sample_raw())
    raw["workers"].append(
        {
            "name": "edd-worker-2",
            "host": "queue",
            "workingDirectory": "/opt/edd/code",
            "virtualenv": "/opt/edd/venv",
            "concurrency": 4,
        }
    )
    return raw


@dataclass(frozen=True)
class Case:
    id: str
    # (path, value) pairs applied to base_config(); value DELETE removes the key.
    changes: tuple = ()
    # Secrets set (with `config set --secret`, value on stdin) instead of the good ones.
    secrets: dict = field(default_factory=dict)
    # The whole problem list: each problem must start with one of these, each of these
    # must start a problem. `{dir}` stands for the stack's project directory.
    expected: tuple = ()


def row(id: str, *expected: str, secrets: dict | None = None):
    """`row(id, problem...)(change...)`: the problems a row must produce (prefixes), then the
    (path, value) changes that make the base config invalid."""

    def make(*changes):
        return Case(id, tuple(changes), secrets or {}, expected)

    return make


# Unknown-key messages list every key allowed at that level (sorted); rows check the first
# few, which include the key meant, so a key added later does not break them.
ALLOWED_TOP = (
    "edd-infra:brokr: unknown key; allowed: adminPassword, alerts, appPassword, appQueue, appUser, backups, broker,"
)
PEM_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAnotarealkey\n-----END OPENSSH PRIVATE KEY-----\n"
SECOND_HOST = {"address": "192.0.2.11", "hostKey": KEY}
# Files in the stack's project directory (see TableStack), where relative names resolve.
CERTIFICATE = "-----BEGIN CERTIFICATE-----\nMIIBnotarealcertificate\n-----END CERTIFICATE-----\n"
# Signing-key rotation reads its certificates as Celery does: these are real ones.
ROTATION_FILES = {
    "signing-new.pem": certificate_pem(serial=2),
    "signing-old.pem": certificate_pem(serial=1),
    "signing-same-id.pem": certificate_pem(serial=2, not_after=datetime(2101, 1, 1, tzinfo=timezone.utc)),
    "signing-short.pem": certificate_pem(serial=3, not_after=datetime(2098, 6, 1, tzinfo=timezone.utc)),
    "signing-ec.pem": certificate_pem(serial=4, key="ec"),
}
PROJECT_FILES = {
    "ca.pem": CERTIFICATE,
    "server.pem": CERTIFICATE,
    "signing.pem": CERTIFICATE,
    "server.key.txt": "not a certificate\n",
    **ROTATION_FILES,
}
TLS = {"caFile": "ca.pem", "certFile": "server.pem"}
TLS_KEY = {"brokerTlsKey": PEM_KEY}
SIGNING_KEY = {"celerySigningKey": PEM_KEY}
ROTATION = {"certFile": "signing-new.pem", "previousCertFile": "signing-old.pem", "previousTrustedUntil": "2099-01-01"}


def rotation(**changes):
    """A celerySigning change: the valid rotation above with `changes`."""
    return (("celerySigning",), {k: v for k, v in {**ROTATION, **changes}.items() if v is not None})


COOKIE = "0123456789abcdef0123456789abcdef"
CLUSTER_SECRETS = dict(TLS_KEY, erlangCookie=COOKIE)
# A valid cluster (checked below): node2 joins queue's node; rows change one thing.
CLUSTER = (
    (("broker", "tls"), TLS),
    (("hosts", "node2"), {"address": "192.0.2.12", "hostKey": KEY}),
    (("broker", "amqpListeners"), ["127.0.0.1", "192.0.2.10"]),
    (("broker", "nodeAddress"), "192.0.2.10"),
    (("broker", "nodeName"), "rabbit@192.0.2.10"),
    (("broker", "clusterNodes"), [{"host": "node2", "address": "192.0.2.12"}]),
    (("appQueue",), {"queueType": "quorum"}),
)
URL_PREFIX = "^([A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*)?$"
APP_USER_KEY_WORD = (
    "edd-infra:appUser.name: must be 1 to 32 letters, digits, '_' or '-', starting with a letter or "
    "'_': it is written into rabbitmq.conf as the key loopback_users.<name>, whose syntax cannot hold "
    "'.' or any other character"
)

CASES = [
    # Unknown keys, at every object level.
    row("unknown-top-level-key", ALLOWED_TOP)((("brokr",), {"host": "queue"})),
    row(
        "unknown-host-key",
        "edd-infra:hosts.queue.adress: unknown key; allowed here: address, connection, hostKey, "
        "port, serviceManager, sudo, user",
    )((("hosts", "queue", "adress"), "192.0.2.10")),
    row(
        "unknown-broker-key",
        "edd-infra:broker.amqpport: unknown key; allowed here: adminUser, amqpListeners, amqpPort,",
    )((("broker", "amqpport"), 5672)),
    row(
        "unknown-app-user-key",
        "edd-infra:appUser.nmae: unknown key; allowed here: name, permissionProfile, permissions, tags",
    )((("appUser",), {"nmae": "edd"})),
    row(
        "unknown-permissions-key",
        "edd-infra:appUser.permissions.admin: unknown key; allowed here: configure, read, write",
    )((("appUser",), {"permissionProfile": "custom", "permissions": {"admin": ".*"}})),
    row("unknown-flower-broker-user-key", "edd-infra:flowerBrokerUser.role: unknown key; allowed here: name, profile")(
        (("flowerBrokerUser",), {"role": "monitoring"})
    ),
    row(
        "unknown-worker-key",
        "edd-infra:workers[1].concurcency: unknown key; allowed here: app, autoscale, concurrency,",
    )((("workers", 1, "concurcency"), 4)),
    row("unknown-flower-key", "edd-infra:flower.adress: unknown key; allowed here: address, app,")(
        (("flower", "adress"), "127.0.0.1")
    ),
    # Wrong types (strict: no "22" for 22, no 1 for true).
    row("host-port-as-string", "edd-infra:hosts.queue.port: Input should be a valid integer")(
        (("hosts", "queue", "port"), "22")
    ),
    row("host-as-string", "edd-infra:hosts.queue: Input should be a valid dictionary or instance of Host")(
        (("hosts", "queue"), "192.0.2.10")
    ),
    row("listeners-as-string", "edd-infra:broker.amqpListeners: Input should be a valid list")(
        (("broker", "amqpListeners"), "127.0.0.1")
    ),
    row("tags-as-string", "edd-infra:appUser.tags: Input should be a valid list")(
        (("appUser",), {"tags": "monitoring"})
    ),
    row("extra-groups-as-string", "edd-infra:workers[0].extraGroups: Input should be a valid list")(
        (("workers", 0, "extraGroups"), "www-data")
    ),
    row("flower-port-as-float", "edd-infra:flower.port: Input should be a valid integer")((("flower", "port"), 5555.5)),
    row("concurrency-as-string", "edd-infra:workers[1].concurrency: Input should be a valid integer")(
        (("workers", 1, "concurrency"), "4")
    ),
    row("autoscale-as-int", "edd-infra:workers[0].autoscale: Input should be a valid string")(
        (("workers", 0, "autoscale"), 10)
    ),
    # Booleans.
    row("sudo-yes", "edd-infra:hosts.queue.sudo: Input should be a valid boolean")((("hosts", "queue", "sudo"), "yes")),
    row("purge-on-destroy-string", "edd-infra:broker.purgeOnDestroy: Input should be a valid boolean")(
        (("broker", "purgeOnDestroy"), "true")
    ),
    row("events-1", "edd-infra:workers[0].events: Input should be a valid boolean")((("workers", 0, "events"), 1)),
    row("flower-enabled-no", "edd-infra:flower.enabled: Input should be a valid boolean")(
        (("flower", "enabled"), "no")
    ),
    row("flower-persistent-0", "edd-infra:flower.persistent: Input should be a valid boolean")(
        (("flower", "persistent"), 0)
    ),
    # Hosts: names, addresses, how they are reached.
    row("host-address-with-space", "edd-infra:hosts.queue.address: must be a DNS host name or an IP address")(
        (("hosts", "queue", "address"), "bad host!")
    ),
    row("host-address-leading-dash", "edd-infra:hosts.queue.address: must be a DNS host name or an IP address")(
        (("hosts", "queue", "address"), "-queue.example.org")
    ),
    row("host-address-empty-label", "edd-infra:hosts.queue.address: must be a DNS host name or an IP address")(
        (("hosts", "queue", "address"), "queue..example.org")
    ),
    row("host-address-not-an-ipv4", "edd-infra:hosts.queue.address: must be a DNS host name or an IP address")(
        (("hosts", "queue", "address"), "192.0.2.300")
    ),
    row("host-address-short-ipv4", "edd-infra:hosts.queue.address: must be a DNS host name or an IP address")(
        (("hosts", "queue", "address"), "192.0.2")
    ),
    row("host-name-uppercase", "edd-infra:hosts.Queue_1: the name must match ^[a-z][a-z0-9-]{0,62}$ (got 'Queue_1')")(
        (("hosts", "Queue_1"), SECOND_HOST)
    ),
    row("no-hosts", "edd-infra:hosts: Dictionary should have at least 1 item")((("hosts",), {})),
    row("connection-telnet", "edd-infra:hosts.queue.connection: Input should be 'ssh' or 'local'")(
        (("hosts", "queue", "connection"), "telnet")
    ),
    row("ssh-without-address", "edd-infra:hosts.queue: address is required when connection is 'ssh'")(
        (("hosts", "queue", "address"), DELETE)
    ),
    row("ssh-user-with-space", "edd-infra:hosts.queue.user: must match ^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")(
        (("hosts", "queue", "user"), "root user")
    ),
    row("host-key-not-a-key-line", "edd-infra:hosts.queue.hostKey: must be an OpenSSH public key line")(
        (("hosts", "queue", "hostKey"), "AAAAC3NzaC1lZDI1NTE5AAAAIExample")
    ),
    row("host-key-missing", "edd-infra:hosts.queue.hostKey: required while requireHostKeys is true")(
        (("hosts", "queue", "hostKey"), DELETE)
    ),
    row("service-manager-upstart", "edd-infra:hosts.queue.serviceManager: Input should be 'systemd' or 'launchd'")(
        (("hosts", "queue", "serviceManager"), "upstart")
    ),
    row("managed-broker-on-launchd", "edd-infra:broker.install: 'managed' needs a systemd (Debian) host")(
        (("hosts", "queue", "serviceManager"), "launchd")
    ),
    # Ports.
    row("ssh-port-0", "edd-infra:hosts.queue.port: Input should be greater than or equal to 1")(
        (("hosts", "queue", "port"), 0)
    ),
    row("ssh-port-65536", "edd-infra:hosts.queue.port: Input should be less than or equal to 65535")(
        (("hosts", "queue", "port"), 65536)
    ),
    row("amqp-port-negative", "edd-infra:broker.amqpPort: Input should be greater than or equal to 1")(
        (("broker", "amqpPort"), -5672)
    ),
    row("management-port-70000", "edd-infra:broker.managementPort: Input should be less than or equal to 65535")(
        (("broker", "managementPort"), 70000)
    ),
    row("flower-port-0", "edd-infra:flower.port: Input should be greater than or equal to 1")((("flower", "port"), 0)),
    row(
        "management-port-is-amqp-port",
        "edd-infra:broker.managementPort: 127.0.0.1:5672 is also edd-infra:broker.amqpListeners[0]",
    )((("broker", "managementPort"), 5672)),
    row(
        "flower-port-is-management-port",
        "edd-infra:flower.port: 127.0.0.1:15672 is also edd-infra:broker.managementPort",
    )((("flower", "port"), 15672)),
    row(
        "flower-on-every-address-at-amqp-port",
        "edd-infra:flower.port: [::]:5672 is also edd-infra:broker.amqpListeners[0]",
        "edd-infra:flower.address: :: is not loopback, so flower.tls is required",
    )((("flower", "address"), "::"), (("flower", "port"), 5672)),
    row(
        "flower-off-loopback-without-tls",
        "edd-infra:flower.address: 192.0.2.10 is not loopback, so flower.tls is required",
    )((("flower", "address"), "192.0.2.10")),
    row(
        "flower-tls-without-key-or-ca",
        "edd-infra:flower.tls.caFile: required without broker.tls",
        "edd-infra:flowerTlsKey: required when flower.tls is set",
        "edd-infra:flower.tls.certFile: cannot read",
    )((("flower", "tls"), {"certFile": "missing-flower.pem"})),
    row(
        "prometheus-port-is-management-port",
        "edd-infra:broker.prometheusPort: 127.0.0.1:15672 is also edd-infra:broker.managementPort",
    )((("broker", "prometheusPort"), 15672)),
    row(
        "flower-port-is-prometheus-port",
        "edd-infra:flower.port: 127.0.0.1:15692 is also edd-infra:broker.prometheusPort",
    )((("flower", "port"), 15692)),
    row("alerts-failure-ratio-0", "edd-infra:alerts.taskFailureRatio: Input should be greater than 0")(
        (("alerts",), {"taskFailureRatio": 0.0})
    ),
    row("alerts-forecast-hours-as-string", "edd-infra:alerts.diskForecastHours: Input should be a valid integer")(
        (("alerts",), {"diskForecastHours": "4"})
    ),
    row(
        "unknown-alerts-key",
        "edd-infra:alerts.failureRatio: unknown key; allowed here: diskForecastHours, taskFailureRatio",
    )((("alerts",), {"failureRatio": 0.2})),
    row(
        "duplicate-amqp-listener",
        "edd-infra:broker.amqpListeners[1]: 127.0.0.1:5672 is also edd-infra:broker.amqpListeners[0]",
    )((("broker", "amqpListeners"), ["127.0.0.1", "127.0.0.1"])),
    # The broker.
    row(
        "broker-host-unknown",
        "edd-infra:broker.host: host 'nowhere' is not in edd-infra:hosts (have: queue)",
        "edd-infra:workers[0].host: a worker off the broker host ('nowhere') needs broker.tls",
        "edd-infra:workers[1].host: a worker off the broker host ('nowhere') needs broker.tls",
        "edd-infra:flower.host: Flower must run on the broker host ('nowhere')",
    )((("broker", "host"), "nowhere")),
    row("broker-host-not-an-identifier", "edd-infra:broker.host: must match ^[a-z][a-z0-9-]{0,62}$")(
        (("broker", "host"), "Queue")
    ),
    row("install-docker", "edd-infra:broker.install: Input should be 'managed' or 'external'")(
        (("broker", "install"), "docker")
    ),
    row("package-version-shell", "edd-infra:broker.packageVersion: must match ^[A-Za-z0-9.+:~-]+$")(
        (("broker", "packageVersion"), "3.12.1; reboot")
    ),
    row("no-amqp-listeners", "edd-infra:broker.amqpListeners: List should have at least 1 item")(
        (("broker", "amqpListeners"), [])
    ),
    row("amqp-listener-host-name", "edd-infra:broker.amqpListeners[1]: must be an IPv4 or IPv6 address")(
        (("broker", "amqpListeners"), ["127.0.0.1", "localhost"])
    ),
    row("management-address-octet-256", "edd-infra:broker.managementAddress: must be an IPv4 or IPv6 address")(
        (("broker", "managementAddress"), "127.0.0.256")
    ),
    row("node-address-bad-ipv6", "edd-infra:broker.nodeAddress: must be an IPv4 or IPv6 address")(
        (("broker", "nodeAddress"), "::g")
    ),
    row("management-url-ftp", r"edd-infra:broker.managementUrl: must match ^https?://[^\s/@]+(:\d+)?$")(
        (("broker", "managementUrl"), "ftp://127.0.0.1:15672")
    ),
    row("management-url-with-credentials", r"edd-infra:broker.managementUrl: must match ^https?://[^\s/@]+(:\d+)?$")(
        (("broker", "managementUrl"), "http://admin:pw@127.0.0.1:15672")
    ),
    row("management-url-port-out-of-range", "edd-infra:broker.managementUrl: must be http(s)://host[:port]")(
        (("broker", "managementUrl"), "http://127.0.0.1:156720")
    ),
    row("management-url-no-host", "edd-infra:broker.managementUrl: must be http(s)://host[:port]")(
        (("broker", "managementUrl"), "http://:15672")
    ),
    row("node-name-without-host", "edd-infra:broker.nodeName: must match ^[A-Za-z0-9_-]+@[A-Za-z0-9.-]+$")(
        (("broker", "nodeName"), "rabbit")
    ),
    row("node-name-with-space", "edd-infra:broker.nodeName: must match ^[A-Za-z0-9_-]+@[A-Za-z0-9.-]+$")(
        (("broker", "nodeName"), "rabbit@local host")
    ),
    row("start-timeout-5", "edd-infra:broker.startTimeout: Input should be greater than or equal to 10")(
        (("broker", "startTimeout"), 5)
    ),
    row("start-timeout-601", "edd-infra:broker.startTimeout: Input should be less than or equal to 600")(
        (("broker", "startTimeout"), 601)
    ),
    row("admin-user-guest", "edd-infra:broker.adminUser: 'guest' is removed from the broker; choose another name")(
        (("broker", "adminUser"), "guest")
    ),
    row(
        "admin-user-is-app-user",
        "edd-infra:broker.adminUser, appUser.name, flowerBrokerUser.name: must be three different users",
    )((("broker", "adminUser"), "edd_user")),
    # The vhost and the broker users.
    row("backups-keep-0", "edd-infra:backups.keep: Input should be greater than or equal to 1")(
        (("backups",), {"keep": 0})
    ),
    row("backups-schedule-shell", "edd-infra:backups.schedule: must match ^[A-Za-z0-9*:,./~ -]{1,64}$")(
        (("backups",), {"schedule": "daily; rm -rf /"})
    ),
    row("vhost-without-slash", "edd-infra:vhost: must match ^/[A-Za-z0-9_.-]*$")((("vhost",), "edd")),
    row("vhost-with-space", "edd-infra:vhost: must match ^/[A-Za-z0-9_.-]*$")((("vhost",), "/edd prod")),
    row("app-user-guest", "edd-infra:appUser.name: 'guest' is removed from the broker; choose another name")(
        (("appUser",), {"name": "guest"})
    ),
    row("app-user-with-space", APP_USER_KEY_WORD)((("appUser",), {"name": "edd user"})),
    # appUser.name is written into rabbitmq.conf as `loopback_users.<name> = true`: cuttlefish's key
    # syntax splits it at a "." (RabbitMQ then refuses to boot on an unknown key) and holds no other sign.
    row("app-user-with-dot", APP_USER_KEY_WORD)((("appUser",), {"name": "edd.user"})),
    row("app-user-with-at", APP_USER_KEY_WORD)((("appUser",), {"name": "edd@edd"})),
    row("app-user-non-ascii", APP_USER_KEY_WORD)((("appUser",), {"name": "edd_\u00fcser"})),
    row("app-user-with-equals", APP_USER_KEY_WORD)((("appUser",), {"name": "edd=true"})),
    # A dotted name is refused even while no loopback_users line is written (a worker on another host):
    # moving the workers back would write it.
    row("app-user-with-dot-and-remote-worker", APP_USER_KEY_WORD)(
        *CLUSTER[:1],
        (("broker", "amqpListeners"), ["127.0.0.1", "192.0.2.10"]),
        (("hosts", "w2"), SECOND_HOST),
        (("workers", 1, "host"), "w2"),
        (("appUser",), {"name": "edd.user"}),
    ),
    row(
        "app-user-administrator-tag",
        "edd-infra:appUser.tags[0]: Input should be 'management', 'monitoring' or 'policymaker'",
    )((("appUser",), {"tags": ["administrator"]})),
    row(
        "configure-regex-unclosed",
        "edd-infra:appUser.permissions.configure: must be a regular expression that compiles",
    )((("appUser",), {"permissionProfile": "custom", "permissions": {"configure": "^(edd"}})),
    row("write-regex-bad-range", "edd-infra:appUser.permissions.write: must be a regular expression that compiles")(
        (("appUser",), {"permissionProfile": "custom", "permissions": {"write": "[z-a]"}})
    ),
    row(
        "read-regex-nothing-to-repeat", "edd-infra:appUser.permissions.read: must be a regular expression that compiles"
    )((("appUser",), {"permissionProfile": "custom", "permissions": {"read": "*"}})),
    row(
        "permission-profile-unknown", "edd-infra:appUser.permissionProfile: Input should be 'least', 'full' or 'custom'"
    )((("appUser",), {"permissionProfile": "minimal"})),
    row("permissions-without-custom", "edd-infra:appUser: permissions are used only with permissionProfile: custom")(
        (("appUser",), {"permissions": {"read": ".*"}})
    ),
    row("custom-without-permissions", "edd-infra:appUser: permissionProfile custom needs permissions")(
        (("appUser",), {"permissionProfile": "custom"})
    ),
    row("exchange-type-headers", "edd-infra:appQueue.exchangeType: Input should be 'fanout', 'direct' or 'topic'")(
        (("appQueue",), {"exchangeType": "headers"})
    ),
    row("edd-settings-unknown-format", "edd-infra:eddSettings.format: Input should be 'json', 'ini' or 'env'")(
        (("eddSettings",), {"host": "queue", "format": "yaml"})
    ),
    row("edd-settings-mode-0644", "edd-infra:eddSettings.mode: Input should be '0600' or '0640'")(
        (("eddSettings",), {"host": "queue", "mode": "0644"})
    ),
    row("edd-settings-unknown-host", "edd-infra:eddSettings.host: host 'web' is not in edd-infra:hosts")(
        (("eddSettings",), {"host": "web"})
    ),
    row(
        "result-backend-without-db-prefix",
        "edd-infra:resultBackend: scheme 'postgresql' is not supported",
        secrets={"resultBackend": "postgresql://celery:pw@db/edd"},
    )(),
    row(
        "flower-broker-user-guest",
        "edd-infra:flowerBrokerUser.name: 'guest' is removed from the broker; choose another name",
    )((("flowerBrokerUser",), {"name": "guest"})),
    row("flower-profile-admin", "edd-infra:flowerBrokerUser.profile: Input should be 'monitoring' or 'administrator'")(
        (("flowerBrokerUser",), {"profile": "admin"})
    ),
    row(
        "flower-broker-user-is-admin",
        "edd-infra:broker.adminUser, appUser.name, flowerBrokerUser.name: must be three different users",
    )((("flowerBrokerUser",), {"name": "edd-infra-admin"})),
    # Workers.
    row("worker-name-uppercase", "edd-infra:workers[0].name: must match ^[a-z][a-z0-9-]{0,62}$")(
        (("workers", 0, "name"), "Worker_1")
    ),
    row("worker-names-duplicate", "edd-infra:workers[1].name: duplicate worker name 'edd-worker-1' (also workers[0])")(
        (("workers", 1, "name"), "edd-worker-1")
    ),
    row("worker-host-unknown", "edd-infra:workers[1].host: host 'nowhere' is not in edd-infra:hosts (have: queue)")(
        (("workers", 1, "host"), "nowhere")
    ),
    row(
        "worker-off-broker-host-without-tls",
        "edd-infra:workers[1].host: a worker off the broker host ('queue') "
        "needs broker.tls and a non-loopback address in broker.amqpListeners",
    )((("hosts", "web"), SECOND_HOST), (("workers", 1, "host"), "web")),
    row("worker-app-shell", "edd-infra:workers[0].app: must match ^[A-Za-z_][A-Za-z0-9_.:]*$")(
        (("workers", 0, "app"), "edd; rm -rf /")
    ),
    row("worker-no-queues", "edd-infra:workers[0].queues: List should have at least 1 item")(
        (("workers", 0, "queues"), [])
    ),
    row("worker-queue-with-space", "edd-infra:workers[0].queues[1]: must match ^[A-Za-z0-9_.-]{1,255}$")(
        (("workers", 0, "queues"), ["edd", "edd slow"])
    ),
    row("concurrency-0", "edd-infra:workers[1].concurrency: Input should be greater than or equal to 1")(
        (("workers", 1, "concurrency"), 0)
    ),
    row("concurrency-negative", "edd-infra:workers[1].concurrency: Input should be greater than or equal to 1")(
        (("workers", 1, "concurrency"), -4)
    ),
    row("concurrency-257", "edd-infra:workers[1].concurrency: Input should be less than or equal to 256")(
        (("workers", 1, "concurrency"), 257)
    ),
    row("concurrency-and-autoscale", "edd-infra:workers[0]: set concurrency or autoscale, not both")(
        (("workers", 0, "concurrency"), 2)
    ),
    row("autoscale-min-above-max", "edd-infra:workers[0]: autoscale is 'max,min': max must be >= min")(
        (("workers", 0, "autoscale"), "1,10")
    ),
    row("autoscale-one-number", "edd-infra:workers[0].autoscale: must match ^[1-9][0-9]{0,2},[0-9]{1,3}$")(
        (("workers", 0, "autoscale"), "10")
    ),
    row("working-directory-relative", "edd-infra:workers[0].workingDirectory: must match ^/[A-Za-z0-9_./@+-]*$")(
        (("workers", 0, "workingDirectory"), "opt/edd/code")
    ),
    row("virtualenv-missing", "edd-infra:workers[1].virtualenv: required, not set")(
        (("workers", 1, "virtualenv"), DELETE)
    ),
    row("worker-user-with-space", "edd-infra:workers[0].user: must match ^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")(
        (("workers", 0, "user"), "celery user")
    ),
    row(
        "worker-extra-group-with-colon",
        "edd-infra:workers[0].extraGroups[0]: must match ^[A-Za-z_][A-Za-z0-9_.-]{0,31}$",
    )((("workers", 0, "extraGroups"), ["www-data:x"])),
    row(
        "log-level-verbose",
        "edd-infra:workers[0].logLevel: Input should be 'debug', 'info', 'warning', 'error' or 'critical'",
    )((("workers", 0, "logLevel"), "verbose")),
    row("no-workers", "edd-infra:workers: List should have at least 1 item")((("workers",), [])),
    # Flower.
    row(
        "flower-host-unknown",
        "edd-infra:flower.host: host 'nowhere' is not in edd-infra:hosts (have: queue)",
        "edd-infra:flower.host: Flower must run on the broker host ('queue')",
    )((("flower", "host"), "nowhere")),
    row("flower-not-on-broker-host", "edd-infra:flower.host: Flower must run on the broker host ('queue')")(
        (("hosts", "web"), SECOND_HOST), (("flower", "host"), "web")
    ),
    row("flower-address-host-name", "edd-infra:flower.address: must be an IPv4 or IPv6 address")(
        (("flower", "address"), "localhost")
    ),
    row("flower-url-prefix-leading-slash", f"edd-infra:flower.urlPrefix: must match {URL_PREFIX}")(
        (("flower", "urlPrefix"), "/flower")
    ),
    row("flower-url-prefix-trailing-slash", f"edd-infra:flower.urlPrefix: must match {URL_PREFIX}")(
        (("flower", "urlPrefix"), "flower/")
    ),
    row("flower-ui-user-with-colon", "edd-infra:flower.uiUser: must match ^[A-Za-z0-9_.@-]{1,64}$")(
        (("flower", "uiUser"), "admin:root")
    ),
    row("flower-working-directory-tilde", "edd-infra:flower.workingDirectory: must match ^/[A-Za-z0-9_./@+-]*$")(
        (("flower", "workingDirectory"), "~/edd")
    ),
    row("flower-app-empty", "edd-infra:flower.app: must match ^[A-Za-z_][A-Za-z0-9_.:]*$")((("flower", "app"), "")),
    # broker.tls: its keys, its files, its secret, its listeners.
    row(
        "unknown-tls-key",
        "edd-infra:broker.tls.keyFile: unknown key; allowed here: amqpPort, caFile, certFile, managementPort",
        secrets=TLS_KEY,
    )((("broker", "tls"), dict(TLS, keyFile="server.key"))),
    row("tls-without-cert-file", "edd-infra:broker.tls.certFile: required, not set", secrets=TLS_KEY)(
        (("broker", "tls"), {"caFile": "ca.pem"})
    ),
    row("tls-ca-file-with-space", "edd-infra:broker.tls.caFile: must match ^[A-Za-z0-9_./@+-]+$", secrets=TLS_KEY)(
        (("broker", "tls"), dict(TLS, caFile="my ca.pem"))
    ),
    row(
        "tls-amqp-port-0", "edd-infra:broker.tls.amqpPort: Input should be greater than or equal to 1", secrets=TLS_KEY
    )((("broker", "tls"), dict(TLS, amqpPort=0))),
    row("tls-without-key", "edd-infra:brokerTlsKey: required when broker.tls is set")((("broker", "tls"), TLS)),
    row(
        "tls-ca-file-missing",
        "edd-infra:broker.tls.caFile: cannot read '{dir}/missing-ca.pem' (FileNotFoundError); a PEM certificate file",
        secrets=TLS_KEY,
    )((("broker", "tls"), dict(TLS, caFile="missing-ca.pem"))),
    row(
        "tls-cert-file-not-pem",
        "edd-infra:broker.tls.certFile: '{dir}/server.key.txt' holds no PEM certificate",
        secrets=TLS_KEY,
    )((("broker", "tls"), dict(TLS, certFile="server.key.txt"))),
    row("tls-on-external-broker", "edd-infra:broker.tls: only for install: managed", secrets=TLS_KEY)(
        (("broker", "tls"), TLS), (("broker", "install"), "external")
    ),
    row(
        "tls-without-loopback-listener",
        "edd-infra:broker.amqpListeners: with broker.tls, include 127.0.0.1 or ::1",
        secrets=TLS_KEY,
    )((("broker", "tls"), TLS), (("broker", "amqpListeners"), ["192.0.2.10"])),
    row(
        "tls-amqp-port-is-plain-port",
        "edd-infra:broker.tls.amqpPort: 127.0.0.1:5672 is also edd-infra:broker.amqpListeners[0]",
        "edd-infra:broker.tls.amqpPort: [::1]:5672 is also edd-infra:broker.amqpListeners[1]",
        secrets=TLS_KEY,
    )((("broker", "tls"), dict(TLS, amqpPort=5672))),
    row(
        "tls-key-not-a-key",
        "edd-infra:brokerTlsKey: must be an OpenSSH or PEM private key",
        secrets={"brokerTlsKey": CERTIFICATE},
    )((("broker", "tls"), TLS)),
    row("tls-key-in-plaintext", "edd-infra:brokerTlsKey: stored in plaintext")(
        (("broker", "tls"), TLS), (("brokerTlsKey",), PEM_KEY)
    ),
    # broker.clusterNodes: TLS, node names the others dial, a quorum queue, the cookie.
    row(
        "cluster-node-host-unknown",
        "edd-infra:broker.clusterNodes[0].host: host 'node9' is not in edd-infra:hosts",
        secrets=CLUSTER_SECRETS,
    )(*CLUSTER, (("broker", "clusterNodes"), [{"host": "node9", "address": "192.0.2.12"}])),
    row(
        "cluster-without-tls",
        "edd-infra:broker.clusterNodes: a cluster needs broker.tls",
        secrets={"erlangCookie": COOKIE},
    )(*CLUSTER[1:]),
    row(
        "cluster-with-loopback-node-name",
        "edd-infra:broker.nodeName: in a cluster, rabbit@<broker.nodeAddress>",
        secrets=CLUSTER_SECRETS,
    )(*CLUSTER, (("broker", "nodeName"), DELETE), (("broker", "nodeAddress"), DELETE)),
    row(
        "cluster-with-classic-queue",
        "edd-infra:appQueue.queueType: must be quorum with broker.clusterNodes",
        secrets=CLUSTER_SECRETS,
    )(*CLUSTER, (("appQueue",), {"queueType": "classic"})),
    row(
        "cluster-node-on-broker-host",
        "edd-infra:broker.clusterNodes[0].host: 'queue' already runs a node (edd-infra:broker.host)",
        secrets=CLUSTER_SECRETS,
    )(*CLUSTER, (("broker", "clusterNodes"), [{"host": "queue", "address": "192.0.2.12"}])),
    row("cluster-node-ipv6", "edd-infra:broker.clusterNodes[0].address: IPv4 only", secrets=CLUSTER_SECRETS)(
        *CLUSTER, (("broker", "clusterNodes"), [{"host": "node2", "address": "2001:db8::12"}])
    ),
    row(
        "cluster-node-same-address",
        "edd-infra:broker.clusterNodes[0].address: 192.0.2.10 is also edd-infra:broker.nodeAddress",
        secrets=CLUSTER_SECRETS,
    )(*CLUSTER, (("broker", "clusterNodes"), [{"host": "node2", "address": "192.0.2.10"}])),
    row("cluster-without-cookie", "edd-infra:erlangCookie: required when broker.clusterNodes is set", secrets=TLS_KEY)(
        *CLUSTER
    ),
    row(
        "cluster-cookie-too-short",
        "edd-infra:erlangCookie: 20 to 255 letters and digits",
        secrets=dict(TLS_KEY, erlangCookie="short;cookie"),
    )(*CLUSTER),
    row(
        "cluster-node-unknown-key",
        "edd-infra:broker.clusterNodes[0].adress: unknown key; allowed here: address, host",
        "edd-infra:broker.clusterNodes[0].address: required, not set",
        secrets=CLUSTER_SECRETS,
    )(*CLUSTER, (("broker", "clusterNodes"), [{"host": "node2", "adress": "192.0.2.12"}])),
    # celerySigning.
    row(
        "unknown-signing-key",
        "edd-infra:celerySigning.keyFile: unknown key; allowed here: certFile",
        secrets=SIGNING_KEY,
    )((("celerySigning",), {"certFile": "signing.pem", "keyFile": "signing.key"})),
    row("signing-without-key", "edd-infra:celerySigningKey: required when celerySigning is set")(
        (("celerySigning",), {"certFile": "signing.pem"})
    ),
    row(
        "signing-cert-missing",
        "edd-infra:celerySigning.certFile: cannot read '{dir}/missing.pem' (FileNotFoundError); a PEM certificate file",
        secrets=SIGNING_KEY,
    )((("celerySigning",), {"certFile": "missing.pem"})),
    row(
        "signing-key-not-a-key",
        "edd-infra:celerySigningKey: must be an OpenSSH or PEM private key",
        secrets={"celerySigningKey": "hunter2"},
    )((("celerySigning",), {"certFile": "signing.pem"})),
    # celerySigning during a key rotation.
    row(
        "rotation-without-until",
        "edd-infra:celerySigning: previousTrustedUntil is required with previousCertFile: the UTC date or date-time",
        secrets=SIGNING_KEY,
    )(rotation(previousTrustedUntil=None)),
    row(
        "rotation-until-alone",
        "edd-infra:celerySigning: previousTrustedUntil is used only with previousCertFile",
        secrets=SIGNING_KEY,
    )(rotation(previousCertFile=None)),
    row(
        "rotation-until-not-utc",
        "edd-infra:celerySigning.previousTrustedUntil: must be in UTC (end it with Z or +00:00), e.g. 2027-01-31",
        secrets=SIGNING_KEY,
    )(rotation(previousTrustedUntil="2099-01-01T00:00:00+02:00")),
    row(
        "rotation-until-not-a-date",
        "edd-infra:celerySigning.previousTrustedUntil: must be an ISO-8601 UTC date or date-time, e.g. 2027-01-31",
        secrets=SIGNING_KEY,
    )(rotation(previousTrustedUntil="in a week")),
    row(
        "rotation-previous-missing",
        "edd-infra:celerySigning.previousCertFile: cannot read '{dir}/missing.pem' "
        "(FileNotFoundError); a PEM certificate file",
        secrets=SIGNING_KEY,
    )(rotation(previousCertFile="missing.pem")),
    row(
        "rotation-previous-not-a-certificate",
        "edd-infra:celerySigning.previousCertFile: '{dir}/server.key.txt' holds no PEM certificate that can be read",
        secrets=SIGNING_KEY,
    )(rotation(previousCertFile="server.key.txt")),
    row(
        "rotation-previous-is-the-new-one",
        "edd-infra:celerySigning.previousCertFile: is the same certificate as celerySigning.certFile",
        secrets=SIGNING_KEY,
    )(rotation(previousCertFile="signing-new.pem")),
    row(
        "rotation-previous-same-issuer-and-serial",
        "edd-infra:celerySigning.previousCertFile: has the same issuer and serial number as celerySigning.certFile",
        secrets=SIGNING_KEY,
    )(rotation(previousCertFile="signing-same-id.pem")),
    row(
        "rotation-previous-expires-first",
        "edd-infra:celerySigning.previousCertFile: the certificate expires at "
        "2098-06-01T00:00:00Z, before celerySigning.previousTrustedUntil (2099-01-01T00:00:00Z)",
        secrets=SIGNING_KEY,
    )(rotation(previousCertFile="signing-short.pem")),
    row(
        "rotation-previous-not-rsa",
        "edd-infra:celerySigning.previousCertFile: must be an RSA certificate",
        secrets=SIGNING_KEY,
    )(rotation(previousCertFile="signing-ec.pem")),
    # Secrets (set with --secret unless the row says otherwise).
    row("app-password-empty", "edd-infra:appPassword: must not be empty", secrets={"appPassword": ""})(),
    row(
        "ui-password-newline",
        "edd-infra:flowerUiPassword: printable characters only (no newline, tab or control characters)",
        secrets={"flowerUiPassword": "two\nlines"},
    )(),
    row(
        "admin-password-escape",
        "edd-infra:adminPassword: printable characters only (no newline, tab or control characters)",
        secrets={"adminPassword": "red\x1b[31m"},
    )(),
    row(
        "flower-password-too-long",
        "edd-infra:flowerBrokerPassword: at most 1024 bytes",
        secrets={"flowerBrokerPassword": "\u00e9" * 513},
    )(),
    row(
        "ssh-key-not-a-key",
        "edd-infra:sshPrivateKey: must be an OpenSSH or PEM private key",
        secrets={"sshPrivateKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample (the public half)"},
    )(),
    row(
        "unknown-secret-key",
        "edd-infra:appPasword: unknown key; allowed: adminPassword, alerts, appPassword,",
        secrets={"appPasword": "typo'd s3cret"},
    )(),
    row(
        "ssh-key-in-plaintext",
        "edd-infra:sshPrivateKey: stored in plaintext; set it with `pulumi config set --secret sshPrivateKey`",
    )((("sshPrivateKey",), PEM_KEY)),
]

# Refused by the engine itself, from Pulumi.yaml's declarations, before the program runs:
# the engine's message names the key in quotes, with the type or rule it breaks.
ENGINE_CASES = [
    Case(
        "require-host-keys-yes",
        ((("requireHostKeys",), "yes"),),
        {},
        ("Stack '{stack}' with configuration key 'edd-infra:requireHostKeys' must be of type 'boolean'",),
    ),
    Case(
        "workers-as-object",
        ((("workers",), {"edd-worker-1": {"host": "queue"}}),),
        {},
        ("Stack '{stack}' with configuration key 'edd-infra:workers' must be of type 'array<object>'",),
    ),
    Case(
        "worker-as-string",
        ((("workers", 1), "edd-worker-2"),),
        {},
        ("Stack '{stack}' with configuration key 'edd-infra:workers' must be of type 'array<object>'",),
    ),
    Case(
        "hosts-as-list",
        ((("hosts",), ["queue"]),),
        {},
        ("Stack '{stack}' with configuration key 'edd-infra:hosts' must be of type 'object'",),
    ),
    Case(
        "broker-missing",
        ((("broker",), DELETE),),
        {},
        ("Stack '{stack}' is missing configuration value 'edd-infra:broker'",),
    ),
    Case(
        "celery-signing-as-string",
        ((("celerySigning",), "signing.pem"),),
        {},
        ("Stack '{stack}' with configuration key 'edd-infra:celerySigning' must be of type 'object'",),
    ),
    Case(
        "admin-password-in-plaintext",
        ((("adminPassword",), "adm1n"),),
        {},
        ("Stack '{stack}' with configuration key 'edd-infra:adminPassword' must be encrypted as it's secret",),
    ),
]


class TableStack:
    """One stack reused by every row: reset to the good secrets, then the row's config."""

    def __init__(self, stack: ProjectStack):
        self.stack = stack
        for key, value in GOOD_SECRETS.items():
            stack.set_secret(key, value)
        self.file = stack.work_dir / f"Pulumi.{stack.name}.yaml"
        self.good_secrets_file = self.file.read_text()
        # Each (key, value) is encrypted once, by the CLI, and its `secure:` entry reused.
        self.ciphertexts: dict[tuple[str, str], dict] = {}
        for name, text in PROJECT_FILES.items():
            (stack.work_dir / name).write_text(text)
        self.stack_urn = f"urn:pulumi:{stack.name}::edd-infra::pulumi:pulumi:Stack::edd-infra-{stack.name}"

    def preview(self, config: dict[str, Any], secrets: dict[str, str]) -> tuple[str | None, list[str]]:
        """(error text or None if preview succeeded, URNs of every resource registered)."""
        self.file.write_text(self.good_secrets_file)
        for key, value in secrets.items():
            if (key, value) not in self.ciphertexts:
                self.stack.set_secret(key, value)
                self.ciphertexts[key, value] = yaml.safe_load(self.file.read_text())["config"][f"edd-infra:{key}"]
        self.stack.set_plain({**config, **{key: self.ciphertexts[key, value] for key, value in secrets.items()}})
        events, self.output = [], []
        try:
            self.stack.stack.preview(on_event=events.append, on_output=self.output.append)
            error = None
        except auto.CommandError as err:
            error = str(err)
        return error, [e.resource_pre_event.metadata.urn for e in events if e.resource_pre_event]


@pytest.fixture(scope="module")
def table_stack(pulumi_cli, tmp_path_factory):
    """Like conftest's new_stack, once per module."""
    work_dir = tmp_path_factory.mktemp("bad-input")
    (work_dir / "state").mkdir()
    return TableStack(ProjectStack(f"t{uuid.uuid4().hex[:8]}", work_dir, f"file://{work_dir / 'state'}", PASSPHRASE))


PROBLEM_LINE = re.compile(r"^\s*- (edd-infra:.*)$", re.M)
HEADER = re.compile(r"edd_infra\.config_errors\.ConfigError: invalid stack configuration \((\d+) problem\(s\)\):")


def test_the_table_is_distinct_and_its_base_is_valid():
    assert len(CASES) >= 40
    ids = [c.id for c in CASES + ENGINE_CASES]
    assert len(ids) == len(set(ids))
    configs = [repr((c.changes, sorted(c.secrets.items()))) for c in CASES + ENGINE_CASES]
    assert len(configs) == len(set(configs))
    settings, problems = validate(base_config())
    assert problems == [] and settings is not None
    assert secret_problems(GOOD_SECRETS, dict.fromkeys(GOOD_SECRETS, True)) == []


CONTROLS = {
    "base": ((), {}),
    "base-with-tls-and-signing": (
        ((("broker", "tls"), TLS), (("celerySigning",), {"certFile": "signing.pem"})),
        dict(TLS_KEY, **SIGNING_KEY),
    ),
    "base-as-a-cluster": (CLUSTER, CLUSTER_SECRETS),
    "base-with-signing-rotation": ((rotation(),), SIGNING_KEY),
}


@pytest.mark.parametrize("control", CONTROLS)
def test_base_config_passes_validation_in_the_engine_and_registers_resources(table_stack, control):
    """Control rows: the same stack and files, valid config. Validation passes and
    resources are registered, so the rows' 'only the stack' check can fail."""
    changes, secrets = CONTROLS[control]
    error, registered = table_stack.preview(with_changes(base_config(), changes), secrets)
    assert error is None or "invalid stack configuration" not in error, error
    assert table_stack.stack_urn in registered
    assert len([u for u in registered if u != table_stack.stack_urn]) >= 5, registered


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_preview_naming_its_key_before_any_resource(table_stack, case):
    with_row = with_changes(base_config(), case.changes)
    error, registered = table_stack.preview(with_row, case.secrets)

    # (1) preview fails, (2) with the program's own refusal, not some other crash ...
    assert error is not None, f"preview accepted {case.id}"
    header = HEADER.search(error)
    assert header, error
    problems = list(dict.fromkeys(PROBLEM_LINE.findall(error)))
    assert len(problems) == int(header.group(1)), (problems, error)
    # ... listing exactly the expected problems, each starting with its key.
    expected = [e.replace("{dir}", str(table_stack.stack.work_dir)) for e in case.expected]
    for prefix in expected:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    for problem in problems:
        assert any(problem.startswith(e) for e in expected), (problem, expected)
    # No secret, good or refused, is echoed back.
    for value in [*GOOD_SECRETS.values(), *case.secrets.values(), "AAAAnotarealkey"]:
        assert not value or value not in error
    # (3) nothing but the stack itself was registered: the error came before any resource.
    assert registered == [table_stack.stack_urn]


@pytest.mark.parametrize("case", ENGINE_CASES, ids=[c.id for c in ENGINE_CASES])
def test_bad_input_refused_by_the_engine_before_the_program(table_stack, case):
    config = with_changes(base_config(), case.changes)
    error, registered = table_stack.preview(config, case.secrets)
    assert error is not None, f"preview accepted {case.id}"
    for expected in case.expected:
        assert f"error: validating stack config: {expected.format(stack=table_stack.stack.name)}" in error, error
    assert "invalid stack configuration" not in error
    assert registered == []


def test_a_rotation_past_its_time_previews_with_a_warning_to_remove_both_keys(table_stack):
    """The previous certificate is no longer read (it may be gone already): preview passes and says what to do."""
    config = with_changes(base_config(), [rotation(previousCertFile="missing.pem", previousTrustedUntil="2020-01-01")])
    error, registered = table_stack.preview(config, SIGNING_KEY)
    assert error is None or "invalid stack configuration" not in error, error
    assert len(registered) >= 5
    shown = " ".join("".join(table_stack.output).split())
    assert (
        "celerySigning.previousTrustedUntil (2020-01-01T00:00:00Z) has passed: the previous signing certificate "
        "is no longer trusted"
    ) in shown, shown[-2000:]
    assert "remove celerySigning.previousCertFile and celerySigning.previousTrustedUntil" in shown
