"""EddVhost: the `/edd` vhost and the two accounts that use it.

Creates, through the management API (pulumi_rabbitmq):
- the vhost;
- the app user (seed: `edd_user`) with its configure/write/read regexes on the vhost: by
  default only what Celery and EDD use (`render.permissions.least_privilege`);
- the Flower user: by default the `monitoring` tag and, on the vhost, only the event and
  control objects a Celery monitor uses (least privilege, the seed's TODO); with profile
  `administrator`, the seed's `bunny` with `.*` on `/` and on the vhost.
- the app's queue and exchange (EDD's `edd`, fanout) and their binding, durable (a quorum
  queue with `appQueue.queueType: quorum`, replicated on every cluster node) and protected:
  deleting a queue loses its messages, so `destroy` needs `state unprotect` first;
- a dead-letter exchange and queue (`edd.dead-letter`, kept the same way) and the policy
  that sends a task there after `appQueue.deliveryLimit` deliveries, so a poison task is
  kept for a person to look at, not redelivered forever or dropped.
Passwords update in place; tags are kept.
"""

from __future__ import annotations

import re
from typing import Optional, cast

import pulumi
import pulumi_rabbitmq as rabbitmq

from ..render.permissions import CeleryNames, least_privilege, missing_for_celery, monitor_regex
from ..settings import AppQueue, AppUser, FlowerBrokerUser, Permissions

FULL = Permissions()


def flower_grants(profile: str, vhost: str, queue: AppQueue) -> tuple[list[str], dict[str, Permissions]]:
    """Tags and per-vhost permissions for the Flower user's profile."""
    if profile == "administrator":
        return ["administrator"], {"/": FULL, vhost: FULL}
    regex = monitor_regex(queue.control_exchange, queue.event_exchange, event_queue_prefix=queue.event_queue_prefix)
    return ["monitoring"], {vhost: Permissions(configure=regex, write=regex, read=regex)}


def app_permissions(app_user: AppUser, queue: AppQueue, rpc_results: bool = True) -> Permissions:
    """The app user's regexes for its profile (see AppUser)."""
    if app_user.permission_profile == "full":
        return FULL
    if app_user.permission_profile == "custom":
        custom = cast(Permissions, app_user.permissions)  # set with the custom profile (validated)
        for gap in missing_for_celery(custom, celery_names(queue, rpc_results), where="edd-infra:appUser.permissions"):
            pulumi.log.warn(gap)
        return custom
    least = least_privilege(celery_names(queue, rpc_results))
    return Permissions(configure=least.configure, write=least.write, read=least.read)


def celery_names(queue: AppQueue, rpc_results: bool = True) -> CeleryNames:
    return CeleryNames(
        queues=(queue.name,),
        exchanges=(queue.exchange,),
        control_exchange=queue.control_exchange,
        event_exchange=queue.event_exchange,
        event_queue_prefix=queue.event_queue_prefix,
        rpc_results=rpc_results,
        delayed_delivery=queue.queue_type == "quorum",
    )


APP_QUEUE_POLICY = "edd-infra-app-queue"


def app_queue_policy(queue: AppQueue) -> dict:
    """The policy on the app queue: what it rejects (and, quorum, a task delivered
    `deliveryLimit` times, which RabbitMQ 4 drops otherwise) goes to the dead-letter exchange.

    A queue takes no policy with a key its type lacks (measured on 3.10: a classic queue
    ignores the whole policy if it names `delivery-limit`), so the keys follow the type.
    At-least-once dead-lettering (quorum) needs `overflow: reject-publish`; with no length
    limit set, that never refuses a publish."""
    definition = {"dead-letter-exchange": queue.dead_letter}
    if queue.queue_type == "quorum":
        definition |= {
            "delivery-limit": str(queue.delivery_limit),
            "dead-letter-strategy": "at-least-once",
            "overflow": "reject-publish",
        }
    return {"pattern": f"^{re.escape(queue.name)}$", "apply_to": "queues", "priority": 0, "definition": definition}


def queue_arguments(queue: AppQueue) -> dict[str, str]:
    """The app queue's declared arguments: its type, always named.

    RabbitMQ 4 reports `x-queue-type` on every queue, so a classic queue declared without it
    would differ from what the provider reads back, and the next `up` would replace it."""
    return {"x-queue-type": queue.queue_type}


def queue_ignore_changes(queue: AppQueue) -> list[str]:
    """A classic queue keeps the arguments it was created with.

    Stacks made before `x-queue-type` was declared (RabbitMQ 3.10 reports nothing for a
    classic queue) hold no argument in their state: naming it now would replace their
    protected queue. Ignoring the key reuses the previous inputs, whichever they were; a
    new queue is still created with it. A quorum queue is compared as declared, so a change
    of type shows as the replacement it is."""
    return ['settings.arguments["x-queue-type"]'] if queue.queue_type == "classic" else []


