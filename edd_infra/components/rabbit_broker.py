"""RabbitBroker: RabbitMQ installed, locked to its listeners, with an admin for Pulumi.

Creates, on the broker host (with `install: managed`, the default):
- `<name>-server`: rabbitmq.conf, enabled_plugins and the epmd binding written before the
  package is installed, the service enabled at boot and restarted when they change; the
  `site_files` (the Prometheus alert rules) beside them, which never restart it;
- `<name>-admin`: the administrator Pulumi uses (password on stdin) and `guest` removed;
- `<name>-provider`: the pulumi_rabbitmq Provider for the management API, usable only after
  the admin exists, so nothing touches the broker before it answers;
- `<name>-<key>-password`, per broker account: puts a password changed by hand back
  (`restore_password`). Drift found by `broker_drift.observe` reruns these commands and
  the admin's; otherwise their stdin is ignored, so a no-op `up` stays a no-op.
- in a cluster, per member host: `<name>-node-<host>` (as `<name>-server`, with the shared
  Erlang cookie) and `<name>-node-<host>-join`, which joins it to this host's node once and
  whose delete makes it leave (so removing a node from the config is a config change);
  with `broker.interNodeTls` every node's Erlang distribution (and its CLI tools') runs over TLS,
  and with `broker.clusterFirewall` (the default) `<name>-firewall` and
  `<name>-node-<host>-firewall` load each node's nftables table (render.cluster_firewall) before
  its server command, and every join waits for all of them.
- with `migration` (broker.migrateFrom), `<name>-migration`: the old broker's definitions and
  queued messages moved here (BrokerMigration); the Provider waits for them.
With `install: external` only the Provider is made, for a broker someone else runs.
"""

from __future__ import annotations

from typing import Optional, Sequence, cast

import pulumi
import pulumi_rabbitmq as rabbitmq

from ..broker_drift import NOT_CHECKED, BrokerDrift
from .broker_migration import BrokerMigration, MigrationSource
from ..hosts import DRAIN_STDIN, Command, HostTarget
from ..render import host_scripts
from ..render.apt_source import KEYRING_PATH, PREFERENCES_PATH, SOURCES_PATH, render_apt_preferences, render_apt_sources
from ..render.broker_urls import management_endpoint
from ..render import cluster_firewall
from ..render.host_scripts import FileSpec
from ..render.rabbitmq_conf import (
    INTER_NODE_TLS_MARK,
    INTER_NODE_TLS_PATH,
    LOOPBACK,
    RABBITMQ4_CONF_PATH,
    TlsListeners,
    epmd_socket_listen,
    render_enabled_plugins,
    render_epmd_environment,
    render_inter_node_tls,
    render_rabbitmq_conf,
    render_rabbitmq4_conf,
    render_rabbitmq_env,
)
from ..render.systemd_units import environment_settings, render_dropin
from ..settings import Broker

CONF_PATH = "/etc/rabbitmq/rabbitmq.conf"
PLUGINS_PATH = "/etc/rabbitmq/enabled_plugins"
ENV_PATH = "/etc/rabbitmq/rabbitmq-env.conf"
DROPIN_PATH = "/etc/systemd/system/rabbitmq-server.service.d/edd-infra.conf"
EPMD_DROPIN_PATH = "/etc/systemd/system/epmd.socket.d/edd-infra.conf"


def tls_listeners(broker: Broker) -> Optional[TlsListeners]:
    return (
        TlsListeners(broker.tls.amqp_port, broker.tls.management_port, broker.tls.prometheus_port)
        if broker.tls
        else None
    )


def metrics_address(broker: Broker, member: bool = False) -> str:
    """Where rabbitmq_prometheus listens (over TLS when broker.tls is set): the management
    API's address, or on a cluster member (whose management API is loopback only) its node
    address, so a site's Prometheus reaches every node."""
    return broker.node_address if member else broker.management_address


