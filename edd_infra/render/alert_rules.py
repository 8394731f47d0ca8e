"""Prometheus alert rules for a site's Prometheus, from the validated model.

The rules read what `rabbitmq_prometheus` (node metrics on `/metrics`, the vhost's queues on
`/metrics/detailed`, see render.scrape_targets) and Flower's `/metrics` export, by the names
RabbitMQ 3.10 / 4.0 and Flower 2.2 serve (checked against live endpoints by the hosts tier).
Each threshold comes from the setting that makes it true (named in the rule's `source`).
They count every RabbitMQ node and Flower the Prometheus scrapes: load them where it scrapes
this stack's only (or one rule group per stack, scoped by the site's own labels).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import yaml

from ..settings import StackSettings

RULES_PATH = "/etc/edd-infra/prometheus/edd-infra.rules.yml"
GROUP = "edd-infra"
# The metric families /metrics/detailed serves for the vhost's queues (on 3.10 and 4.0).
DETAILED_FAMILIES = ("queue_coarse_metrics", "queue_consumer_count")


@dataclass(frozen=True)
class Rule:
    """One alert: PromQL, how long it must hold, and where its threshold comes from."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    source: str


def _selector(vhost: str, queue: str) -> str:
    # Names are validated to [A-Za-z0-9_./-]: nothing to escape in a PromQL string.
    return f'{{vhost="{vhost}",queue="{queue}"}}'


def _minutes(seconds: int) -> str:
    return f"{max(1, -(-seconds // 60))}m"


def _node_rules(settings: StackSettings) -> list[Rule]:
    nodes = 1 + len(settings.broker.cluster_nodes)
    # Each node, scraped, reports itself once (per endpoint): count distinct node names.
    up = "(count(count by (rabbitmq_node) (rabbitmq_identity_info)) or vector(0))"
    if nodes == 1:
        return [
            Rule(
                "RabbitMQDown",
                f"{up} < 1",
                "1m",
                "critical",
                "The RabbitMQ node does not answer Prometheus: no task is queued or delivered",
                "one node (no broker.clusterNodes)",
            )
        ]
    majority = nodes // 2 + 1
    return [
        Rule(
            "RabbitMQNodeDown",
            f"{up} < {nodes}",
            "2m",
            "warning",
            f"Fewer than {nodes} RabbitMQ nodes answer Prometheus",
            f"{nodes} nodes: broker.host plus {nodes - 1} broker.clusterNodes",
        ),
        Rule(
            "RabbitMQClusterWithoutMajority",
            f"{up} < {majority}",
            "1m",
            "critical",
            f"Fewer than {majority} of {nodes} RabbitMQ nodes answer: the rest pause (pause_minority) "
            "and the quorum queue is unavailable",
            f"majority of {nodes} nodes (broker.clusterNodes + 1)",
        ),
    ]


def _resource_rules(settings: StackSettings) -> list[Rule]:
    watermark = settings.broker.memory_high_watermark
    hours = settings.alerts.disk_forecast_hours
    return [
        Rule(
            "RabbitMQMemoryAlarm",
            "rabbitmq_alarms_memory_used_watermark > 0",
            "0m",
            "critical",
            f"RabbitMQ uses {watermark:g} of the host's memory and blocks every publisher",
            f"broker.memoryHighWatermark ({watermark:g}, vm_memory_high_watermark.relative)",
        ),
        Rule(
            "RabbitMQDiskAlarm",
            "rabbitmq_alarms_free_disk_space_watermark > 0",
            "0m",
            "critical",
            "Free disk is below RabbitMQ's limit: it blocks every publisher",
            f"broker.memoryHighWatermark ({watermark:g} x memory, disk_free_limit.relative)",
        ),
        Rule(
            "RabbitMQDiskFillingUp",
            f"predict_linear(rabbitmq_disk_space_available_bytes[1h], {hours * 3600}) "
            "< rabbitmq_disk_space_available_limit_bytes",
            "30m",
            "warning",
            f"At the last hour's pace, free disk reaches RabbitMQ's limit within {hours} h",
            f"alerts.diskForecastHours ({hours}); the limit from broker.memoryHighWatermark",
        ),
        Rule(
            "RabbitMQFileDescriptorsNearLimit",
            "rabbitmq_process_open_fds / rabbitmq_process_max_fds > 0.8",
            "5m",
            "warning",
            "RabbitMQ uses over 80 % of its file descriptors; at the limit it refuses connections",
            "fixed 0.8 (the RabbitMQ cluster operator's rule)",
        ),
    ]


