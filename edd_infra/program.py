"""The whole program: stack config -> validated settings -> components -> stack outputs.

`deploy` is what both entry points run: `__main__.py` (CLI, with the Python language host)
and the Automation API's inline program (tests, `make sandbox`).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, cast

import pulumi

from . import broker_drift, host_drift
from .components import (
    BrokerBackups,
    CeleryWorkerService,
    EddSettingsFile,
    EddVhost,
    FlowerService,
    RabbitBroker,
    ServiceAccount,
    StackHealth,
)
from .components.broker_migration import MigrationSource
from .components.celery_worker_service import worker_service_name
from .components.flower_service import flower_service_name
from .components.rabbit_broker import api_endpoint, local_management_address, metrics_address
from .hosts import HostTarget
from .render.alert_rules import RULES_PATH, render_alert_rules
from .render.broker_backups import BACKUP_DIR, RESTORE_SCRIPT
from .render.broker_urls import amqp_url, failover_url, flower_broker_api
from .render.celery_config import celery_settings_for
from .render.edd_settings import edd_rabbitmq_settings
from .render.host_scripts import FileSpec
from .render.scrape_targets import scrape_targets
from .render.signing_files import previous_certificate_warning
from .config_errors import ConfigError, flower_warnings
from .settings import PROJECT, Broker, BrokerTls, StackSettings, is_prod_stack
from .stack_config import StackSecrets, load_settings
from .upgrade_path import upgrade_problem

# Output names are shared with the tests and README.
OUTPUT_NAMES = (
    "brokerEndpoints",
    "managementEndpoint",
    "flowerUrl",
    "workerUnits",
    "health",
    "eddSettings",
    "celerySettings",
    "brokerPackageVersion",
    "scrapeTargets",
    "alertRules",
    "backups",
)


def build(
    settings: StackSettings,
    secrets: StackSecrets,
    drift: broker_drift.BrokerDrift = broker_drift.NOT_CHECKED,
    edited: Optional[Mapping[str, set[str]]] = None,
    now: Optional[datetime] = None,
) -> dict[str, Any]:
    """Register every resource for one stack; return the stack outputs. `drift` and `edited`
    (host -> commands whose files were edited) are what `up` found changed behind its back;
    `now` (default: the clock) decides whether a previous signing certificate is still trusted."""
    edited = edited or {}
    hosts = {
        name: HostTarget(
            name, host, secrets.ssh_private_key, drifted=dict.fromkeys(edited.get(name, ()), f"edited-{drift.nonce}")
        )
        for name, host in settings.hosts.items()
    }
    broker_cfg = settings.broker
    broker_host = hosts[broker_cfg.host]
    ca_file, tls_pems = tls_material(settings)
    broker = RabbitBroker(
        "broker",
        broker=broker_cfg,
        host=broker_host,
        # The app user may log in only from loopback unless a worker runs on another host.
        loopback_users=["guest"]
        + ([] if remote_workers(settings) or broker_cfg.cluster_nodes else [settings.app_user.name]),
        admin_password=secrets.admin_password,
        drift=drift,
        tls_pems=tls_pems,
        tls_key=secrets.broker_tls_key,
        ca_file=ca_file,
        members=[(broker_cfg.member(node), hosts[node.host]) for node in broker_cfg.cluster_nodes],
        erlang_cookie=secrets.erlang_cookie if broker_cfg.cluster_nodes else None,
        migration=migration_source(settings, hosts),
        consumer_timeout_ms=settings.tasks.consumer_timeout_ms,
        site_files=[FileSpec(RULES_PATH, render_alert_rules(settings))] if broker_cfg.install == "managed" else [],
    )
    vhost = EddVhost(
        "edd",
        vhost=settings.vhost,
        app_user=settings.app_user,
        flower_user=settings.flower_broker_user,
        app_queue=settings.app_queue,
        app_password=secrets.app_password,
        flower_password=secrets.flower_broker_password,
        provider=broker.provider,
    )
    broker.restore_password("app-user", settings.app_user.name, secrets.app_password, after=vhost.app_user)
    broker.restore_password(
        "flower-user", settings.flower_broker_user.name, secrets.flower_broker_password, after=vhost.flower_user
    )
    backups = broker_backups(settings, broker_host, after=vhost)
    # Workers, Flower and EDD run on the broker host (validated): its first plain AMQP listener.
    amqp_host = broker_cfg.plain_amqp_addresses[0]

    def broker_url(user: str, password: pulumi.Input[str], remote: bool = False) -> pulumi.Output[str]:
        """Over TLS to every node's address (validated to exist), or plain on loopback."""
        if remote:
            return pulumi.Output.secret(password).apply(
                lambda pw: failover_url(
                    [
                        amqp_url(user, pw, a, cast(BrokerTls, broker_cfg.tls).amqp_port, settings.vhost, scheme="amqps")
                        for a in broker_cfg.tls_addresses
                    ]
                )
            )
        return pulumi.Output.secret(password).apply(
            lambda pw: amqp_url(user, pw, amqp_host, broker_cfg.amqp_port, settings.vhost)
        )

    signing = signing_material(settings, secrets, now or datetime.now(timezone.utc))
    ready = [vhost]
    celery = app_celery_settings(settings)

    accounts: dict[tuple[str, str], ServiceAccount] = {}

    def account(host: str, user: str, group: str, extra: list[str]) -> list[pulumi.Resource]:
        if hosts[host].manager != "systemd":
            return []
        key = (host, user)
        if key not in accounts:
            accounts[key] = ServiceAccount(
                f"{host}-{user}", host=hosts[host], user=user, group=group, extra_groups=extra
            )
        return [accounts[key]]

    workers: list[CeleryWorkerService] = []
    batch = settings.rollout.max_unavailable
    for i, worker in enumerate(settings.workers):
        deps = ready + account(worker.host, worker.user, worker.group, worker.extra_groups)
        # Rolling: a worker's script (which restarts it) waits for the one `batch` places ahead,
        # health check included, so no more than `batch` workers are down at once.
        deps += [workers[i - batch].service] if i >= batch else []
        # In a cluster every worker fails over between all nodes, so it dials them over TLS.
        remote = worker.host != broker_cfg.host or bool(broker_cfg.cluster_nodes)
        workers.append(
            CeleryWorkerService(
                worker.name,
                worker=worker,
                host=hosts[worker.host],
                broker_url=broker_url(settings.app_user.name, secrets.app_password, remote=remote),
                celery_config=celery,
                broker_ca=cast(tuple[str, str], tls_pems)[0] if remote else None,
                signing=signing,
                result_backend=secrets.result_backend,
                stop_timeout=settings.tasks.stop_timeout,
                depends_on=deps,
            )
        )
    flower_url = flower = None
    for warning in flower_warnings(settings):
        pulumi.log.warn(warning)
    if settings.flower.enabled:
        flower_cfg = settings.flower
        deps = ready + account(flower_cfg.host, flower_cfg.user, flower_cfg.group, [])
        flower = FlowerService(
            "flower",
            flower=flower_cfg,
            host=hosts[flower_cfg.host],
            # Flower's AMQP connection and its management API calls both use the Flower user.
            broker_url=broker_url(settings.flower_broker_user.name, secrets.flower_broker_password),
            broker_api=flower_broker_api(local_management_address(broker_cfg), broker_cfg.management_port),
            celery_config=celery,
            ui_password=secrets.flower_ui_password,
            signing=signing,
            tls=flower_tls_material(settings, secrets),
            depends_on=deps,
        )
        flower_url = flower.url

    edd_settings = edd_settings_values(settings, secrets, amqp_host)
    if settings.edd_settings is not None:
        EddSettingsFile(
            "edd-settings",
            config=settings.edd_settings,
            host=hosts[settings.edd_settings.host],
            values=edd_settings,
            celery=celery,
            depends_on=[vhost],
        )

    health = StackHealth(
        "health",
        broker_host=broker_host if broker_cfg.install == "managed" else None,
        vhost=settings.vhost,
        queue=settings.app_queue.name,
        nodes=1 + len(broker_cfg.cluster_nodes),
        broker_commands=broker.servers,
        workers={w.service_name: w.service for w in workers},
        flower=flower.service if flower else None,
    )
    return {
        "brokerEndpoints": broker_endpoints(broker_cfg, settings.vhost),
        "managementEndpoint": broker.endpoint,
        "flowerUrl": flower_url,
        "workerUnits": {w.service_name: hosts[s.host].name for w, s in zip(workers, settings.workers)},
        "health": health.report,
        "eddSettings": edd_settings,
        "celerySettings": celery,
        # What the next preview compares a new packageVersion with (upgrade_path).
        "brokerPackageVersion": broker_cfg.package_version,
        "scrapeTargets": scrape_targets(settings, metrics_nodes(broker_cfg)),
        "alertRules": {"host": broker_cfg.host, "path": RULES_PATH} if broker_cfg.install == "managed" else None,
        "backups": backups,
    }


