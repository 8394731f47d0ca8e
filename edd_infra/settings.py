"""The validated model of one stack's configuration.

Plain pydantic models, no Pulumi import: `stack_config.load_settings` fills them from
`pulumi.Config`, tests build them directly. Field names are snake_case; each field's
Pulumi config key is its camelCase alias (`workers[0].workingDirectory`).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Literal, Optional
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

PROJECT = "edd-infra"
# Prod stacks: `prod` and `prod-<anything>` (the policy pack's PROD_STACKS says the same).
PROD_STACKS = ("prod",)


def is_prod_stack(name: str) -> bool:
    return any(name == s or name.startswith(s + "-") for s in PROD_STACKS)


# Names that end up in unit names, file names and shell words: keep them boring.
Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
# RabbitMQ and POSIX user names the program creates.
UserName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")]
# A word of rabbitmq.conf's key syntax (cuttlefish: `word <- ("\\." / [A-Za-z0-9_-])+`, words joined
# by "."): a name written into a key (`loopback_users.<name>`) must be one plain word, so no "."
# (nor space, "@", non-ASCII...). The "\\." escape is not used: one rule, the same on every release.
CONF_KEY_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,31}")


def _conf_key_user_name(value: str) -> str:
    if not CONF_KEY_USER_NAME.fullmatch(value):
        raise ValueError(
            "must be 1 to 32 letters, digits, '_' or '-', starting with a letter or '_': it is written "
            "into rabbitmq.conf as the key loopback_users.<name>, whose syntax cannot hold '.' or any "
            "other character"
        )
    return value


# A user name the program writes into a rabbitmq.conf key.
ConfKeyUserName = Annotated[str, AfterValidator(_conf_key_user_name)]
AbsolutePath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9_./@+-]*$")]
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
Port = Annotated[int, Field(ge=1, le=65535)]
# Celery queue names: they go into the worker's argv and the permission regexes.
QueueName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,255}$")]


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"must be an IPv4 or IPv6 address, got {value!r}") from None


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"must be a regular expression that compiles ({err})") from None
    return value


def _host_address(value: str) -> str:
    try:
        return _ip_address(value)
    except ValueError:
        # An all-digit last label ("192.0.2", "192.0.2.300") is a malformed address, not a name.
        if len(value) <= 253 and _HOST_NAME.fullmatch(value) and not value.rsplit(".", 1)[-1].isdigit():
            return value
    raise ValueError(f"must be a DNS host name or an IP address, got {value!r}")


def _http_url(value: str) -> str:
    split = urlsplit(value)
    try:
        _host_address(split.hostname or "")
        if split.port == 0:  # `.port` itself raises for one that is not a number up to 65535
            raise ValueError
    except ValueError:
        raise ValueError(
            f"must be http(s)://host[:port] with a host name or IP address and a port from 1 to 65535, got {value!r}"
        ) from None
    return value


IPAddress = Annotated[str, AfterValidator(_ip_address)]
HostAddress = Annotated[str, AfterValidator(_host_address)]
Regex = Annotated[str, AfterValidator(_regex)]


class Model(BaseModel):
    """Frozen, camelCase-keyed, and strict about unknown keys."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=True,
    )


class Host(Model):
    """A machine the program configures, and how to reach it."""

    connection: Literal["ssh", "local"] = "ssh"
    address: Optional[HostAddress] = None
    port: Port = 22
    user: UserName = "root"
    # "ssh-ed25519 AAAA...": when set, the SSH host key is checked.
    host_key: Optional[str] = None
    service_manager: Literal["systemd", "launchd"] = "systemd"
    # Run scripts through `sudo -n` when `user` is not root.
    sudo: bool = False

    @model_validator(mode="after")
    def _ssh_needs_address(self) -> "Host":
        if self.connection == "ssh" and not self.address:
            raise ValueError("address is required when connection is 'ssh'")
        return self

    @field_validator("host_key")
    @classmethod
    def _host_key_shape(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.fullmatch(r"(ssh|ecdsa)-[a-z0-9-]+ [A-Za-z0-9+/=]+( .*)?", value):
            raise ValueError("must be an OpenSSH public key line such as 'ssh-ed25519 AAAA...'")
        return value


# A file beside Pulumi.yaml (relative) or anywhere on the machine running Pulumi.
LocalPath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./@+-]+$")]


