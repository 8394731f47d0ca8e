"""prometheus.yml from scrapeTargets: jobs parsed back, and the file as promtool checks it.

`promtool check config` loads and checks the rule files the config names (Prometheus 2.42's
does not look at CA or password files); the tests write them in a temp dir.
"""

import shutil
import subprocess

import pytest
import yaml

from edd_infra.program import metrics_nodes
from edd_infra.render.alert_rules import render_alert_rules
from edd_infra.render.prometheus_config import BasicAuth, render_prometheus_config, scrape_jobs
from edd_infra.render.scrape_targets import scrape_targets
from edd_infra.settings import StackSettings
from tests.unit.samples import TLS_CLUSTER, sample_raw


def settings(**overrides) -> StackSettings:
    return StackSettings.model_validate(sample_raw(**overrides))


def targets(s: StackSettings) -> list[dict]:
    return scrape_targets(s, metrics_nodes(s.broker))


def test_default_targets_make_three_jobs_on_loopback():
    jobs = {j["job_name"]: j for j in scrape_jobs(targets(settings()))}
    assert list(jobs) == ["edd-rabbitmq", "edd-rabbitmq-detailed", "edd-flower"]
    assert jobs["edd-rabbitmq"] == {
        "job_name": "edd-rabbitmq",
        "scheme": "http",
        "metrics_path": "/metrics",
        "static_configs": [{"targets": ["127.0.0.1:15692"]}],
    }
    assert jobs["edd-rabbitmq-detailed"]["metrics_path"] == "/metrics/detailed"
    # The query as Prometheus sends it again: the vhost unquoted, both families in order.
    assert jobs["edd-rabbitmq-detailed"]["params"] == {
        "vhost": ["/edd"],
        "family": ["queue_coarse_metrics", "queue_consumer_count"],
    }
    assert jobs["edd-flower"]["static_configs"] == [{"targets": ["127.0.0.1:5555"]}]
    assert not any("tls_config" in j or "basic_auth" in j for j in jobs.values())


def test_tls_cluster_nodes_share_a_job_verified_by_the_ca():
    jobs = {
        j["job_name"]: j
        for j in scrape_jobs(
            targets(settings(**TLS_CLUSTER)), ca_files={"broker.tls.caFile": "/etc/prometheus/edd-ca.pem"}
        )
    }
    for name in ("edd-rabbitmq", "edd-rabbitmq-detailed"):
        assert jobs[name]["scheme"] == "https"
        assert jobs[name]["tls_config"] == {"ca_file": "/etc/prometheus/edd-ca.pem"}
        assert jobs[name]["static_configs"] == [{"targets": ["10.0.0.2:15691", "10.0.0.3:15691"]}]
    assert jobs["edd-flower"]["metrics_path"] == "/flower/metrics"
    assert jobs["edd-flower"]["static_configs"] == [{"targets": ["[::1]:5555"]}]


def test_a_target_that_needs_a_ca_or_login_not_given_is_refused():
    with pytest.raises(ValueError, match="broker.tls.caFile"):
        scrape_jobs(targets(settings(**TLS_CLUSTER)))
    login = [{"url": "http://127.0.0.1:5555/metrics", "what": "Flower: workers", "basicAuth": True}]
    with pytest.raises(ValueError, match="needs a login"):
        scrape_jobs(login)
    with pytest.raises(ValueError, match="no credentials"):
        scrape_jobs([{"url": "http://u:p@127.0.0.1:5555/metrics", "what": "Flower", "basicAuth": False}])


def test_basic_auth_goes_by_password_file_only():
    login = [
        {"url": "http://127.0.0.1:5555/metrics", "what": "Flower: workers", "basicAuth": True},
        {"url": "http://127.0.0.1:15692/metrics", "what": "RabbitMQ rabbit@x: node", "basicAuth": False},
    ]
    jobs = {j["job_name"]: j for j in scrape_jobs(login, basic_auth=BasicAuth("admin", "/run/flower.pw"))}
    assert jobs["edd-flower"]["basic_auth"] == {"username": "admin", "password_file": "/run/flower.pw"}
    assert "basic_auth" not in jobs["edd-rabbitmq"]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool missing: promtool (apt-get install prometheus)")
    return path


@pytest.mark.parametrize("shape", ["loopback", "tls-cluster"])
def test_promtool_checks_the_rendered_config(shape, tmp_path):
    tool = promtool()
    s = settings(**TLS_CLUSTER) if shape == "tls-cluster" else settings()
    (tmp_path / "rules.yml").write_text(render_alert_rules(s))
    (tmp_path / "ca.pem").write_text("")
    (tmp_path / "flower.pw").write_text("x")
    found = targets(s) + [{"url": "http://127.0.0.1:5556/metrics", "what": "Flower: behind a login", "basicAuth": True}]
    text = render_prometheus_config(
        found,
        [str(tmp_path / "rules.yml")],
        ca_files={"broker.tls.caFile": str(tmp_path / "ca.pem")},
        basic_auth=BasicAuth("admin", str(tmp_path / "flower.pw")),
        scrape_interval="5s",
        evaluation_interval="5s",
    )
    config = yaml.safe_load(text)
    assert config["global"] == {"scrape_interval": "5s", "scrape_timeout": "5s", "evaluation_interval": "5s"}
    assert config["rule_files"] == [str(tmp_path / "rules.yml")]
    names = [j["job_name"] for j in config["scrape_configs"]]
    assert len(names) == len(set(names)) == 4  # the login's Flower job named apart from the other
    (tmp_path / "prometheus.yml").write_text(text)
    check = subprocess.run([tool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout + check.stderr
