"""BrokerBackups: the definitions backup timer and the restore script on the broker host."""

from __future__ import annotations

from typing import Optional, Sequence

import pulumi

from ..hosts import HostTarget
from ..render.broker_backups import backup_files, backups_install, backups_remove
from ..settings import Backups


class BrokerBackups(pulumi.ComponentResource):
    """The timer's units and scripts, written after the broker runs (the export needs it)."""

    def __init__(
        self,
        name: str,
        *,
        backups: Backups,
        host: HostTarget,
        vhost: str,
        queue: str,
        start_timeout: int,
        depends_on: Sequence[pulumi.Resource] = (),
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("edd:infra:BrokerBackups", name, None, opts)
        files = backup_files(
            schedule=backups.schedule, keep=backups.keep, vhost=vhost, queue=queue, start_timeout=start_timeout
        )
        self.command = host.run(
            name,
            create=backups_install(files),
            delete=backups_remove(files),
            repairable=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(depends_on)),
        )
        self.register_outputs({})