def metrics_nodes(broker: Broker) -> list[tuple[str, str]]:
    """(node name, metrics address) of every RabbitMQ node this stack runs (none when external)."""
    if broker.install != "managed":
        return []
    members = [broker.member(n) for n in broker.cluster_nodes]
    return [(broker.node_name, metrics_address(broker))] + [
        (m.node_name, metrics_address(m, member=True)) for m in members
    ]


def broker_backups(settings: StackSettings, host: HostTarget, after: pulumi.Resource) -> Optional[dict[str, Any]]:
    """The definitions backup timer on a managed broker's host (the seed node in a cluster:
    definitions are cluster-wide); its output says where the backups go and how to restore."""
    backups, broker = settings.backups, settings.broker
    if not backups.enabled or broker.install != "managed":
        return None
    BrokerBackups(
        "broker-backups",
        backups=backups,
        host=host,
        vhost=settings.vhost,
        queue=settings.app_queue.name,
        start_timeout=broker.start_timeout,
        depends_on=[after],
    )
    return {
        "host": broker.host,
        "directory": BACKUP_DIR,
        "schedule": backups.schedule,
        "keep": backups.keep,
        "restore": f"{RESTORE_SCRIPT} [FILE]",
    }


def signing_material(
    settings: StackSettings, secrets: StackSecrets, now: datetime
) -> Optional[tuple[pulumi.Output[str], str, Optional[str]]]:
    """(signing key, certificate, previous certificate while still trusted) for every service,
    with celerySigning; warns once the previous one is past its time (files checked at load)."""
    signing = settings.celery_signing
    if signing is None:
        return None
    # previous_trusted/previous_expired: previousCertFile and previousTrustedUntil are both set;
    # celerySigningKey is required with celerySigning (checked at load).
    previous = Path(cast(str, signing.previous_cert_file)).read_text() if signing.previous_trusted(now) else None
    if signing.previous_expired(now):
        pulumi.log.warn(previous_certificate_warning(cast(datetime, signing.previous_trusted_until)))
    return cast(pulumi.Output[str], secrets.celery_signing_key), Path(signing.cert_file).read_text(), previous