class BrokerTls(Model):
    """TLS listeners: AMQP on every AMQP listener address and the management API on
    `managementAddress`; plain AMQP and plain management stay on loopback only.

    Certificates are PEM files on the machine running Pulumi (public: commit them or not);
    the server key is the secret `brokerTlsKey`.
    """

    ca_file: LocalPath
    cert_file: LocalPath
    amqp_port: Port = 5671
    management_port: Port = 15671
    # rabbitmq_prometheus over HTTPS on managementAddress (RabbitMQ's default port).
    prometheus_port: Port = 15691


UTC_EXAMPLE = "e.g. 2027-01-31 (its 00:00 UTC) or 2027-01-31T12:00:00Z"


def _utc_instant(value: object) -> object:
    """An ISO-8601 date (its 00:00 UTC) or a date-time in UTC (`Z` or `+00:00`), as an aware datetime."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO-8601 UTC date or date-time as a string, {UTC_EXAMPLE}")
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return datetime.combine(date.fromisoformat(value), time(), tzinfo=timezone.utc)
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"must be an ISO-8601 UTC date or date-time, {UTC_EXAMPLE}") from None
    if instant.utcoffset() != timedelta(0):
        raise ValueError(f"must be in UTC (end it with Z or +00:00), {UTC_EXAMPLE}")
    return instant


UtcInstant = Annotated[datetime, BeforeValidator(_utc_instant)]


class CelerySigning(Model):
    """Message signing: tasks are signed with the secret `celerySigningKey` and checked
    against `certFile` (PEM, beside Pulumi.yaml or absolute) by every worker and Flower.

    During a key rotation `previousCertFile` (the certificate of the key signed with before)
    is trusted too, until `previousTrustedUntil`, so tasks queued under the old key still run."""

    cert_file: LocalPath
    previous_cert_file: Optional[LocalPath] = None
    previous_trusted_until: Optional[UtcInstant] = None

    @model_validator(mode="after")
    def _previous_until(self) -> "CelerySigning":
        if self.previous_cert_file is not None and self.previous_trusted_until is None:
            raise ValueError(
                "previousTrustedUntil is required with previousCertFile: the UTC date or date-time "
                f"until which tasks signed with the previous key still run, {UTC_EXAMPLE}"
            )
        if self.previous_trusted_until is not None and self.previous_cert_file is None:
            raise ValueError(
                "previousTrustedUntil is used only with previousCertFile (the previous certificate); "
                "remove it, or set previousCertFile"
            )
        return self

    def previous_trusted(self, now: datetime) -> bool:
        """Whether the stores hold the previous certificate at `now` (aware, UTC)."""
        # previousTrustedUntil is set whenever previousCertFile is (validated above).
        return (
            self.previous_trusted_until is not None
            and self.previous_cert_file is not None
            and now < self.previous_trusted_until
        )

    def previous_expired(self, now: datetime) -> bool:
        """A previous certificate is still configured though no longer trusted: time to remove the keys."""
        return self.previous_cert_file is not None and not self.previous_trusted(now)


AptWord = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,63}$")]


class AptSource(Model):
    """An apt repository RabbitMQ comes from instead of Debian's (RabbitMQ's own, or a mirror
    of it), as the guide says: the up-to-date version, pinned. Installed with `signed-by` the
    repository's public key (`keyFile`: ASCII-armored, beside Pulumi.yaml or absolute)."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s'\"]+$"), AfterValidator(_http_url)]
    suite: AptWord
    component: AptWord = "main"
    key_file: LocalPath


class BrokerMigration(Model):
    """Where the broker ran before `broker.host` (a blue/green move to a new host): the old
    broker's definitions are copied to the new one (password hashes too, nothing rotates) and
    a shovel on the old broker moves what its app queue holds until the migration is retired
    by removing this key."""

    host: Identifier
    # `up` waits this long for the old app queue to empty through the shovel.
    drain_timeout: Annotated[int, Field(ge=30, le=86400)] = 1800


class ClusterNode(Model):
    """One more RabbitMQ node, on its own host, that joins the broker's cluster.

    AMQP (TLS), epmd and Erlang distribution listen on `address` (and loopback); its node
    name is `rabbit@<address>` (long names), so the nodes need no DNS to find each other."""

    host: Identifier
    address: IPAddress


