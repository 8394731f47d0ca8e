"""The Celery settings every producer edd-infra configures must share with the broker.

Publisher confirms make a publish the broker refuses (a permission gap, a full or missing
queue) raise in `apply_async` instead of vanishing (field-facts.md). The queue, exchange and
naming settings are the ones the broker objects and the least-privilege permissions were
made from, so the app cannot drift from them. Workers and Flower get these as a Celery
config module (`CELERY_CONFIG_MODULE`, which Celery's loader reads when the app does not
call `config_from_object`); EDD gets the same dict in its settings file.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..settings import AppQueue, Tasks
from .host_scripts import FileSpec

CONFIG_MODULE = "edd_infra_celeryconfig"
CONFIG_DIR = "/etc/edd-infra/celery"


def celery_settings(
    *,
    queue: str,
    exchange: str,
    exchange_type: str,
    queue_type: str,
    control_exchange: str,
    event_exchange: str,
    event_queue_prefix: str,
    soft_time_limit: int,
    time_limit: int,
    prefetch_multiplier: int,
) -> dict[str, Any]:
    """Celery setting name -> value (JSON types only, so EDD's settings file can carry them)."""
    return {
        "broker_transport_options": {"confirm_publish": True},
        # At least once: a task is acked when it has run; one whose worker process died goes
        # back to the queue (a quorum queue's delivery limit catches a task that kills it).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # On a lost broker connection the broker gives the task out again: stop this run of
        # it rather than finish it a second time.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_prefetch_multiplier": prefetch_multiplier,
        "task_soft_time_limit": soft_time_limit,
        "task_time_limit": time_limit,
        "task_default_queue": queue,
        "task_default_exchange": exchange,
        "task_default_exchange_type": exchange_type,
        # The broker's binding uses the queue's name as its routing key.
        "task_default_routing_key": queue,
        # Celery declares the default queue with x-queue-type; it must match the broker's.
        "task_default_queue_type": queue_type,
        "control_exchange": control_exchange,
        "event_exchange": event_exchange,
        "event_queue_prefix": event_queue_prefix,
    } | ({"worker_detect_quorum_queues": True} if queue_type == "quorum" else {})


def celery_settings_for(app_queue: AppQueue = AppQueue(), tasks: Tasks = Tasks()) -> dict[str, Any]:
    """`celery_settings` from the validated models: the queue's names and the task limits."""
    q = app_queue
    return celery_settings(
        queue=q.name,
        exchange=q.exchange,
        exchange_type=q.exchange_type,
        queue_type=q.queue_type,
        control_exchange=q.control_exchange,
        event_exchange=q.event_exchange,
        event_queue_prefix=q.event_queue_prefix,
        soft_time_limit=tasks.soft_time_limit,
        time_limit=tasks.time_limit,
        prefetch_multiplier=tasks.prefetch_multiplier,
    )


# What a worker must run with for "at least once": checked in `up`'s health check.
REQUIRED_KEYS = (
    "task_acks_late",
    "task_reject_on_worker_lost",
    "worker_cancel_long_running_tasks_on_connection_loss",
    "worker_prefetch_multiplier",
    "task_soft_time_limit",
    "task_time_limit",
)


def required_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """{name or name.key: value} a worker's `inspect conf` must show: publisher confirms and
    the reliability settings."""
    required = {"broker_transport_options.confirm_publish": True}
    return required | {key: settings[key] for key in REQUIRED_KEYS}


def render_celery_config_module(settings: Mapping[str, Any]) -> str:
    """A Python module of `name = literal` lines (no secrets: the broker URL stays in the env file)."""
    lines = ["# Written by edd-infra: Celery settings that must match the broker it configured."]
    lines += [f"{name} = {value!r}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def celery_config_path(service: str) -> str:
    return f"{CONFIG_DIR}/{service}/{CONFIG_MODULE}.py"


def celery_config_cache(service: str) -> str:
    """Where Python puts the module's bytecode when someone who may write there (root, running
    a producer with the env file) imports it; removed with the service."""
    return f"{CONFIG_DIR}/{service}/__pycache__"


def celery_config_files(service: str, settings: Mapping[str, Any]) -> tuple[list[FileSpec], dict[str, str]]:
    """(the config module, environment entries that make Celery load it) for one service.

    Each service has its own directory, so removing one service never removes another's."""
    path = celery_config_path(service)
    env = {"CELERY_CONFIG_MODULE": CONFIG_MODULE, "PYTHONPATH": path.rsplit("/", 1)[0]}
    return [FileSpec(path, render_celery_config_module(settings), "0644")], env