def migration_source(settings: StackSettings, hosts: dict[str, HostTarget]) -> Optional[MigrationSource]:
    """With broker.migrateFrom: the old broker host, the app queue that moves, and the units
    that retire with the old host (the broker's services ran there under the same names)."""
    old = settings.broker.migrate_from
    if old is None:
        return None
    units = [worker_service_name(w, "systemd") for w in settings.workers]
    units += [flower_service_name("systemd")] if settings.flower.enabled else []
    q = settings.app_queue
    return MigrationSource(host=hosts[old.host], vhost=settings.vhost, queue=q.name, exchange=q.exchange, units=units)


def app_celery_settings(settings: StackSettings) -> dict[str, Any]:
    """The Celery settings every producer shares with the broker objects (render.celery_config)."""
    return celery_settings_for(settings.app_queue, settings.tasks)


def remote_workers(settings: StackSettings) -> bool:
    return any(w.host != settings.broker.host for w in settings.workers)


def broker_endpoints(broker: Broker, vhost: str) -> list[str]:
    """amqp:// for each plain listener, amqps:// for each TLS one (no credentials)."""

    def urls(scheme: str, port: int, addresses: list[str]) -> list[str]:
        return [f"{scheme}://{f'[{a}]' if ':' in a else a}:{port}/{vhost}" for a in addresses]

    tls = (
        urls("amqps", broker.tls.amqp_port, broker.amqp_listeners + [n.address for n in broker.cluster_nodes])
        if broker.tls
        else []
    )
    return urls("amqp", broker.amqp_port, broker.plain_amqp_addresses) + tls


def edd_settings_values(settings: StackSettings, secrets: StackSecrets, amqp_host: str) -> pulumi.Output[dict]:
    """What EDD puts in server.cfg's `rabbitmq` section, as one secret Output."""
    return pulumi.Output.secret(
        pulumi.Output.all(secrets.app_password, secrets.flower_broker_password).apply(
            lambda pw: edd_rabbitmq_settings(
                hostname=amqp_host,
                edd_user=settings.app_user.name,
                edd_pass=pw[0],
                edd_vhost=settings.vhost,
                port=settings.broker.amqp_port,
                mgmt_user=settings.flower_broker_user.name,
                mgmt_pass=pw[1],
                mgmt_port=settings.broker.management_port,
            )
        )
    )