class Broker(Model):
    """RabbitMQ on one host (or a cluster: this host's node plus `clusterNodes`): package,
    listeners, and the admin account Pulumi uses."""

    host: Identifier
    # managed: this program installs and configures RabbitMQ (Debian, systemd).
    # external: RabbitMQ is run by someone else (e.g. `brew services` on a Mac); the program
    # only manages vhost, users and permissions through the management API as adminUser.
    install: Literal["managed", "external"] = "managed"
    # apt version, e.g. "4.0.5-6+deb13u2", held; None keeps the installed one (a fresh host
    # gets apt's candidate). A change is an upgrade, checked against RabbitMQ's upgrade path.
    package_version: Optional[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.+:~-]+$")]] = None
    # Where the package comes from besides Debian; needs package_version (the pin).
    apt_source: Optional[AptSource] = None
    amqp_port: Port = 5672
    amqp_listeners: list[IPAddress] = Field(default_factory=lambda: ["127.0.0.1", "::1"], min_length=1)
    management_port: Port = 15672
    # The management API listens here only; Flower and Pulumi both use it.
    management_address: IPAddress = "127.0.0.1"
    # How Pulumi reaches the management API; default http://<managementAddress>:<managementPort>/.
    management_url: Optional[
        Annotated[str, StringConstraints(pattern=r"^https?://[^\s/@]+(:\d+)?$"), AfterValidator(_http_url)]
    ] = None
    # rabbitmq_prometheus's plain listener, bound like the management API (RabbitMQ's default port).
    prometheus_port: Port = 15692
    # epmd and Erlang distribution bind here (not on every address).
    node_address: IPAddress = "127.0.0.1"
    # The Erlang node name; its host part must resolve to node_address, or the broker
    # cannot register with an epmd bound there (hence localhost, not the host name).
    node_name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+@[A-Za-z0-9.-]+$")] = "rabbit@localhost"
    admin_user: UserName = "edd-infra-admin"
    # Share of the host's memory at which RabbitMQ blocks publishers (a host that also runs
    # workers keeps the rest); the free-disk limit is as large a share of memory.
    memory_high_watermark: Annotated[float, Field(ge=0.1, le=0.9)] = 0.4
    # The broker must answer within this many seconds after a (re)start.
    start_timeout: Annotated[int, Field(ge=10, le=600)] = 120
    # `destroy` purges the package and its data too (throw-away hosts); off keeps them.
    purge_on_destroy: bool = False
    tls: Optional[BrokerTls] = None
    # The other members of a RabbitMQ cluster; empty: a single node. Each joins this host's
    # node (the seed); removing one from the list makes it leave the cluster.
    cluster_nodes: list[ClusterNode] = Field(default_factory=list)
    # In a cluster: Erlang distribution (node to node, and the CLI tools to their node) over TLS
    # with broker.tls's CA, certificate and key, the peer's certificate required both ways.
    # Turning it on or off cannot roll (README: Runbooks).
    inter_node_tls: bool = False
    # In a cluster: an nftables table (`inet edd_infra`) on every node lets only the other nodes
    # (and loopback) reach epmd, distribution and the CLI tools' ports.
    cluster_firewall: bool = True
    # Set for the `up` that moves the broker here from another host, removed to retire it.
    migrate_from: Optional[BrokerMigration] = None

    @model_validator(mode="after")
    def _inter_node_tls_needs_a_cluster(self) -> "Broker":
        if self.inter_node_tls and not self.cluster_nodes:
            raise ValueError(
                "interNodeTls is for a cluster (Erlang distribution between nodes): set "
                "broker.clusterNodes, or remove broker.interNodeTls"
            )
        return self

    @property
    def distribution_port(self) -> int:
        """Erlang distribution's listener: RabbitMQ's default, the AMQP port + 20000 (25672)."""
        return self.amqp_port + 20000

    @property
    def cli_ports(self) -> tuple[int, int]:
        """The range the CLI tools' own distribution listeners take: RabbitMQ's default, the
        distribution port + 10000 to + 10010 (35672-35682)."""
        return self.distribution_port + 10000, self.distribution_port + 10010

    @property
    def tls_addresses(self) -> list[str]:
        """Every node's TLS AMQP address, this host's first: the failover list services use
        in a cluster."""
        return [a for a in [self.remote_amqp_address, *(n.address for n in self.cluster_nodes)] if a]

    def member(self, node: ClusterNode) -> "Broker":
        """The settings of one cluster member: this broker's, on its host and address, with
        plain AMQP and the management API on loopback only."""
        return self.model_copy(
            update={
                "host": node.host,
                "amqp_listeners": ["127.0.0.1", node.address],
                "management_address": "127.0.0.1",
                "management_url": None,
                "node_address": node.address,
                "node_name": f"rabbit@{node.address}",
                "cluster_nodes": [],
            }
        )

    @property
    def plain_amqp_addresses(self) -> list[str]:
        """The AMQP listeners without TLS: all of them, or with TLS the loopback ones."""
        if self.tls is None:
            return list(self.amqp_listeners)
        return [a for a in self.amqp_listeners if ipaddress.ip_address(a).is_loopback]

    @property
    def remote_amqp_address(self) -> Optional[str]:
        """The address services on other hosts dial: the first non-loopback AMQP listener,
        and only with TLS (plain AMQP stays on loopback)."""
        if self.tls is None:
            return None
        return next((a for a in self.amqp_listeners if a not in self.plain_amqp_addresses), None)


