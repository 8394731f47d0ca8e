"""edd-infra: RabbitMQ, Celery workers and Flower for EDD, as a Pulumi program."""

import pulumi

from edd_infra.program import deploy

pulumi.run(deploy)
