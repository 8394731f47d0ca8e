"""A Pulumi program of its own that uses edd-infra's components, composed by hand.

One Debian host runs RabbitMQ (`RabbitBroker`), the `/edd` vhost with its users, queue and
exchange (`EddVhost`), the `celery` system account (`ServiceAccount`) and one Celery worker
(`CeleryWorkerService`). Nothing here reads edd-infra's stack config: the arguments are the
package's pydantic models (validated when built) and this program's own config keys.
"""

import pulumi

from edd_infra.components import CeleryWorkerService, EddVhost, RabbitBroker, ServiceAccount
from edd_infra.hosts import HostTarget
from edd_infra.render.broker_urls import amqp_url
from edd_infra.settings import AppUser, Broker, Host, Tasks, Worker

config = pulumi.Config()

host = HostTarget(
    "queue",
    Host(address=config.require("address"), user=config.get("user") or "root", host_key=config.get("hostKey") or None),
    private_key=config.get_secret("sshPrivateKey"),
)
broker_settings = Broker(
    host="queue",
    management_address=config.get("managementAddress") or "127.0.0.1",
    purge_on_destroy=config.get_bool("purgeOnDestroy") or False,
)
broker = RabbitBroker(
    "broker", broker=broker_settings, host=host, admin_password=config.require_secret("adminPassword")
)

app_user = AppUser()  # edd_user, least privilege on the vhost
app_password = config.require_secret("appPassword")
vhost = EddVhost(
    "edd",
    provider=broker.provider,
    app_user=app_user,
    app_password=app_password,
    flower_password=config.require_secret("flowerPassword"),
)

account = ServiceAccount("queue-celery", host=host, user="celery", group="celery", extra_groups=[])
tasks = Tasks()
worker = Worker(
    name="worker-1",
    host="queue",
    working_directory=config.require("workingDirectory"),
    virtualenv=config.require("virtualenv"),
    concurrency=2,
)
# The worker runs beside the broker: plain AMQP on loopback.
broker_url = app_password.apply(
    lambda password: amqp_url(app_user.name, password, "127.0.0.1", broker_settings.amqp_port, "/edd")
)
service = CeleryWorkerService(
    "worker-1",
    worker=worker,
    host=host,
    broker_url=broker_url,
    stop_timeout=tasks.stop_timeout,
    depends_on=[vhost, account],
)

pulumi.export("managementEndpoint", broker.endpoint)
pulumi.export("vhost", vhost.vhost.name)
pulumi.export("workerUnit", service.service_name)