class Permissions(Model):
    """RabbitMQ configure/write/read regexes on one vhost."""

    configure: Regex = ".*"
    write: Regex = ".*"
    read: Regex = ".*"


class AppUser(Model):
    """The account EDD and the Celery workers use (seed: edd_user, `.*` on /edd).

    `permissionProfile`: `least` (default) grants only the objects Celery and EDD use, derived
    from appQueue's names; `full` is the seed's `.*`; `custom` uses `permissions` as given
    (checked against what Celery needs, with a warning per gap).
    """

    # Written into rabbitmq.conf (`loopback_users.<name>`) while the app logs in from loopback only.
    name: ConfKeyUserName = "edd_user"
    tags: list[Literal["management", "monitoring", "policymaker"]] = Field(default_factory=list)
    permission_profile: Literal["least", "full", "custom"] = "least"
    permissions: Optional[Permissions] = None

    @model_validator(mode="after")
    def _permissions_only_when_custom(self) -> "AppUser":
        if self.permissions is not None and self.permission_profile != "custom":
            raise ValueError("permissions are used only with permissionProfile: custom")
        if self.permissions is None and self.permission_profile == "custom":
            raise ValueError("permissionProfile custom needs permissions {configure, write, read}")
        return self


class FlowerBrokerUser(Model):
    """The account Flower reads the management API with.

    `monitoring` (the default) gets the monitoring tag and read-only permissions;
    `administrator` is the seed's `bunny`: administrator tag, `.*` on / and the vhost.
    """

    name: UserName = "bunny"
    profile: Literal["monitoring", "administrator"] = "monitoring"


class Worker(Model):
    """One Celery worker process, run as one service unit."""

    name: Identifier
    host: Identifier
    app: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.:]*$")] = "edd"
    queues: list[QueueName] = Field(default_factory=lambda: ["edd"], min_length=1)
    concurrency: Optional[Annotated[int, Field(ge=1, le=256)]] = None
    # "max,min" as in the seed's --autoscale=10,1.
    autoscale: Optional[Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,2},[0-9]{1,3}$")]] = None
    working_directory: AbsolutePath
    virtualenv: AbsolutePath
    user: UserName = "celery"
    group: UserName = "celery"
    extra_groups: list[UserName] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    # Task events (-E): Flower shows tasks only when workers send them.
    events: bool = True

    @model_validator(mode="after")
    def _one_pool_size(self) -> "Worker":
        if self.concurrency is not None and self.autoscale is not None:
            raise ValueError("set concurrency or autoscale, not both")
        if self.autoscale is not None:
            high, low = (int(part) for part in self.autoscale.split(","))
            if low > high:
                raise ValueError("autoscale is 'max,min': max must be >= min")
        return self


