"""ServiceAccount: the system user and group the Celery services run as (seed: `celery`).

One per (host, user), shared by the workers and Flower on that host; `delete` removes the
user and group only when this stack created them.
"""

from __future__ import annotations

from typing import Optional

import pulumi

from ..hosts import HostTarget
from ..render import host_scripts


class ServiceAccount(pulumi.ComponentResource):
    """A system user, its group and its supplementary groups on one host."""

    def __init__(
        self,
        name: str,
        *,
        host: HostTarget,
        user: str,
        group: str,
        extra_groups: list[str],
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("edd:infra:ServiceAccount", name, None, opts)
        self.user, self.group = user, group
        self.ready = host.run(
            f"{name}-account",
            create=host_scripts.account_create(user=user, group=group, extra_groups=extra_groups),
            delete=host_scripts.account_remove(user=user, group=group),
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.register_outputs({"user": user, "group": group})
