"""Where a command runs: over SSH (pulumi_command.remote) or on this machine (.local).

`HostTarget.run` is the one place commands are made, so every command gets the same secret
handling: scripts in the command text, secrets only on stdin, no logging of stdin/stdout/stderr,
and stdout/stderr marked secret for commands that receive one.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
from pulumi_command import local, remote

from .settings import Host


@dataclass(frozen=True)
class HostTarget:
    """A configured host plus the secret key used to reach it."""

    name: str
    host: Host
    private_key: Optional[pulumi.Output[str]] = None

    @property
    def manager(self):
        return self.host.service_manager

    def _connection(self) -> remote.ConnectionArgs:
        return remote.ConnectionArgs(
            host=self.host.address,
            port=self.host.port,
            user=self.host.user,
            private_key=self.private_key,
            host_key=self.host.host_key,
            per_dial_timeout=10,
            dial_error_limit=30,
        )

    def _wrap(self, text: Optional[str]) -> Optional[str]:
        if text is None or not self.host.sudo:
            return text
        return "sudo -n sh -c " + shlex.quote(text)

    def run(
        self,
        name: str,
        *,
        create: str,
        update: Optional[str] = None,
        delete: Optional[str] = None,
        stdin: Optional[pulumi.Input[str]] = None,
        triggers: Optional[Sequence[pulumi.Input[object]]] = None,
        opts: Optional[pulumi.ResourceOptions] = None,
    ) -> pulumi.CustomResource:
        """A command whose create also serves as its update unless `update` is given
        (scripts are idempotent)."""
        quiet = pulumi.ResourceOptions(additional_secret_outputs=["stdout", "stderr"]) if stdin is not None else None
        opts = pulumi.ResourceOptions.merge(opts, quiet)
        common = dict(
            create=self._wrap(create),
            update=self._wrap(create if update is None else update),
            delete=self._wrap(delete),
            stdin=stdin,
            triggers=triggers,
            # stdin carries secrets; stdout/stderr could echo them on a failure.
            logging="none" if stdin is not None else "stdoutAndStderr",
            opts=opts,
        )
        if self.host.connection == "local":
            return local.Command(name, interpreter=["/bin/sh", "-c"], **common)
        return remote.Command(name, connection=self._connection(), **common)