class FlowerTls(Model):
    """Flower's UI over HTTPS: `certFile` (PEM, beside Pulumi.yaml or absolute) for
    flower.address, issued by `caFile` (default: broker.tls.caFile, the stack's CA); the key
    is the secret `flowerTlsKey`."""

    cert_file: LocalPath
    ca_file: Optional[LocalPath] = None


# Flower's service account before it had its own (the workers'); a stack that sets flower.user
# but not flower.group keeps this group, as it had.
SHARED_SERVICE_GROUP = "celery"


class Flower(Model):
    """Flower, the Celery dashboard, as a daemon behind basic auth, under its own system user
    and group (not the workers': neither can read the other's files)."""

    enabled: bool = True
    host: Identifier
    app: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.:]*$")] = "edd"
    working_directory: AbsolutePath
    virtualenv: AbsolutePath
    user: UserName = "flower"
    group: UserName = "flower"
    address: IPAddress = "127.0.0.1"
    port: Port = 5555
    url_prefix: Annotated[str, StringConstraints(pattern=r"^([A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*)?$")] = ""
    persistent: bool = True
    ui_user: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")] = "admin"
    # With celerySigning: Flower gets the signing key too, so tasks sent from its API are signed
    # (as the workers' and EDD's). Off: only the certificate and store (it verifies, cannot sign).
    can_send_tasks: bool = False
    # HTTPS for the UI; required when `address` is not loopback.
    tls: Optional[FlowerTls] = None

    @model_validator(mode="before")
    @classmethod
    def _explicit_user_keeps_its_group(cls, data):
        # Before Flower had its own account, an unset group was the workers' `celery`.
        if isinstance(data, dict) and data.get("user", "flower") != "flower" and "group" not in data:
            return {**data, "group": SHARED_SERVICE_GROUP}
        return data

    @field_validator("tls", mode="before")
    @classmethod
    def _empty_tls_is_off(cls, value):
        return None if value == {} else value

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


class Tasks(Model):
    """How long a task may run and how many a worker holds: the Celery settings that make
    "at least once" true, delivered by the program (not the app), and what the broker and the
    units derive from them (consumer_timeout, TimeoutStopSec)."""

    # Past it Celery raises SoftTimeLimitExceeded inside the task, which can still clean up.
    soft_time_limit: Annotated[int, Field(ge=1, le=604800)] = 3300
    # Past it the worker kills the task's process; the task fails (it is not run again).
    time_limit: Annotated[int, Field(ge=2, le=604800)] = 3600
    # Tasks a worker process reserves ahead; 1 for long tasks, so none waits behind another.
    prefetch_multiplier: Annotated[int, Field(ge=1, le=100)] = 1

    @model_validator(mode="after")
    def _soft_before_hard(self) -> "Tasks":
        if self.soft_time_limit >= self.time_limit:
            raise ValueError(
                f"softTimeLimit ({self.soft_time_limit} s) must be below timeLimit ({self.time_limit} s): "
                "the task gets its warning before it is killed"
            )
        return self

    @property
    def stop_timeout(self) -> int:
        """Seconds systemd gives a stopping worker: its running tasks end within the hard
        limit, then the worker exits."""
        return self.time_limit + STOP_GRACE

    @property
    def consumer_timeout_ms(self) -> int:
        """RabbitMQ's consumer_timeout: longer than any task may run plus a stop, so the broker
        never closes a channel under a task that is still within its limits."""
        return (self.time_limit + 2 * STOP_GRACE) * 1000


class Rollout(Model):
    """How a change that restarts workers goes through the fleet: in batches, each batch
    after the previous one answers again, so the app queue keeps consumers."""

    # Workers (in config order) that restart at the same time.
    max_unavailable: Annotated[int, Field(ge=1, le=256)] = 1


OnCalendar = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9*:,./~ -]{1,64}$")]


class Backups(Model):
    """Backups of the broker's definitions on a managed broker's host: a systemd timer
    exports them (users with password hashes, vhost, permissions, policies, queues,
    exchanges, bindings) to /var/backups/edd-infra (root only), keeping the newest `keep`."""

    enabled: bool = True
    # A systemd OnCalendar expression (`systemd-analyze calendar` checks one): daily, hourly, *-*-* 03:00.
    schedule: OnCalendar = "daily"
    keep: Annotated[int, Field(ge=1, le=1000)] = 14


