"""Alert rules: thresholds from the model, and each rule fired and held back by promtool itself.

`promtool check rules` and `promtool test rules` run on the rendered file (Debian's `prometheus`
package ships promtool). Each rule has a case that fires and one that does not; a rule without
both fails `test_every_rule_has_a_firing_and_a_quiet_case`.
"""

import shutil
import subprocess

import pytest
import yaml

from edd_infra.render.alert_rules import RULES_PATH, alert_rules, metric_names, render_alert_rules
from edd_infra.settings import StackSettings
from tests.unit.samples import sample_raw

RABBIT = {"instance": "queue:15692", "job": "rabbitmq"}
EDD = {**RABBIT, "vhost": "/edd", "queue": "edd"}
FLOWER = {"instance": "queue:5555", "job": "flower"}


def single() -> StackSettings:
    return StackSettings.model_validate(sample_raw())


def cluster() -> StackSettings:
    raw = sample_raw()
    raw["broker"] = {
        "host": "queue",
        "clusterNodes": [{"host": "n2", "address": "10.0.0.3"}, {"host": "n3", "address": "10.0.0.4"}],
    }
    return StackSettings.model_validate(raw)


def series(name: str, labels: dict, values: str) -> dict:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def fires(alert: str, at: str, *label_sets: dict) -> dict:
    """`alert` is firing at `at` once per label set (the alert's own labels come from the rule)."""
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": dict(labels)} for labels in label_sets]}


def quiet(alert: str, at: str) -> dict:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