def broker_files(
    broker: Broker,
    loopback_users: list[str],
    tls_pems: Optional[tuple[str, str]] = None,
    consumer_timeout_ms: Optional[int] = None,
    clustered: bool = False,
    member: bool = False,
) -> list[FileSpec]:
    """The broker's config files (no secrets in them); with TLS, the CA and server
    certificates (`tls_pems`, public) too. `clustered`: the node is one of several;
    `member`: it is not the seed."""
    tls = tls_listeners(broker)
    conf = render_rabbitmq_conf(
        amqp_listeners=broker.amqp_listeners,
        amqp_port=broker.amqp_port,
        management_address=broker.management_address,
        management_port=broker.management_port,
        node_address=broker.node_address,
        loopback_users=loopback_users,
        tls=tls,
        consumer_timeout_ms=consumer_timeout_ms,
        memory_high_watermark=broker.memory_high_watermark,
        clustered=clustered,
        prometheus_port=broker.prometheus_port,
        prometheus_address=metrics_address(broker, member),
    )
    pems = cast(tuple[str, str], tls_pems)  # given whenever broker.tls is set
    certificates = [FileSpec(tls.ca_path, pems[0]), FileSpec(tls.cert_path, pems[1])] if tls else []
    # Erlang distribution over TLS (broker.interNodeTls), for the node and its CLI tools.
    inter_node = broker.inter_node_tls and tls is not None
    if inter_node:
        certificates.append(FileSpec(INTER_NODE_TLS_PATH, render_inter_node_tls(cast(TlsListeners, tls))))
    return certificates + [
        FileSpec(CONF_PATH, conf),
        FileSpec(PLUGINS_PATH, render_enabled_plugins()),
        FileSpec(ENV_PATH, render_rabbitmq_env(broker.node_name, INTER_NODE_TLS_PATH if inter_node else None)),
        FileSpec(
            DROPIN_PATH, render_dropin("Service", environment_settings(render_epmd_environment(broker.node_address)))
        ),
        FileSpec(EPMD_DROPIN_PATH, render_dropin("Socket", epmd_socket_listen(broker.node_address))),
    ]


def firewall_files(broker: Broker, peers: list[str]) -> tuple[FileSpec, FileSpec]:
    """A cluster node's nftables rules (its Erlang ports for `peers`, the other nodes) and the
    unit that loads them (render.cluster_firewall)."""
    ports: list[int | tuple[int, int]] = [4369, broker.distribution_port, broker.cli_ports]
    return (
        FileSpec(cluster_firewall.RULES_PATH, cluster_firewall.render_cluster_table(peers, ports), mode="0640"),
        FileSpec(cluster_firewall.UNIT_PATH, cluster_firewall.render_firewall_unit()),
    )


def apt_files(broker: Broker) -> list[FileSpec]:
    """With `broker.aptSource`: its key, the source and the pin (render.apt_source)."""
    source = broker.apt_source
    if source is None:
        return []
    with open(source.key_file) as key:
        armored = key.read()
    return [
        FileSpec(KEYRING_PATH, armored),
        FileSpec(SOURCES_PATH, render_apt_sources(source.url, source.suite, source.component)),
        FileSpec(PREFERENCES_PATH, render_apt_preferences(source.url, broker.package_version or "")),
    ]


def api_endpoint(broker: Broker) -> str:
    """Where Pulumi reaches the management API: its TLS listener when there is one."""
    if broker.management_url:
        return broker.management_url
    if broker.tls:
        return management_endpoint(broker.management_address, broker.tls.management_port, scheme="https")
    return management_endpoint(broker.management_address, broker.management_port)


def local_management_address(broker: Broker) -> str:
    """Where services on the broker host reach the plain management API (Flower)."""
    return LOOPBACK if broker.tls else broker.management_address