class EddVhost(pulumi.ComponentResource):
    """The vhost with its app and Flower users."""

    vhost: rabbitmq.VHost

    def __init__(
        self,
        name: str,
        *,
        app_password: pulumi.Input[str],
        flower_password: pulumi.Input[str],
        provider: rabbitmq.Provider,
        app_user: AppUser = AppUser(),
        flower_user: FlowerBrokerUser = FlowerBrokerUser(),
        app_queue: AppQueue = AppQueue(),
        vhost: str = "/edd",
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("edd:infra:EddVhost", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        self.vhost = rabbitmq.VHost(f"{name}-vhost", name=vhost, opts=child)
        after_vhost = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[self.vhost]))

        def user(key: str, user_name: str, tags: list[str], password, grants: dict[str, Permissions]):
            created = rabbitmq.User(
                f"{name}-{key}", name=user_name, password=pulumi.Output.secret(password), tags=tags, opts=child
            )
            for target, perms in grants.items():
                suffix = "root" if target == "/" else "vhost"
                rabbitmq.Permissions(
                    f"{name}-{key}-{suffix}-permissions",
                    user=created.name,
                    vhost=target if target == "/" else self.vhost.name,
                    permissions=rabbitmq.PermissionsPermissionsArgs(
                        configure=perms.configure, write=perms.write, read=perms.read
                    ),
                    opts=after_vhost,
                )
            return created

        self.app_user = user(
            "app-user", app_user.name, list(app_user.tags), app_password, {vhost: app_permissions(app_user, app_queue)}
        )
        tags, grants = flower_grants(flower_user.profile, vhost, app_queue)
        self.flower_user = user("flower-user", flower_user.name, tags, flower_password, grants)
        self.queue = self._queue(name, app_queue, after_vhost)
        self.register_outputs(
            {
                "vhost": self.vhost.name,
                "appUser": self.app_user.name,
                "flowerUser": self.flower_user.name,
                "queue": app_queue.name,
            }
        )

    def _queue(self, name: str, queue: AppQueue, after_vhost: pulumi.ResourceOptions) -> rabbitmq.Queue:
        """The durable queue, its exchange and the binding between them, as EDD declares them."""
        kept = pulumi.ResourceOptions.merge(after_vhost, pulumi.ResourceOptions(protect=True))
        exchange = rabbitmq.Exchange(
            f"{name}-exchange",
            name=queue.exchange,
            vhost=self.vhost.name,
            settings=rabbitmq.ExchangeSettingsArgs(type=queue.exchange_type, durable=True, auto_delete=False),
            opts=kept,
        )
        created = rabbitmq.Queue(
            f"{name}-queue",
            name=queue.name,
            vhost=self.vhost.name,
            settings=rabbitmq.QueueSettingsArgs(durable=True, auto_delete=False, arguments=queue_arguments(queue)),
            opts=pulumi.ResourceOptions.merge(kept, pulumi.ResourceOptions(ignore_changes=queue_ignore_changes(queue))),
        )
        rabbitmq.Binding(
            f"{name}-binding",
            source=exchange.name,
            destination=created.name,
            destination_type="queue",
            routing_key=queue.name,
            vhost=self.vhost.name,
            opts=pulumi.ResourceOptions.merge(after_vhost, pulumi.ResourceOptions(depends_on=[exchange, created])),
        )
        self._dead_letter(name, queue, kept, after_vhost)
        return created

    def _dead_letter(
        self, name: str, queue: AppQueue, kept: pulumi.ResourceOptions, after_vhost: pulumi.ResourceOptions
    ) -> None:
        """Where the app queue's poison tasks go (a fanout exchange and a queue, both kept), and
        the policy that sends them there (see `app_queue_policy`)."""
        exchange = rabbitmq.Exchange(
            f"{name}-dead-letter-exchange",
            name=queue.dead_letter,
            vhost=self.vhost.name,
            settings=rabbitmq.ExchangeSettingsArgs(type="fanout", durable=True, auto_delete=False),
            opts=kept,
        )
        parked = rabbitmq.Queue(
            f"{name}-dead-letter-queue",
            name=queue.dead_letter,
            vhost=self.vhost.name,
            settings=rabbitmq.QueueSettingsArgs(durable=True, auto_delete=False, arguments=queue_arguments(queue)),
            opts=kept,
        )
        rabbitmq.Binding(
            f"{name}-dead-letter-binding",
            source=exchange.name,
            destination=parked.name,
            destination_type="queue",
            routing_key="",
            vhost=self.vhost.name,
            opts=pulumi.ResourceOptions.merge(after_vhost, pulumi.ResourceOptions(depends_on=[exchange, parked])),
        )
        rabbitmq.Policy(
            f"{name}-app-queue-policy",
            name=APP_QUEUE_POLICY,
            vhost=self.vhost.name,
            policy=rabbitmq.PolicyPolicyArgs(**app_queue_policy(queue)),
            opts=pulumi.ResourceOptions.merge(after_vhost, pulumi.ResourceOptions(depends_on=[exchange, parked])),
        )
