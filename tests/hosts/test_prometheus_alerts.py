"""The alert rules in a real Prometheus: the no-consumer alert fires when the worker stops with
tasks queued, and resolves when it is back, with no task lost.

One hardened deployment (TLS, signing) on its own Debian 13 host, `edd-pm13`. Prometheus is
Debian's server from this machine, started by sandbox.prometheus in the host's network
namespace (so it reaches only the sandbox) with the config rendered from the `scrapeTargets`
output and the rules file read back from the host; scrape and evaluation every 5 s.
`EddQueueWithoutConsumers` keeps the rule's own `for:` (2 m; the model has no key for it).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import time
from datetime import datetime
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from edd_infra.render.alert_rules import RULES_PATH
from sandbox import prometheus
from sandbox.hosts import SUBNET
from tests.hosts.deployment import WORKER_UNIT, Producer, completed_tasks, deployment, print_figures

pytestmark = pytest.mark.hosts
HOST = "edd-pm13"
ALERT = "EddQueueWithoutConsumers"
TASKS = 20
FIGURES: dict[str, float] = {}
# Past the rule's `for:`, what may pass before the alert fires: RabbitMQ's stats interval (5 s),
# a scrape (5 s) and a rule evaluation (5 s), the publish, and a loaded 2-core machine.
SLACK = 60.0
MESSAGES = 'rabbitmq_detailed_queue_messages{vhost="/edd",queue="edd"}'


@pytest.fixture(scope="module")
def prom(request, plugins_ready, sandbox_hosts, tmp_path_factory):
    problem = prometheus.missing() or (
        None if shutil.which("promtool") else "missing: promtool (apt-get install prometheus)"
    )
    if problem:
        pytest.skip(f"sandbox Prometheus: {problem}")
    (host,) = sandbox_hosts(HOST, debian=13)
    with deployment(host, tmp_path_factory.mktemp("prom13"), prefix="pm", hardened=True) as d:
        d.targets = d.stack.stack.outputs()["scrapeTargets"].value
        d.rules_text = d.sh(f"cat {RULES_PATH}")
        started = time.monotonic()
        server = prometheus.start(host, d.targets, d.rules_text, ca_file=d.ca_file)
        try:
            FIGURES["Prometheus ready"] = time.monotonic() - started
            FIGURES["targets up and rules loaded"] = prometheus.wait_loaded(server, len(d.targets), d.rules_text)
            d.prometheus = server
            yield d
        finally:
            prometheus.stop(server)
    print_figures(request, "prometheus alerts", FIGURES)


def query(d, expr: str) -> list[dict]:
    return prometheus.api(d.prometheus, f"query?query={quote(expr)}")["result"]


def normalized(url: str) -> tuple:
    """A URL with its query as a sorted list: Prometheus writes `params` back in its own order."""
    parts = urlsplit(url)
    return parts.scheme, parts.netloc, parts.path, sorted(parse_qsl(parts.query))


def sandbox_or_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.strip("[]"))
    return ip.is_loopback or ip in ipaddress.ip_network(f"{SUBNET}.0.0/16")


def test_prometheus_scrapes_the_stack_from_the_host_network_only(prom):
    d = prom
    server = d.prometheus
    # The process is Prometheus, in the host's network namespace (not this machine's).
    assert open(f"/proc/{server.pid}/comm").read().strip() == "prometheus"
    assert os.readlink(f"/proc/{server.pid}/ns/net") == os.readlink(f"/proc/{d.host.leader_pid}/ns/net")
    active = prometheus.api(server, "targets?state=active")["activeTargets"]
    assert sorted(normalized(t["scrapeUrl"]) for t in active) == sorted(normalized(t["url"]) for t in d.targets)
    # What it listens on and talks to, as the host's network sees it.
    ss = subprocess.run(
        ["nsenter", "-t", str(d.host.leader_pid), "--net", "ss", "-tanpH"], capture_output=True, text=True, check=True
    ).stdout
    mine = [line.split() for line in ss.splitlines() if f"pid={server.pid}," in line]
    assert [f[3] for f in mine if f[0] == "LISTEN"] == [f"{d.host.address}:{prometheus.PORT}"]
    peers = [f[4].rsplit(":", 1)[0] for f in mine if f[0] == "ESTAB"]
    assert peers and all(sandbox_or_loopback(p) for p in peers), peers
    # The config as running passes promtool (it loads the rules file read back from the host).
    check = subprocess.run(
        ["promtool", "check", "config", f"{server.work_dir}/prometheus.yml"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_rule_is_loaded_and_none_fires_on_a_healthy_stack(prom):
    d = prom
    loaded = prometheus.loaded_rules(d.prometheus)
    assert sorted(loaded) == sorted(prometheus.rule_names(d.rules_text))
    assert all(r["health"] == "ok" for r in loaded.values()), {n: r.get("lastError") for n, r in loaded.items()}
    assert loaded[ALERT]["duration"] == 120  # the rule's `for: 2m`, as Prometheus holds it
    firing = {n: a for n, a in prometheus.active_alerts(d.prometheus).items() if a["state"] == "firing"}
    assert not firing, firing


def wait_alert(d, present: bool, timeout: float, seen: dict[str, float]) -> float:
    """Poll /api/v1/alerts until ALERT is firing (`present`) or gone; the monotonic time it was.
    `seen` gets the first time each alert was seen pending and firing."""
    deadline = time.monotonic() + timeout
    while True:
        alerts = prometheus.active_alerts(d.prometheus)
        now = time.monotonic()
        for name, alert in alerts.items():
            seen.setdefault(f"{name} {alert['state']}", now)
        if (alerts.get(ALERT, {}).get("state") == "firing") if present else ALERT not in alerts:
            return now
        assert now < deadline, (
            f"{ALERT} not {'firing' if present else 'resolved'} after {timeout:.0f} s: "
            f"{alerts}; {prometheus.log_tail(d.prometheus)}"
        )
        time.sleep(0.5)


def test_no_consumer_alert_fires_with_tasks_queued_and_resolves_after_restart(prom):
    d = prom
    consumers = 'rabbitmq_detailed_queue_consumers{vhost="/edd",queue="edd"}'
    assert query(d, f"{consumers} >= 1"), "the worker is not a consumer of edd in Prometheus before the stop"
    for_seconds = prometheus.loaded_rules(d.prometheus)[ALERT]["duration"]
    seen: dict[str, float] = {}
    stopped_wall, stopped = time.time(), time.monotonic()
    d.sh(f"systemctl stop {WORKER_UNIT}")
    try:
        producer = Producer(d, TASKS)
        ids = producer.all_ids(timeout=120)
        firing = wait_alert(d, True, for_seconds + SLACK + 30, seen)
        alert = prometheus.active_alerts(d.prometheus)[ALERT]
        queued = query(d, MESSAGES)
    finally:
        restarted = time.monotonic()
        d.sh(f"systemctl start {WORKER_UNIT}")
    resolved = wait_alert(d, False, 90, seen)
    active_at = datetime.fromisoformat(alert["activeAt"].replace("Z", "+00:00")).timestamp()
    FIGURES.update(
        {
            "rule's for:": for_seconds,
            "worker stopped -> alert pending (activeAt)": active_at - stopped_wall,
            "worker stopped -> alert firing": firing - stopped,
            "pending -> firing": firing - stopped - (active_at - stopped_wall),
            "worker started -> alert resolved": resolved - restarted,
        }
    )
    for name, when in sorted(seen.items(), key=lambda kv: kv[1]):
        if name != f"{ALERT} firing" and name.endswith("firing"):
            FIGURES[f"(also) {name} after stop"] = when - stopped
    # None lost: every published task ran (the worker's journal), and the queue is empty.
    deadline = time.monotonic() + 180
    while not (ids <= completed_tasks(d, producer.prefix) and query(d, f"{MESSAGES} == 0")):
        assert time.monotonic() < deadline, (
            f"{len(ids - completed_tasks(d, producer.prefix))} of {TASKS} tasks not run; queue {query(d, MESSAGES)}"
        )
        time.sleep(2)
    FIGURES[f"worker started -> {TASKS} queued tasks run"] = time.monotonic() - restarted

    assert alert["labels"]["queue"] == "edd" and alert["labels"]["vhost"] == "/edd"
    assert alert["labels"]["severity"] == "critical"
    # Held for the rule's `for:` after the condition began, and not much longer than it.
    assert firing - stopped >= for_seconds
    assert firing - stopped <= for_seconds + SLACK, f"fired {firing - stopped:.0f} s after the stop"
    # The queue as Prometheus saw it when the alert fired: every task published, none taken.
    assert [float(q["value"][1]) for q in queued] == [TASKS], queued
