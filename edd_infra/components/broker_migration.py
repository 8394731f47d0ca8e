"""BrokerMigration: a live move of the broker from an old host to `broker.host` (blue/green).

Created while `broker.migrateFrom` is set, as a child of RabbitBroker, once the new broker
answers and has its admin:
- `<name>-export` (old host): the old broker's definitions, read once; kept only as a
  secret output, never logged;
- `<name>-import` (new host): those definitions (render.broker_migration.copied_definitions:
  users keep their password hashes, so no service's password changes) and the shovel's
  account; the Provider waits for it, so the broker objects it manages exist on the new broker
  before anything uses them;
- `<name>-shovel` (old host): a shovel that moves the old app queue's messages to the new
  broker over TLS, confirmed before acked; `up` waits until the old queue is empty.
Removing `broker.migrateFrom` deletes them: the shovel's delete refuses while the old queue
holds messages, then stops the old broker and the old host's services; the import's delete
drops the shovel's account.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, cast

import pulumi

from ..hosts import HostTarget
from ..render import host_scripts
from ..render.broker_migration import (
    MIGRATION_CA_PATH,
    MIGRATION_USER,
    copied_definitions,
    shovel_definitions,
    shovel_password,
)
from ..render.broker_urls import shovel_uri
from ..render.host_scripts import FileSpec
from ..settings import Broker, BrokerTls
from ..settings import BrokerMigration as MigrateFrom


@dataclass(frozen=True)
class MigrationSource:
    """The old broker host and what moves from it: the app queue (into the app exchange)
    and the service units that retire with it."""

    host: HostTarget
    vhost: str
    queue: str
    exchange: str
    units: Sequence[str]


class BrokerMigration(pulumi.ComponentResource):
    """The old broker's definitions and queued messages, moved to the new broker."""

    imported: pulumi.Resource

    def __init__(
        self,
        name: str,
        *,
        source: MigrationSource,
        target: HostTarget,
        broker: Broker,
        admin_password: pulumi.Input[str],
        ca_pem: str,
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("edd:infra:BrokerMigration", name, None, opts)
        old, timeout = source.host, broker.start_timeout
        export = old.run(
            f"{name}-export",
            create=host_scripts.definitions_export(start_timeout=timeout),
            delete=":",
            secret_output=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        password = pulumi.Output.secret(admin_password).apply(shovel_password)
        self.imported = target.run(
            f"{name}-import",
            create=host_scripts.definitions_import(
                user=MIGRATION_USER,
                vhost=source.vhost,
                queue=source.queue,
                exchange=source.exchange,
                start_timeout=timeout,
            ),
            delete=host_scripts.definitions_import_remove(user=MIGRATION_USER),
            stdin=pulumi.Output.all(password, export.stdout).apply(
                lambda args: f"{args[0]}\n{copied_definitions(args[1])}\n"
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        # A migration needs broker.tls, so the new broker has a TLS address (validated).
        tls, address = cast(BrokerTls, broker.tls), cast(str, broker.remote_amqp_address)
        migrate_from = cast(MigrateFrom, broker.migrate_from)
        dest = password.apply(
            lambda pw: shovel_uri(MIGRATION_USER, pw, address, tls.amqp_port, source.vhost, MIGRATION_CA_PATH)
        )
        old.run(
            f"{name}-shovel",
            create=host_scripts.shovel_start(
                ca=FileSpec(MIGRATION_CA_PATH, ca_pem),
                vhost=source.vhost,
                queue=source.queue,
                drain_timeout=migrate_from.drain_timeout,
                start_timeout=timeout,
            ),
            delete=host_scripts.shovel_retire(vhost=source.vhost, queue=source.queue, units=source.units),
            stdin=dest.apply(
                lambda uri: (
                    shovel_definitions(vhost=source.vhost, queue=source.queue, exchange=source.exchange, dest_uri=uri)
                    + "\n"
                )
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.imported]),
        )
        self.register_outputs({})
