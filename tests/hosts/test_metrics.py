"""Metrics and alert rules on a real deployment: what a site's Prometheus would scrape.

One hardened deployment (TLS, signing) per Debian release on its own sandbox host (`edd-met13`,
`edd-met12`), shared by the tests in file order. Every URL comes from the `scrapeTargets` output;
the rules file is read back from the broker host, and every metric name it uses must be served
by those endpoints, so the rules stay tied to what RabbitMQ and Flower really export.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import yaml

from edd_infra.render.alert_rules import RULES_PATH, metric_names
from sandbox.deploy import send_task
from sandbox.image import APP_TARGET, VENV
from tests.hosts.deployment import WORKER_UNIT, WORKER_ENV, deployment, print_figures, secret_forms

pytestmark = pytest.mark.hosts
HOSTS = {13: "edd-met13", 12: "edd-met12"}
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module", params=sorted(HOSTS, reverse=True), ids=lambda debian: f"debian{debian}")
def deployed(request, plugins_ready, sandbox_hosts, tmp_path_factory):
    (host,) = sandbox_hosts(HOSTS[request.param], debian=request.param)
    with deployment(host, tmp_path_factory.mktemp(f"metrics{request.param}"), prefix="met", hardened=True) as d:
        d.targets = d.stack.stack.outputs()["scrapeTargets"].value
        FIGURES[f"fresh up, Debian {request.param}"] = d.fresh_up_seconds
        # A task through the worker, so Flower has task events to count.
        assert send_task(host) == "5"
        yield d
    print_figures(request, "metrics", FIGURES)


def fetch(d, url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    """GET `url` from this machine (as a site's Prometheus would), TLS checked against the stack's CA."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    context = ssl.create_default_context(cafile=d.ca_file) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=15, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value of every sample in a Prometheus text exposition."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def names(text: str) -> set[str]:
    return {re.split(r"[{ ]", key, maxsplit=1)[0] for key in samples(text)}


def target(d, what: str) -> dict:
    (found,) = [t for t in d.targets if what in t["url"]]
    return found


def queue_sample(d, metric: str, queue: str = "edd") -> float | None:
    _, text = fetch(d, target(d, "/metrics/detailed")["url"])
    return samples(text).get(f'{metric}{{vhost="/edd",queue="{queue}"}}')


def wait_for(probe, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(1)
    return value


def test_scrape_targets_name_every_endpoint_and_no_secret(deployed):
    d = deployed
    address = d.host.address
    assert [t["url"].split("?")[0] for t in d.targets] == [
        f"https://{address}:15691/metrics",
        f"https://{address}:15691/metrics/detailed",
        f"https://{address}:5555/metrics",
    ]
    assert not any(form in json.dumps(d.targets) for form in secret_forms(d.secrets))
    assert d.stack.stack.outputs()["alertRules"].value == {"host": d.host.name, "path": RULES_PATH}


def test_rabbitmq_metrics_answer_on_the_configured_address_only(deployed):
    d = deployed
    listening = set(d.sh("ss -ltnH | awk '{print $4}'").split())
    assert {a for a in listening if a.endswith((":15691", ":15692"))} == {f"{d.host.address}:15691", "127.0.0.1:15692"}
    status, text = fetch(d, f"https://{d.host.address}:15691/metrics")  # verified against the stack's CA
    assert status == 200 and "rabbitmq_identity_info" in text
    with pytest.raises(urllib.error.URLError):  # no plain listener outside loopback
        fetch(d, f"http://{d.host.address}:15692/metrics")
    # On the host, the plain listener serves loopback (where the management API's plain one is too).
    assert "rabbitmq_identity_info" in d.sh("curl -sf http://127.0.0.1:15692/metrics")


def test_edd_queue_depth_and_consumers_per_object(deployed):
    d = deployed
    assert wait_for(lambda: queue_sample(d, "rabbitmq_detailed_queue_consumers"), 30, "the worker as a consumer") >= 1
    d.sh(f"systemctl stop {WORKER_UNIT}")
    try:
        code = "from edd import add\nfor i in range(3): add.apply_async((i, 1), ignore_result=True)"
        d.sh(f"set -a; . {WORKER_ENV}; set +a; cd {APP_TARGET} && {VENV}/bin/python -c {shlex.quote(code)}")
        # The EddQueueWithoutConsumers condition, as RabbitMQ reports it (stats every 5 s).
        started = time.monotonic()
        wait_for(
            lambda: (
                queue_sample(d, "rabbitmq_detailed_queue_messages") == 3
                and queue_sample(d, "rabbitmq_detailed_queue_consumers") == 0
            ),
            60,
            "3 tasks and no consumer",
        )
        FIGURES[f"queue depth seen in metrics, {d.host.name}"] = time.monotonic() - started
        assert queue_sample(d, "rabbitmq_detailed_queue_messages_ready") == 3
    finally:
        d.sh(f"systemctl start {WORKER_UNIT}")
    wait_for(
        lambda: (
            queue_sample(d, "rabbitmq_detailed_queue_messages") == 0
            and (queue_sample(d, "rabbitmq_detailed_queue_consumers") or 0) >= 1
        ),
        90,
        "the queue drained",
    )
    assert queue_sample(d, "rabbitmq_detailed_queue_messages", "edd.dead-letter") == 0


def test_flower_metrics_serve_worker_state_and_the_ui_needs_its_login(deployed):
    d = deployed
    flower = target(d, ":5555/")
    login = ("admin", d.secrets["flowerUiPassword"])
    status, text = fetch(d, flower["url"], auth=login)
    assert status == 200
    assert samples(text).get(f'flower_worker_online{{worker="edd-worker-1@{d.host.name}"}}') == 1.0
    assert "flower_events_total" in names(text)
    # What the target says about a login is what Flower does (2.2 serves /metrics without one).
    assert (fetch(d, flower["url"])[0] == 401) is flower["basicAuth"]
    assert fetch(d, flower["url"].removesuffix("metrics"))[0] == 401
    assert fetch(d, flower["url"].removesuffix("metrics"), auth=login)[0] == 200


def test_every_metric_the_rules_use_is_served(deployed):
    d = deployed
    assert d.sh(f"stat -c '%a %U %G' {RULES_PATH}").split() == ["644", "root", "root"]
    text = d.sh(f"cat {RULES_PATH}")
    rules = yaml.safe_load(text)["groups"][0]["rules"]
    used = metric_names(r["expr"] for r in rules)
    served = set()
    for t in d.targets:
        auth = ("admin", d.secrets["flowerUiPassword"]) if t["basicAuth"] else None
        status, body = fetch(d, t["url"], auth=auth)
        assert status == 200, t["url"]
        served |= names(body)
    assert used and used <= served, f"used by the rules, served by no target: {sorted(used - served)}"
    promtool = shutil.which("promtool")
    if promtool:  # the file as written on the host, as a site's Prometheus loads it
        check = subprocess.run([promtool, "check", "rules", "/dev/stdin"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_a_second_up_changes_nothing(deployed):
    result, _ = deployed.up()
    assert set(result.summary.resource_changes) == {"same"}, result.summary.resource_changes