class RabbitBroker(pulumi.ComponentResource):
    """RabbitMQ on one host and the Provider that manages its users and vhosts."""

    provider: rabbitmq.Provider
    endpoint: pulumi.Output[str]
    admin_user: str

    def __init__(
        self,
        name: str,
        *,
        broker: Broker,
        host: HostTarget,
        admin_password: pulumi.Input[str],
        loopback_users: Sequence[str] = ("guest",),
        drift: BrokerDrift = NOT_CHECKED,
        tls_pems: Optional[tuple[str, str]] = None,
        tls_key: Optional[pulumi.Output[str]] = None,
        ca_file: Optional[str] = None,
        members: Sequence[tuple[Broker, HostTarget]] = (),
        erlang_cookie: Optional[pulumi.Output[str]] = None,
        migration: Optional[MigrationSource] = None,
        consumer_timeout_ms: Optional[int] = None,
        site_files: Sequence[FileSpec] = (),
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("edd:infra:RabbitBroker", name, None, opts)
        # A plain string from a consumer's program is kept secret like a config secret.
        admin_password = pulumi.Output.secret(admin_password)
        self._name, self._broker, self._host, self._drift = name, broker, host, drift
        self.endpoint = pulumi.Output.from_input(api_endpoint(broker))
        self.admin_user = broker.admin_user
        self._loopback_users, self._tls_pems, self._tls_key = list(loopback_users), tls_pems, tls_key
        self._cookie, self._consumer_timeout, self._clustered = erlang_cookie, consumer_timeout_ms, bool(members)
        self._site_files = list(site_files)
        # broker.clusterFirewall: each node's nftables table, made before its server command (so
        # before epmd and the node listen off loopback); the joins wait for all of them.
        self._firewalls: dict[str, pulumi.Resource] = {}
        if members and broker.install == "managed" and broker.cluster_firewall:
            nodes = [
                (f"{name}-firewall", broker, host),
                *((f"{name}-node-{m.host}-firewall", m, h) for m, h in members),
            ]
            for key, node, node_host in nodes:
                rules, unit = firewall_files(node, [n.node_address for _, n, _ in nodes if n.host != node.host])
                self._firewalls[node.host] = node_host.run(
                    key,
                    create=host_scripts.firewall_install(
                        rules=rules, unit=unit, unit_name=cluster_firewall.UNIT_NAME, nft=cluster_firewall.NFT
                    ),
                    delete=host_scripts.firewall_remove(paths=[rules.path], unit_name=cluster_firewall.UNIT_NAME),
                    repairable=True,
                    opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
                )
        admin = (
            self._managed(name, broker, host, admin_password, moved=migration is not None)
            if broker.install == "managed"
            else None
        )
        ready = [admin] if admin else []
        # Nodes restart one at a time: each node's command waits for the one before it.
        previous = self._seed_server if admin else None
        # Every node's own command (what changes when a node's files or package change).
        self.servers = [previous] if previous else []
        if migration is not None:
            # The broker objects the Provider manages come over with the definitions.
            ready.append(
                BrokerMigration(
                    f"{name}-migration",
                    source=migration,
                    target=host,
                    broker=broker,
                    admin_password=admin_password,
                    ca_pem=cast(tuple[str, str], tls_pems)[0],
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[cast(pulumi.Resource, admin)]),
                ).imported
            )
        for member, member_host in members:
            # Every node has joined before the provider declares the quorum queue, so the
            # queue starts with a replica on each.
            server = self._server(f"{name}-node-{member.host}", member, member_host, after=previous, is_member=True)
            previous = server
            self.servers.append(server)
            ready.append(
                member_host.run(
                    f"{name}-node-{member.host}-join",
                    create=host_scripts.cluster_join(
                        seed=broker.node_name, node=member.node_name, start_timeout=broker.start_timeout
                    ),
                    delete=host_scripts.cluster_leave(node=member.node_name),
                    # A joining node's address is in every node's firewall table first.
                    opts=pulumi.ResourceOptions(
                        parent=self,
                        depends_on=[server, cast(pulumi.Resource, admin), *self._firewalls.values()],
                        delete_before_replace=True,
                    ),
                )
            )
        self.provider = rabbitmq.Provider(
            f"{name}-provider",
            endpoint=self.endpoint,
            username=broker.admin_user,
            password=admin_password,
            cacert_file=ca_file,
            opts=pulumi.ResourceOptions(parent=self, depends_on=ready),
        )
        self.register_outputs({"endpoint": self.endpoint, "adminUser": broker.admin_user})

    def restore_password(self, key: str, user: str, password: pulumi.Input[str], after: pulumi.Resource) -> None:
        """A command that sets `user`'s password again when the broker's copy drifted.

        Its create does nothing (the provider has just set the password); its update, run
        only when `drift` names the user, restores it with rabbitmqctl on the broker host.
        A broker this stack does not manage has no host to run it on: drift is reported.
        """
        token = self._drift.user_token(user)
        if self._broker.install != "managed":
            if token:
                pulumi.log.warn(
                    f"broker user {user!r}: its password on the broker is not the configured one; "
                    "this stack does not manage the broker host, so set it there by hand",
                    self,
                )
            return
        self._host.run(
            f"{self._name}-{key}-password",
            create=DRAIN_STDIN,  # the provider has just set this password
            update=host_scripts.password_restore(user=user, start_timeout=self._broker.start_timeout),
            stdin=pulumi.Output.secret(password).apply(lambda pw: pw + "\n"),
            guarded=True,
            repair_token=token,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[after]),
        )

    def _server(
        self,
        name: str,
        broker: Broker,
        host: HostTarget,
        after: Optional[pulumi.Resource] = None,
        is_member: bool = False,
    ) -> Command:
        """One node: its package, config files, TLS key and (in a cluster) the Erlang cookie;
        on the seed, the alert rules for the site's Prometheus too. `after`: the node that
        restarts before this one."""
        files = broker_files(
            broker, self._loopback_users, self._tls_pems, self._consumer_timeout, self._clustered, member=is_member
        )
        site_files = [] if is_member else self._site_files
        tls = tls_listeners(broker)
        secrets = []
        if tls:
            secrets.append(
                cast(pulumi.Output[str], self._tls_key).apply(
                    lambda pem: FileSpec(tls.key_path, pem, mode="0640", group="rabbitmq")
                )
            )
        if self._cookie is not None:
            secrets.append(self._cookie.apply(lambda cookie: FileSpec(host_scripts.STAGED_COOKIE, cookie, mode="0400")))
        bundle = pulumi.Output.all(*secrets).apply(host_scripts.secret_bundle) if secrets else None
        sources = apt_files(broker)
        rabbitmq4 = FileSpec(RABBITMQ4_CONF_PATH, render_rabbitmq4_conf())
        removed = [f.path for f in [*files, *sources, rabbitmq4, *site_files]] + ([tls.key_path] if tls else [])
        removed += [host_scripts.STAGED_COOKIE, host_scripts.ERLANG_COOKIE] if self._cookie is not None else []
        guard = (
            host_scripts.distribution_mode_guard(
                env_path=ENV_PATH, mark=INTER_NODE_TLS_MARK, inter_node_tls=broker.inter_node_tls
            )
            if self._clustered
            else ""
        )
        firewall = self._firewalls.get(broker.host)
        return host.run(
            name,
            create=host_scripts.broker_install(
                files=files,
                package_version=broker.package_version,
                start_timeout=broker.start_timeout,
                secret_files=bool(secrets),
                erlang_cookie=self._cookie is not None,
                rabbitmq4_conf=rabbitmq4,
                apt_files=sources,
                memory_high_watermark=broker.memory_high_watermark,
                clustered=self._clustered,
                site_files=site_files,
                mode_guard=guard,
            ),
            delete=host_scripts.broker_remove(files=removed, purge_package=broker.purge_on_destroy),
            stdin=bundle,
            repairable=True,
            # Its delete undoes its create: a replacement (`up --replace`) must delete first.
            opts=pulumi.ResourceOptions(
                parent=self, delete_before_replace=True, depends_on=[r for r in (after, firewall) if r is not None]
            ),
        )

    def _managed(self, name: str, broker: Broker, host: HostTarget, admin_password, moved: bool) -> pulumi.Resource:
        """The seed node and the admin account; returns the command the Provider waits for.
        `moved`: the broker moves to this host (a migration), so the admin is made here too."""
        server = self._seed_server = self._server(f"{name}-server", broker, host)
        return host.run(
            f"{name}-admin",
            create=host_scripts.broker_admin(user=broker.admin_user, start_timeout=broker.start_timeout),
            delete=host_scripts.broker_admin_remove(user=broker.admin_user),
            stdin=admin_password.apply(lambda pw: pw + "\n"),
            # Reruns only for drift: a changed admin password is found too (the broker
            # refuses it), and preview, which reads nothing, shows no change.
            guarded=True,
            repair_token=self._drift.admin_token() or (f"moved-to-{broker.host}" if moved else None),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[server], delete_before_replace=True),
        )