def tls_material(settings: StackSettings) -> tuple[Optional[str], Optional[tuple[str, str]]]:
    """The CA file's path on this machine (for the provider) and the CA and server
    certificate texts (for the broker host), when broker.tls is set (files checked at load)."""
    tls = settings.broker.tls
    if tls is None:
        return None, None
    return tls.ca_file, (Path(tls.ca_file).read_text(), Path(tls.cert_file).read_text())


def flower_ca_file(settings: StackSettings) -> Optional[str]:
    """The CA that issued Flower's HTTPS certificate: flower.tls.caFile, else broker.tls.caFile."""
    tls = settings.flower.tls
    if tls is None:
        return None
    return tls.ca_file or cast(BrokerTls, settings.broker.tls).ca_file  # one of them is set (validated)


def flower_tls_material(
    settings: StackSettings, secrets: StackSecrets
) -> Optional[tuple[str, str, pulumi.Output[str]]]:
    """(certificate, CA certificate, key) for Flower's HTTPS, with flower.tls (files checked at load)."""
    tls = settings.flower.tls
    if tls is None:
        return None
    ca_file = cast(str, flower_ca_file(settings))
    return Path(tls.cert_file).read_text(), Path(ca_file).read_text(), cast(pulumi.Output[str], secrets.flower_tls_key)


async def observe_drift(settings: StackSettings, secrets: StackSecrets) -> broker_drift.BrokerDrift:
    """Read the broker's accounts for drift; only in `up`, so preview contacts no broker."""
    if pulumi.runtime.is_dry_run():
        return broker_drift.NOT_CHECKED
    endpoint = api_endpoint(settings.broker)
    problem = broker_drift.plain_http_problem(endpoint)
    if problem:
        # The probe never sends the admin password in cleartext off loopback. In a prod stack (the
        # policy pack's management-listener-tls, mandatory there) `up` stops here, before any change.
        if is_prod_stack(pulumi.get_stack()):
            raise ConfigError(
                [f"{PROJECT}:broker.managementAddress: {problem} (stack {pulumi.get_stack()!r} is a prod stack)"]
            )
        pulumi.log.warn(f"{PROJECT}:broker.managementAddress: drift on the broker not checked: {problem}")
        return broker_drift.NOT_CHECKED
    # Required secrets: their futures resolve to the strings (preview returned above).
    admin, app, flower = [
        cast(str, await s.future())
        for s in (secrets.admin_password, secrets.app_password, secrets.flower_broker_password)
    ]
    passwords = {settings.app_user.name: app, settings.flower_broker_user.name: flower}
    return await asyncio.to_thread(
        broker_drift.observe, endpoint, settings.broker.admin_user, admin, passwords, ca_file=tls_material(settings)[0]
    )


async def observe_edits(settings: StackSettings, secrets: StackSecrets) -> dict[str, set[str]]:
    """Ask each host which managed files were edited by hand; only in `up`."""
    if pulumi.runtime.is_dry_run():
        return {}
    key = await secrets.ssh_private_key.future() if secrets.ssh_private_key is not None else None
    return await asyncio.to_thread(host_drift.observe, settings.hosts, key)


async def check_upgrade_path(settings: StackSettings) -> None:
    """With a pinned RabbitMQ, refuse (at preview, before any resource) a change of
    `broker.packageVersion` that RabbitMQ cannot upgrade in place. The version deployed last
    is this stack's own output, read back through a reference to the stack itself."""
    broker = settings.broker
    # A migration installs on a fresh host: nothing is upgraded in place.
    if broker.install != "managed" or broker.package_version is None or broker.migrate_from is not None:
        return
    me = pulumi.StackReference(f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}")
    deployed = await me.get_output("brokerPackageVersion").future()
    problem = upgrade_problem(deployed, broker.package_version)
    if problem:
        raise ConfigError([f"{PROJECT}:broker.packageVersion: {problem}"])


async def deploy(check_drift: bool = True, project_dir: Optional[str] = None) -> dict[str, Any]:
    """Validate the stack's config (stopping before any resource on a problem), look for
    drift on the broker and the hosts, then build. `project_dir`: where Pulumi.yaml is
    (inline programs have no root directory of their own)."""
    settings, secrets = await load_settings(project_dir=Path(project_dir) if project_dir else None)
    await check_upgrade_path(settings)
    if not check_drift:
        return build(settings, secrets)
    drift, edited = await asyncio.gather(observe_drift(settings, secrets), observe_edits(settings, secrets))
    return build(settings, secrets, drift, edited)


def inline_program(project_dir: Optional[str] = None) -> None:
    """The Automation API's inline program: the same `deploy` as `__main__.py`."""
    pulumi.run(lambda: deploy(project_dir=project_dir))
