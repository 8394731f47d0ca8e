"""edd-infra: RabbitMQ, Celery workers and Flower for EDD, as Pulumi components.

Public API (README: "Using the components in your own program"): the components in
`edd_infra.components`, the pydantic models they take in `edd_infra.settings`, `HostTarget`
in `edd_infra.hosts`. Nothing is imported here, so `import edd_infra` costs nothing.
"""

__version__ = "0.1.0"
