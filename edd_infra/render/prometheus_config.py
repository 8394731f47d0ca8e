"""A prometheus.yml that scrapes a stack's `scrapeTargets` and loads its alert rules.

It lives beside render.scrape_targets (not in sandbox/) because it reads only that output's
shape: a site can run it on the output to get the scrape jobs, and a change of the targets'
shape breaks its unit tests here first. The sandbox's Prometheus (sandbox.prometheus) uses it.

Targets that differ only by address become one job (a cluster's nodes). What a target needs is
written as files, never inline: its CA as `tls_config.ca_file` (the path on the machine that
runs Prometheus), basic auth as `basic_auth.password_file`, so no secret is in the config or on
any command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import yaml

# Where a target names its CA (`"caFile": "broker.tls.caFile"`, the config key that holds it).
CA_KEY = "caFile"


@dataclass(frozen=True)
class BasicAuth:
    """A login for targets that say `basicAuth: true`: the password stays in its file."""

    username: str
    password_file: str


def _job_name(target: dict, path: str) -> str:
    """`edd-rabbitmq`, `edd-rabbitmq-detailed`, `edd-flower`: the product, then what the path adds."""
    product = target["what"].split()[0].rstrip(":").lower()
    leaf = path.rstrip("/").rsplit("/", 1)[-1]
    return f"edd-{product}" if leaf == "metrics" else f"edd-{product}-{leaf}"


def scrape_jobs(
    targets: list[dict], ca_files: dict[str, str] | None = None, basic_auth: BasicAuth | None = None
) -> list[dict]:
    """One scrape job per (product, scheme, path, query, login): the addresses are its targets.

    `ca_files` maps what a target names in `caFile` (a config key, e.g. `broker.tls.caFile`) to
    the CA file's path where Prometheus runs. A target that needs a CA or a login that is not
    given raises ValueError: a config that cannot scrape it would only show `up == 0` later.
    """
    ca_files = ca_files or {}
    jobs: dict[tuple, dict] = {}
    for target in targets:
        url = urlsplit(target["url"])
        if url.scheme not in ("http", "https") or not url.netloc or url.username or url.password:
            raise ValueError(f"not a scrape URL (http or https, no credentials): {target['url']!r}")
        path = url.path or "/metrics"
        params = parse_qsl(url.query, keep_blank_values=True)
        job = {"job_name": _job_name(target, path), "scheme": url.scheme, "metrics_path": path}
        if params:
            grouped: dict[str, list[str]] = {}
            for key, value in params:
                grouped.setdefault(key, []).append(value)
            job["params"] = grouped
        if CA_KEY in target:
            ca = target[CA_KEY]
            if ca not in ca_files:
                raise ValueError(f"{target['url']}: needs the CA named by {ca!r}; pass its path in ca_files")
            job["tls_config"] = {"ca_file": ca_files[ca]}
        if target.get("basicAuth"):
            if basic_auth is None:
                raise ValueError(f"{target['url']}: needs a login; pass basic_auth (username, password_file)")
            job["basic_auth"] = {"username": basic_auth.username, "password_file": basic_auth.password_file}
        key = tuple(sorted((k, repr(v)) for k, v in job.items()))
        jobs.setdefault(key, {**job, "static_configs": [{"targets": []}]})
        addresses = jobs[key]["static_configs"][0]["targets"]
        if url.netloc not in addresses:
            addresses.append(url.netloc)
    seen: dict[str, int] = {}
    for job in jobs.values():  # same product and path, another scheme or login: a name of its own
        seen[job["job_name"]] = seen.get(job["job_name"], 0) + 1
        if seen[job["job_name"]] > 1:
            job["job_name"] += f"-{seen[job['job_name']]}"
    return list(jobs.values())


def render_prometheus_config(
    targets: list[dict],
    rule_files: list[str],
    ca_files: dict[str, str] | None = None,
    basic_auth: BasicAuth | None = None,
    scrape_interval: str = "30s",
    evaluation_interval: str = "30s",
) -> str:
    """prometheus.yml (2.x): global intervals, `rule_files`, one scrape job per kind of target.
    No alertmanager: alerts are read from Prometheus's own API (`/api/v1/alerts`)."""
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": list(rule_files),
        "scrape_configs": scrape_jobs(targets, ca_files, basic_auth),
    }
    header = "# Written by edd-infra from the stack output scrapeTargets.\n"
    return header + yaml.safe_dump(config, sort_keys=False, width=1000)
