"""The `health` output's parsers and the checks that feed them, as plain functions and scripts."""

from __future__ import annotations

import http.server
import subprocess
import sys

import pytest

from edd_infra.health_report import broker_report, flower_report, stack_health, worker_report
from edd_infra.render import host_scripts
from tests.http_serving import serving

pytestmark = pytest.mark.unit

CLUSTER = (
    '{"running_nodes":["rabbit@n1","rabbit@n2"],"disk_nodes":["rabbit@n1","rabbit@n2","rabbit@n3"],"alarms":[],'
    '"versions":{"rabbit@n1":{"erlang_version":"27.3.4.1","rabbitmq_version":"4.0.5"},'
    '"rabbit@n2":{"erlang_version":"27.3.4.1","rabbitmq_version":"4.0.5"}}}'
)
QUEUES = (
    '[{"name":"edd","messages":12,"consumers":0},{"name":"w1@n1.celery.pidbox","messages":0,"consumers":1},'
    '{"name":"w2@n2.celery.pidbox","messages":0,"consumers":0},{"name":"edd.dead-letter","messages":1,"consumers":0}]'
)


def probe(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def test_a_cluster_with_a_node_down_and_no_consumer_is_reported_as_measured():
    report = broker_report(probe("checkedAt 2026-12-06T22:00:01Z", f"cluster {CLUSTER}", f"queues {QUEUES}"), "edd", 3)
    assert report == {
        "checkedAt": "2026-12-06T22:00:01Z",
        "version": "4.0.5",
        "nodesRunning": ["rabbit@n1", "rabbit@n2"],
        "nodesConfigured": 3,
        "queue": {"name": "edd", "consumers": 0, "messages": 12},
        "workersConnected": ["w1@n1"],
    }


def test_a_rolling_upgrade_shows_each_version_the_nodes_run():
    cluster = CLUSTER.replace('"rabbitmq_version":"4.0.5"}}', '"rabbitmq_version":"3.13.7"}}')
    assert broker_report(probe(f"cluster {cluster}"), "edd", 2)["version"] == "3.13.7+4.0.5"
    hostile = CLUSTER.replace('"rabbitmq_version":"4.0.5"}}', '"rabbitmq_version":"4; reboot"}}')
    assert broker_report(probe(f"cluster {hostile}"), "edd", 2)["version"] == "4.0.5"


@pytest.mark.parametrize(
    "stdout",
    [
        "",  # the probe printed nothing
        probe("checkedAt yesterday", "version $(reboot)", "cluster {not json", "queues 42"),
        probe("version 4.0.5", 'cluster {"running_nodes": "rabbit@n1"}', 'queues [{"name":"edd","consumers":-1}]'),
    ],
)
def test_what_the_probe_could_not_measure_is_none_not_a_guess(stdout):
    report = broker_report(stdout, "edd", 1)
    assert report["checkedAt"] is None and report["nodesRunning"] == [] and report["workersConnected"] == []
    assert report["queue"]["consumers"] is None and report["queue"]["messages"] is None
    assert report["version"] in (None, "4.0.5")


SECRET = "s3cr3t-password"


@pytest.mark.parametrize(
    "stdout, expected",
    [
        (
            f"amqp://edd_user:{SECRET}@h//edd\nedd-infra-health "
            '{"node": "w1@h", "waitedSeconds": 1, "checkedAt": "2026-12-06T22:00:00Z"}\n',
            {"answered": "w1@h", "waitedSeconds": 1, "checkedAt": "2026-12-06T22:00:00Z"},
        ),
        # Only the patterns are kept: a node or time that is not one is dropped, never passed on.
        (
            f'edd-infra-health {{"node": "w1@h {SECRET}", "waitedSeconds": 1}}\n',
            {"answered": None, "why": "no health check recorded (launchd, or not run since this version)"},
        ),
        (
            f'edd-infra-health {{"node": "w1@h", "waitedSeconds": "{SECRET}", "checkedAt": "{SECRET}"}}\n',
            {"answered": "w1@h", "waitedSeconds": None, "checkedAt": None},
        ),
        (
            "edd-infra-health not json\n",
            {"answered": None, "why": "no health check recorded (launchd, or not run since this version)"},
        ),
        (None, {"answered": None, "why": "no health check recorded (launchd, or not run since this version)"}),
    ],
)
def test_a_worker_report_keeps_only_its_answer(stdout, expected):
    assert worker_report(stdout) == expected


def test_a_flower_report_drops_a_body_that_is_not_a_plain_word():
    said = f'edd-infra-health {{"status": 200, "body": "<html>{SECRET}", "checkedAt": "2026-12-06T22:00:00Z"}}'
    assert flower_report(said) == {"healthcheck": 200, "body": None, "checkedAt": "2026-12-06T22:00:00Z"}


def test_an_external_broker_and_no_flower_say_so():
    health = stack_health(None, {"celery-w1": {"answered": "w1@h"}, "celery-w2": {"answered": None}}, None)
    assert health == {
        "broker": {"measured": False, "why": "external broker"},
        "workers": {"celery-w1": {"answered": "w1@h"}, "celery-w2": {"answered": None}},
        "workersAnswered": 1,
        "flower": "off",
    }


class Healthcheck(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # http.server's name
        ok = self.path == "/healthcheck"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"OK" if ok else b"no")

    def log_message(self, *args):
        pass


@pytest.fixture
def flower_on_loopback():
    with serving(Healthcheck) as url:
        yield url


def test_flowers_check_prints_what_its_healthcheck_answered(tmp_path, flower_on_loopback):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    check = host_scripts.http_report(virtualenv=str(tmp_path), url=f"{flower_on_loopback}healthcheck")
    result = subprocess.run(["sh", "-euc", check], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    report = flower_report(result.stdout)
    assert report["healthcheck"] == 200 and report["body"] == "OK" and report["checkedAt"]
    missing = host_scripts.http_report(virtualenv=str(tmp_path), url=f"{flower_on_loopback}nothing")
    assert subprocess.run(["sh", "-euc", missing], capture_output=True, timeout=30).returncode != 0
