"""Where a command runs: over SSH (pulumi_command.remote) or on this machine (.local).

`HostTarget.run` is the one place commands are made, so every command gets the same secret
handling: scripts in the command text, secrets only on stdin, no logging of stdin/stdout/stderr,
and stdout/stderr marked secret for commands that receive one.

Repairs: a `guarded` command runs only when given a repair token (drift found at `up` time:
`broker_drift`, `host_drift`); otherwise every change to it is ignored, so it never reruns
with a stale stdin. A `repairable` command records the files it manages on the host and gets
a guarded twin, `<name>-repair`, that reruns its script when those files were edited.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union, cast

import pulumi
from pulumi_command import local, remote

from .render.host_scripts import with_manifest, without_manifest
from .settings import Host


# What `HostTarget.run` makes: both kinds have stdout, stderr and the scripts as outputs.
Command = Union[local.Command, remote.Command]

# A create with nothing to do still reads its stdin: the provider fails with EOF when the
# remote command exits before taking what it was sent.
DRAIN_STDIN = "cat >/dev/null"

# Everything that could make a command run: a guarded one ignores all of it without a token.
GUARDED_INPUTS = ("stdin", "create", "update", "delete", "connection", "logging", "triggers")


@dataclass(frozen=True)
class HostTarget:
    """A configured host plus the secret key used to reach it."""

    name: str
    host: Host
    private_key: Optional[pulumi.Output[str]] = None
    # command name -> repair token, for commands whose files were edited on the host
    drifted: Mapping[str, str] = field(default_factory=dict)

    @property
    def manager(self):
        return self.host.service_manager

    def _connection(self) -> remote.ConnectionArgs:
        return remote.ConnectionArgs(
            host=cast(str, self.host.address),  # required for ssh (validated)
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
        repairable: bool = False,
        guarded: bool = False,
        repair_token: Optional[str] = None,
        secret_output: bool = False,
        opts: Optional[pulumi.ResourceOptions] = None,
    ) -> Command:
        """A command whose create also serves as its update unless `update` is given
        (scripts are idempotent). `secret_output`: its stdout is a secret (as with a stdin)."""
        update = create if update is None else update
        if repairable:
            create, update = with_manifest(name, create), with_manifest(name, update)
            delete = without_manifest(name, delete or "")
        if guarded:
            if repair_token:
                # A last stdin line the scripts skip; a new token is a change, so it reruns.
                stdin = pulumi.Output.from_input(stdin if stdin is not None else "").apply(
                    lambda text: text + f"# repair {repair_token}\n"
                )
            ignore = pulumi.ResourceOptions(ignore_changes=[] if repair_token else list(GUARDED_INPUTS))
            opts = pulumi.ResourceOptions.merge(opts, ignore)
        command = self._command(name, create, update, delete, stdin, triggers, opts, secret_output)
        if repairable:
            self.run(
                f"{name}-repair",
                create=DRAIN_STDIN,
                update=update,
                stdin=stdin,
                guarded=True,
                repair_token=self.drifted.get(name),
                opts=pulumi.ResourceOptions(parent=opts.parent if opts else None, depends_on=[command]),
            )
        return command

    def _command(self, name, create, update, delete, stdin, triggers, opts, secret_output=False) -> Command:
        secret = stdin is not None or secret_output
        quiet = pulumi.ResourceOptions(additional_secret_outputs=["stdout", "stderr"]) if secret else None
        opts = pulumi.ResourceOptions.merge(opts, quiet)
        common = dict(
            create=self._wrap(create),
            update=self._wrap(update),
            delete=self._wrap(delete),
            stdin=stdin,
            triggers=triggers,
            # stdin carries secrets; stdout/stderr could echo them on a failure.
            logging="none" if secret else "stdoutAndStderr",
            opts=opts,
        )
        if self.host.connection == "local":
            return local.Command(name, interpreter=["/bin/sh", "-c"], **common)
        return remote.Command(name, connection=self._connection(), **common)
