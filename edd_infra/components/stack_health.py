"""StackHealth: the `health` output, measured by `up` rather than assumed.

Creates `<name>-probe` on the broker host: a read-only script (`host_scripts.health_probe`) that
runs after every worker and Flower and again whenever any of them or a broker node ran (its
stdin is a digest of their scripts and stdin), so a no-op `up` runs nothing and the output keeps the last
measurement with its time. The workers' and Flower's own health checks print what they saw;
`health_report` reads all three.
"""

from __future__ import annotations

import hashlib
import json
from typing import Mapping, Optional, Sequence

import pulumi

from ..health_report import broker_report, flower_report, stack_health, worker_report
from ..hosts import HostTarget
from ..hosts import Command
from ..render.host_scripts import health_probe


def rerun_digest(commands: Sequence[pulumi.CustomResource]) -> pulumi.Output[str]:
    """A digest of what makes these commands run again (script and stdin): as the probe's
    stdin, a change to any of them is a change to the probe, an update rather than a replacement."""
    inputs = [getattr(c, attr) for c in commands for attr in ("create", "update", "stdin")]
    return pulumi.Output.all(*inputs).apply(
        lambda values: hashlib.sha256(json.dumps(values, default=str).encode()).hexdigest() + "\n"
    )


class StackHealth(pulumi.ComponentResource):
    """What `up` checked, with the figures. `broker_host`: None for a broker this stack does
    not manage (no host to probe); `workers`: unit name -> its command."""

    report: pulumi.Output[dict]

    def __init__(
        self,
        name: str,
        *,
        broker_host: Optional[HostTarget],
        vhost: str,
        queue: str,
        nodes: int,
        broker_commands: Sequence[Command],
        workers: Mapping[str, Command],
        flower: Optional[Command],
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("edd:infra:StackHealth", name, None, opts)
        followed = [*broker_commands, *workers.values(), *([flower] if flower else [])]
        broker = None
        if broker_host is not None:
            probe = broker_host.run(
                f"{name}-probe",
                create=health_probe(vhost=vhost),
                stdin=rerun_digest(followed),
                opts=pulumi.ResourceOptions(parent=self, depends_on=followed),
            )
            broker = probe.stdout.apply(lambda out: broker_report(out, queue, nodes))
        answers = pulumi.Output.all(**{unit: c.stdout for unit, c in workers.items()}).apply(
            lambda out: {unit: worker_report(text) for unit, text in out.items()}
        )
        flower_seen = flower.stdout.apply(flower_report) if flower else None
        # Worker and Flower stdout is secret (their commands read secrets); what the parsers
        # keep is names, counts and times only.
        self.report = pulumi.Output.unsecret(
            pulumi.Output.all(broker, answers, flower_seen).apply(lambda parts: stack_health(*parts))
        )
        self.register_outputs({"report": self.report})