# (input series, expectations): each a promtool test group on a 1 m interval.
CASES = {
    "single": [
        # The node answers, then stops answering: absent for the 5 m lookback, then 1 m `for`.
        (
            [
                series("rabbitmq_identity_info", {**RABBIT, "rabbitmq_node": "rabbit@localhost"}, "1x9"),
                # Scraped twice (/metrics and /metrics/detailed): still one node.
                series(
                    "rabbitmq_identity_info",
                    {**RABBIT, "job": "rabbitmq-detailed", "rabbitmq_node": "rabbit@localhost"},
                    "1x9",
                ),
            ],
            [quiet("RabbitMQDown", "5m"), fires("RabbitMQDown", "20m", {})],
        ),
        (
            [
                series("rabbitmq_alarms_memory_used_watermark", RABBIT, "0 0 1 1"),
                series("rabbitmq_alarms_free_disk_space_watermark", RABBIT, "0 0 0 1"),
            ],
            [
                quiet("RabbitMQMemoryAlarm", "1m"),
                fires("RabbitMQMemoryAlarm", "2m", RABBIT),
                quiet("RabbitMQDiskAlarm", "2m"),
                fires("RabbitMQDiskAlarm", "3m", RABBIT),
            ],
        ),
        # Node a loses 50 MB a minute (gone in under 4 h), node b stays flat.
        (
            [
                series("rabbitmq_disk_space_available_bytes", {**RABBIT, "instance": "a"}, "6000000000-50000000x120"),
                series("rabbitmq_disk_space_available_limit_bytes", {**RABBIT, "instance": "a"}, "1000000000x120"),
                series("rabbitmq_disk_space_available_bytes", {**RABBIT, "instance": "b"}, "6000000000x120"),
                series("rabbitmq_disk_space_available_limit_bytes", {**RABBIT, "instance": "b"}, "1000000000x120"),
            ],
            [quiet("RabbitMQDiskFillingUp", "20m"), fires("RabbitMQDiskFillingUp", "90m", {**RABBIT, "instance": "a"})],
        ),
        (
            [
                series("rabbitmq_process_open_fds", {**RABBIT, "instance": "a"}, "900x10"),
                series("rabbitmq_process_max_fds", {**RABBIT, "instance": "a"}, "1000x10"),
                series("rabbitmq_process_open_fds", {**RABBIT, "instance": "b"}, "700x10"),
                series("rabbitmq_process_max_fds", {**RABBIT, "instance": "b"}, "1000x10"),
            ],
            [
                quiet("RabbitMQFileDescriptorsNearLimit", "3m"),
                fires("RabbitMQFileDescriptorsNearLimit", "10m", {**RABBIT, "instance": "a"}),
            ],
        ),
        # edd: no consumer with 5 tasks; another queue alike, and edd empty elsewhere, stay quiet.
        (
            [
                series("rabbitmq_detailed_queue_consumers", EDD, "0x10"),
                series("rabbitmq_detailed_queue_messages", EDD, "5x10"),
                series("rabbitmq_detailed_queue_consumers", {**EDD, "queue": "other"}, "0x10"),
                series("rabbitmq_detailed_queue_messages", {**EDD, "queue": "other"}, "5x10"),
                series("rabbitmq_detailed_queue_consumers", {**EDD, "instance": "b"}, "0x10"),
                series("rabbitmq_detailed_queue_messages", {**EDD, "instance": "b"}, "0x10"),
            ],
            [quiet("EddQueueWithoutConsumers", "1m"), fires("EddQueueWithoutConsumers", "5m", EDD)],
        ),
        # Ready tasks grow by one a minute on a; a steady backlog on b never alerts.
        (
            [
                series("rabbitmq_detailed_queue_messages_ready", EDD, "1+1x120"),
                series("rabbitmq_detailed_queue_messages_ready", {**EDD, "instance": "b"}, "50x120"),
            ],
            [quiet("EddQueueGrowing", "40m"), fires("EddQueueGrowing", "80m", EDD)],
        ),
        (
            [series("rabbitmq_global_messages_redelivered_total", {**RABBIT, "protocol": "amqp091"}, "0+3x60")],
            [quiet("EddTasksRedeliveredInALoop", "20m"), fires("EddTasksRedeliveredInALoop", "40m", {})],
        ),
        (
            [series("rabbitmq_global_messages_redelivered_total", {**RABBIT, "protocol": "amqp091"}, "0+1x60")],
            [quiet("EddTasksRedeliveredInALoop", "40m")],
        ),
        (
            [
                series("rabbitmq_detailed_queue_messages", {**EDD, "queue": "edd.dead-letter"}, "0x10 1x10"),
                series("rabbitmq_detailed_queue_messages", EDD, "0x10 1x10"),
            ],
            [
                quiet("EddTasksDeadLettered", "9m"),
                fires("EddTasksDeadLettered", "12m", {**EDD, "queue": "edd.dead-letter"}),
            ],
        ),
        # One worker (as configured) says offline at 4 m.
        (
            [series("flower_worker_online", {**FLOWER, "worker": "edd-worker-1@queue"}, "1x3 0x10")],
            [
                quiet("CeleryWorkerOffline", "3m"),
                quiet("CeleryWorkersMissing", "5m"),
                fires("CeleryWorkerOffline", "8m", {**FLOWER, "worker": "edd-worker-1@queue"}),
                fires("CeleryWorkersMissing", "12m", {}),
            ],
        ),
        (
            [series("flower_worker_online", {**FLOWER, "worker": "edd-worker-1@queue"}, "1x20")],
            [quiet("CeleryWorkersMissing", "20m"), quiet("CeleryWorkerOffline", "20m")],
        ),
        # 2 of 12 tasks a minute fail (over 0.1), then 1 of 21.
        (
            [
                series(
                    "flower_events_total",
                    {**FLOWER, "type": "task-succeeded", "worker": "w", "task": "edd.add"},
                    "0+10x30",
                ),
                series(
                    "flower_events_total", {**FLOWER, "type": "task-failed", "worker": "w", "task": "edd.add"}, "0+2x30"
                ),
                series(
                    "flower_events_total",
                    {**FLOWER, "type": "task-received", "worker": "w", "task": "edd.add"},
                    "0+12x30",
                ),
            ],
            [quiet("CeleryTasksFailing", "3m"), fires("CeleryTasksFailing", "20m", {})],
        ),
        (
            [
                series(
                    "flower_events_total",
                    {**FLOWER, "type": "task-succeeded", "worker": "w", "task": "edd.add"},
                    "0+20x30",
                ),
                series(
                    "flower_events_total", {**FLOWER, "type": "task-failed", "worker": "w", "task": "edd.add"}, "0+1x30"
                ),
            ],
            [quiet("CeleryTasksFailing", "20m")],
        ),
    ],
    "cluster": [
        # Three nodes; n3 stops at 10 m, n2 at 30 m.
        (
            [
                series("rabbitmq_identity_info", {**RABBIT, "rabbitmq_node": "rabbit@10.0.0.2"}, "1x60"),
                series(
                    "rabbitmq_identity_info", {**RABBIT, "instance": "n2", "rabbitmq_node": "rabbit@10.0.0.3"}, "1x30"
                ),
                series(
                    "rabbitmq_identity_info", {**RABBIT, "instance": "n3", "rabbitmq_node": "rabbit@10.0.0.4"}, "1x10"
                ),
            ],
            [
                quiet("RabbitMQNodeDown", "5m"),
                quiet("RabbitMQClusterWithoutMajority", "5m"),
                fires("RabbitMQNodeDown", "20m", {}),
                quiet("RabbitMQClusterWithoutMajority", "20m"),
                fires("RabbitMQNodeDown", "45m", {}),
                fires("RabbitMQClusterWithoutMajority", "45m", {}),
            ],
        ),
    ],
}
SETTINGS = {"single": single, "cluster": cluster}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool missing: promtool (apt-get install prometheus)")
    return path


def with_rule_labels(settings: StackSettings, groups: list) -> list:
    """promtool compares whole alerts: add each rule's severity and annotations to its expectations."""
    rules = {r.name: r for r in alert_rules(settings)}
    tests = []
    for inputs, expectations in groups:
        for e in expectations:
            rule = rules[e["alertname"]]
            for alert in e["exp_alerts"]:
                alert["exp_labels"]["severity"] = rule.severity
                alert["exp_annotations"] = {"summary": rule.summary, "threshold": rule.source}
        tests.append({"interval": "1m", "input_series": inputs, "alert_rule_test": expectations})
    return tests