# Seconds past the hard time limit for a worker to ack, report and exit.
STOP_GRACE = 30


class AppQueue(Model):
    """The queue and exchange EDD publishes through, declared on the broker (protected).

    EDD's router publishes to a fanout exchange `edd`; an exchange declared with another
    type makes RabbitMQ refuse EDD's publishes, so the type is part of the config."""

    name: QueueName = "edd"
    exchange: QueueName = "edd"
    exchange_type: Literal["fanout", "direct", "topic"] = "fanout"
    # quorum: replicated on every broker node (needed by a cluster); classic: one node.
    queue_type: Literal["classic", "quorum"] = "classic"
    # A task redelivered this many times (a worker died under it each time: a poison task)
    # goes to the dead-letter queue instead of looping; RabbitMQ 4 would drop it after 20.
    # Quorum queues count deliveries; classic queues have no such count.
    delivery_limit: Annotated[int, Field(ge=1, le=10000)] = 20
    # Exchange and queue (same type as the app queue, durable, protected) that keep what the
    # app queue dead-letters: tasks past the delivery limit, or rejected without requeue.
    dead_letter: QueueName = "edd.dead-letter"
    # Celery's naming settings the app uses (control_exchange, event_exchange,
    # event_queue_prefix): the least-privilege permissions are derived from them.
    control_exchange: QueueName = "celery"
    event_exchange: QueueName = "celeryev"
    event_queue_prefix: QueueName = "celeryev"


class Alerts(Model):
    """Thresholds of the Prometheus alert rules that no other setting gives (render.alert_rules)."""

    # Share of finished tasks that failed (Flower's task events, over 15 min) above which
    # CeleryTasksFailing fires.
    task_failure_ratio: Annotated[float, Field(gt=0, le=1)] = 0.1
    # How far ahead RabbitMQDiskFillingUp projects the free disk towards its limit.
    disk_forecast_hours: Annotated[int, Field(ge=1, le=168)] = 4


class EddSettingsFile(Model):
    """Where the settings EDD reads (server.cfg's `rabbitmq` keys) are written for it."""

    host: Identifier
    path: AbsolutePath = "/etc/edd-infra/edd-rabbitmq.json"
    # json: server.cfg's own shape ({"rabbitmq": {...}}); ini: a [rabbitmq] section;
    # env: RABBITMQ_EDD_PASS=... lines.
    format: Literal["json", "ini", "env"] = "json"
    owner: UserName = "root"
    group: UserName = "www-data"
    mode: Literal["0600", "0640"] = "0640"
    # EDD's own systemd units (its web app, its producers), restarted when the file changes:
    # EDD reads the password once, at start.
    restart_units: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9@_.:-]{1,200}\.service$")]] = Field(
        default_factory=list
    )


class StackSettings(Model):
    """Everything one stack deploys, validated."""

    hosts: dict[Identifier, Host] = Field(min_length=1)
    broker: Broker
    vhost: Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9_.-]*$")] = "/edd"
    app_queue: AppQueue = AppQueue()
    app_user: AppUser = AppUser()
    tasks: Tasks = Tasks()
    rollout: Rollout = Rollout()
    alerts: Alerts = Alerts()
    backups: Backups = Backups()
    flower_broker_user: FlowerBrokerUser = FlowerBrokerUser()
    workers: list[Worker] = Field(min_length=1)
    flower: Flower
    # Off only for throw-away hosts whose keys are not known in advance.
    require_host_keys: bool = True
    celery_signing: Optional[CelerySigning] = None
    edd_settings: Optional[EddSettingsFile] = None

    @field_validator("celery_signing", "edd_settings", mode="before")
    @classmethod
    def _empty_is_off(cls, value):
        # Pulumi.yaml's default for an optional object is {}: that means off.
        return None if value == {} else value


# Secret keys: read with require_secret/get_secret only, never part of the model above.
REQUIRED_SECRETS = ("adminPassword", "appPassword", "flowerBrokerPassword", "flowerUiPassword")
OPTIONAL_SECRETS = (
    "sshPrivateKey",
    "brokerTlsKey",
    "celerySigningKey",
    "resultBackend",
    "erlangCookie",
    "flowerTlsKey",
)
