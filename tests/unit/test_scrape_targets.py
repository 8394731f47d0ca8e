"""scrapeTargets: every RabbitMQ node's metrics and Flower's, where they listen, never a password."""

from edd_infra.program import metrics_nodes
from edd_infra.render.scrape_targets import detailed_path, scrape_targets
from edd_infra.settings import StackSettings
from tests.unit.samples import TLS_CLUSTER, sample_raw


def targets(**overrides):
    settings = StackSettings.model_validate(sample_raw(**overrides))
    return scrape_targets(settings, metrics_nodes(settings.broker))


def test_default_loopback_targets():
    assert targets() == [
        {
            "url": "http://127.0.0.1:15692/metrics",
            "what": "RabbitMQ rabbit@localhost: node metrics, alarms, totals",
            "basicAuth": False,
        },
        {
            "url": "http://127.0.0.1:15692/metrics/detailed?vhost=%2Fedd&family=queue_coarse_metrics"
            "&family=queue_consumer_count",
            "what": "RabbitMQ rabbit@localhost: the /edd vhost's queues (messages, ready, unacked, consumers)",
            "basicAuth": False,
        },
        {
            "url": "http://127.0.0.1:5555/metrics",
            "what": "Flower: Celery workers online, task events and runtimes",
            "basicAuth": False,
        },
    ]


def test_tls_cluster_targets_every_node_over_https():
    urls = [t["url"] for t in targets(**TLS_CLUSTER)]
    assert urls == [
        "https://10.0.0.2:15691/metrics",
        f"https://10.0.0.2:15691{detailed_path('/edd')}",
        "https://10.0.0.3:15691/metrics",
        f"https://10.0.0.3:15691{detailed_path('/edd')}",
        "http://[::1]:5555/flower/metrics",
    ]
    assert all(
        t.get("caFile") == "broker.tls.caFile"
        for t in targets(broker={"host": "queue", "tls": {"caFile": "ca.pem", "certFile": "server.pem"}})[:2]
    )


def test_external_broker_lists_flower_only():
    assert [t["url"] for t in targets(broker={"host": "queue", "install": "external"})] == [
        "http://127.0.0.1:5555/metrics"
    ]


def test_flower_over_https_is_scraped_over_https_with_the_ca_that_verifies_it():
    flower = {
        "host": "queue",
        "workingDirectory": "/opt/edd/code",
        "virtualenv": "/opt/edd/venv",
        "address": "10.0.0.2",
        "tls": {"certFile": "flower.pem"},
    }
    broker = {"host": "queue", "tls": {"caFile": "ca.pem", "certFile": "server.pem"}}
    assert targets(broker=broker, flower=flower)[-1] == {
        "url": "https://10.0.0.2:5555/metrics",
        "what": "Flower: Celery workers online, task events and runtimes",
        "basicAuth": False,
        "caFile": "broker.tls.caFile",
    }
    flower["tls"]["caFile"] = "flower-ca.pem"
    assert targets(broker=broker, flower=flower)[-1]["caFile"] == "flower.tls.caFile"