@pytest.mark.parametrize("shape", sorted(CASES))
def test_promtool_checks_and_tests_the_rendered_rules(shape, tmp_path):
    tool = promtool()
    settings = SETTINGS[shape]()
    (tmp_path / "rules.yml").write_text(render_alert_rules(settings))
    check = subprocess.run([tool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    spec = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": with_rule_labels(settings, CASES[shape])}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run([tool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_firing_and_a_quiet_case():
    for shape, groups in CASES.items():
        names = {r.name for r in alert_rules(SETTINGS[shape]())}
        expectations = [e for _, es in groups for e in es]
        firing = {e["alertname"] for e in expectations if e["exp_alerts"]}
        held = {e["alertname"] for e in expectations if not e["exp_alerts"]}
        if shape == "cluster":  # the cluster file's other rules are the single node's, tested there
            names = {n for n in names if n.startswith("RabbitMQNode") or "Majority" in n}
        assert names <= firing, f"{shape}: rules with no firing case: {sorted(names - firing)}"
        assert names <= held, f"{shape}: rules with no quiet case: {sorted(names - held)}"


def by_name(settings: StackSettings) -> dict:
    return {r.name: r for r in alert_rules(settings)}


def test_thresholds_follow_the_model():
    raw = sample_raw(
        tasks={"softTimeLimit": 600, "timeLimit": 900},
        appQueue={"deliveryLimit": 5, "deadLetter": "edd.poison"},
        alerts={"taskFailureRatio": 0.25, "diskForecastHours": 12},
        broker={"host": "queue", "memoryHighWatermark": 0.6},
    )
    rules = by_name(StackSettings.model_validate(raw))
    assert rules["EddQueueGrowing"].for_ == "15m"  # tasks.timeLimit 900 s
    assert rules["EddTasksRedeliveredInALoop"].expr.endswith("> 5")
    assert 'queue="edd.poison"' in rules["EddTasksDeadLettered"].expr
    assert rules["CeleryTasksFailing"].expr.endswith("> 0.25")
    assert ", 43200)" in rules["RabbitMQDiskFillingUp"].expr
    assert "0.6" in rules["RabbitMQMemoryAlarm"].summary
    raw["workers"] = raw["workers"] * 1 + [dict(raw["workers"][0], name="edd-worker-2")]
    assert by_name(StackSettings.model_validate(raw))["CeleryWorkersMissing"].expr.endswith("< 2")


def test_cluster_majority_and_no_flower_rules_without_flower():
    rules = by_name(cluster())
    assert rules["RabbitMQNodeDown"].expr.endswith("< 3")
    assert rules["RabbitMQClusterWithoutMajority"].expr.endswith("< 2")
    assert "RabbitMQDown" not in rules
    raw = sample_raw()
    raw["flower"] = dict(raw["flower"], enabled=False)
    assert not [n for n in by_name(StackSettings.model_validate(raw)) if n.startswith("Celery")]


def test_rules_file_shape_and_the_metrics_it_reads():
    text = render_alert_rules(single())
    assert text.startswith("# Written by edd-infra")
    (group,) = yaml.safe_load(text)["groups"]
    assert group["name"] == "edd-infra" and len(group["rules"]) == 12
    assert RULES_PATH == "/etc/edd-infra/prometheus/edd-infra.rules.yml"
    assert metric_names(r.expr for r in alert_rules(single())) == {
        "rabbitmq_identity_info",
        "rabbitmq_alarms_memory_used_watermark",
        "rabbitmq_alarms_free_disk_space_watermark",
        "rabbitmq_disk_space_available_bytes",
        "rabbitmq_disk_space_available_limit_bytes",
        "rabbitmq_process_open_fds",
        "rabbitmq_process_max_fds",
        "rabbitmq_detailed_queue_consumers",
        "rabbitmq_detailed_queue_messages",
        "rabbitmq_detailed_queue_messages_ready",
        "rabbitmq_global_messages_redelivered_total",
        "flower_worker_online",
        "flower_events_total",
    }


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_the_broker_script_that_writes_the_rules_passes_shellcheck(tmp_path):
    from edd_infra.components.rabbit_broker import broker_files
    from edd_infra.render import host_scripts

    settings = single()
    script = host_scripts.broker_install(
        files=broker_files(settings.broker, ["guest"]),
        package_version=None,
        start_timeout=60,
        site_files=[host_scripts.FileSpec(RULES_PATH, render_alert_rules(settings))],
        memory_high_watermark=0.4,
    )
    assert f'put "$tmp" 0644 root root {RULES_PATH}' in script
    (tmp_path / "s.sh").write_text(script)
    result = subprocess.run(["shellcheck", "-s", "sh", str(tmp_path / "s.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