def _queue_rules(settings: StackSettings) -> list[Rule]:
    q, vhost = settings.app_queue, settings.vhost
    app, dead = _selector(vhost, q.name), _selector(vhost, q.dead_letter)
    limit, hard = q.delivery_limit, settings.tasks.time_limit
    return [
        Rule(
            "EddQueueWithoutConsumers",
            f"rabbitmq_detailed_queue_consumers{app} == 0 and rabbitmq_detailed_queue_messages{app} > 0",
            "2m",
            "critical",
            f"Queue {q.name} holds tasks and no worker consumes it",
            "fixed: any message with no consumer for 2 m",
        ),
        Rule(
            "EddQueueGrowing",
            f"deriv(rabbitmq_detailed_queue_messages_ready{app}[10m]) > 0 "
            f"and rabbitmq_detailed_queue_messages_ready{app} > 0",
            _minutes(hard),
            "warning",
            f"Queue {q.name} has kept growing for longer than a task may run: the workers are not keeping up",
            f"tasks.timeLimit ({hard} s): a backlog may grow that long while every worker runs its longest task",
        ),
        Rule(
            "EddTasksRedeliveredInALoop",
            f"sum(increase(rabbitmq_global_messages_redelivered_total[15m])) > {limit}",
            "15m",
            "warning",
            f"More than {limit} redeliveries per 15 min for 15 min: a task keeps failing its worker "
            "(a classic queue has no delivery limit)",
            f"appQueue.deliveryLimit ({limit}): more redeliveries than one task may have",
        ),
        Rule(
            "EddTasksDeadLettered",
            f"delta(rabbitmq_detailed_queue_messages{dead}[15m]) > 0",
            "0m",
            "warning",
            f"Tasks went to {q.dead_letter} (past the delivery limit, or rejected): a person should read them",
            f"appQueue.deadLetter ({q.dead_letter}) gaining messages",
        ),
    ]


def _flower_rules(settings: StackSettings) -> list[Rule]:
    if not settings.flower.enabled:
        return []
    workers, ratio = len(settings.workers), settings.alerts.task_failure_ratio
    events = 'sum(rate(flower_events_total{{type=~"{}"}}[15m]))'
    return [
        Rule(
            "CeleryWorkerOffline",
            "flower_worker_online == 0",
            "2m",
            "warning",
            "A Celery worker said it went offline (Flower)",
            "fixed: offline for 2 m",
        ),
        Rule(
            "CeleryWorkersMissing",
            f"(count(flower_worker_online == 1) or vector(0)) < {workers}",
            "5m",
            "critical",
            f"Flower sees fewer than {workers} Celery workers online",
            f"{workers} workers (workers[])",
        ),
        Rule(
            "CeleryTasksFailing",
            f"{events.format('task-failed')} / {events.format('task-succeeded|task-failed')} > {ratio:g}",
            "5m",
            "warning",
            f"Over {ratio:g} of the tasks finished in 15 min failed (Flower)",
            f"alerts.taskFailureRatio ({ratio:g})",
        ),
    ]


def alert_rules(settings: StackSettings) -> list[Rule]:
    """Every alert for this stack, in the file's order."""
    return _node_rules(settings) + _resource_rules(settings) + _queue_rules(settings) + _flower_rules(settings)


def render_alert_rules(settings: StackSettings) -> str:
    """The rules file (Prometheus 2.x rule file format), one group."""
    rules = [
        {
            "alert": r.name,
            "expr": r.expr,
            **({"for": r.for_} if r.for_ != "0m" else {}),
            "labels": {"severity": r.severity},
            "annotations": {"summary": r.summary, "threshold": r.source},
        }
        for r in alert_rules(settings)
    ]
    header = "# Written by edd-infra from the stack's settings; changes here are overwritten by the next `pulumi up`.\n"
    return header + yaml.safe_dump(
        {"groups": [{"name": GROUP, "rules": rules}]}, sort_keys=False, width=1000, allow_unicode=True
    )


def metric_names(exprs: Iterable[str]) -> set[str]:
    """The exported metric names PromQL expressions read (to check rules against live endpoints)."""
    # Label names only follow `by (`: drop those lists first.
    exprs = [re.sub(r"\b(by|without) \([^)]*\)", "", e) for e in exprs]
    return {m for e in exprs for m in re.findall(r"\b((?:rabbitmq|flower)_[a-z_]+)\b", e)}
