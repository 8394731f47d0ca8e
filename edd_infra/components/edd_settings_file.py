"""EddSettingsFile: the broker settings EDD reads, written for it on its host.

The guide ends each account step with "add the password to EDD's server.cfg"; this does it,
with the Celery settings EDD's producers must share with the broker (publisher confirms).
Creates `<name>-file`: the file (secret bundle on stdin, mode and group from config),
rewritten in the same `up` that rotates a password (after the broker has it), then EDD's own
units in `restartUnits` restarted if they run; removed on destroy.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import pulumi

from ..hosts import HostTarget
from ..render import host_scripts
from ..render.edd_settings import render_edd_settings
from ..render.host_scripts import FileSpec
from ..settings import EddSettingsFile as EddSettingsConfig


class EddSettingsFile(pulumi.ComponentResource):
    """One settings file on EDD's host."""

    def __init__(
        self,
        name: str,
        *,
        config: EddSettingsConfig,
        host: HostTarget,
        values: pulumi.Output[Mapping[str, str]],
        celery: Mapping[str, Any],
        depends_on: Sequence[pulumi.Resource] = (),
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("edd:infra:EddSettingsFile", name, None, opts)
        bundle = values.apply(
            lambda v: host_scripts.secret_bundle(
                [
                    FileSpec(
                        config.path,
                        render_edd_settings(v, config.format, celery),
                        config.mode,
                        config.owner,
                        config.group,
                        keep_on_failure=True,
                    )
                ]
            )
        )
        self.file = host.run(
            f"{name}-file",
            create=host_scripts.secret_files_install(config.restart_units),
            delete=host_scripts.files_remove([config.path]),
            stdin=bundle,
            repairable=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(depends_on), delete_before_replace=True),
        )
        self.register_outputs({"path": config.path})
