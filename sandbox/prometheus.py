"""A Prometheus for the sandbox: Debian's server scraping a deployed stack, its alert rules loaded.

How it runs, and why this way (of the two honest options):

- **Chosen: the machine's own Debian `prometheus` binary** (`/usr/bin/prometheus`, which
  `.ci/run` already installs, without starting it, for promtool), started by this module
  inside the broker host's *network* namespace (`nsenter --net`) and as the package's
  `prometheus` user (`setpriv`). In that namespace the only routes are the host's loopback
  and its sandbox link (10.57.0.0/16, through this machine): Prometheus can scrape the
  sandbox and nothing else, exactly as one on the broker host would, and it listens on the
  host's sandbox address only (`<address>:9090`, reachable from this machine over the veth).
  It costs nothing to set up: no image rebuild, and a start in about a second.
- Not chosen: the `prometheus` package baked into the host image. Every image key change
  (a package, the app) would pay a cold image build with it in CI (a trixie image builds in
  ~100 s without it, measured in test-hosts.md; the extra package was not measured here), and
  every sandbox host would carry a server only one of them runs.

What that leaves different from a Prometheus installed on the host: the binary is the
machine's release (Debian 12: Prometheus 2.42), not the host's, and its files (config, the
rules file read back from the host, the CA, its TSDB) live in a work directory on this
machine, owned by `prometheus`, removed when it stops.

Scrape and rule evaluation every 5 s (sandbox only; a site keeps its own intervals). Every
process started here is ended by its PID (checked against its start time), failed start
included. `make sandbox` records its Prometheus in `<cache>/sandbox/prometheus.json` so
`make sandbox-down` can stop it from another process.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from edd_infra.render.prometheus_config import render_prometheus_config

from .hosts import SandboxHost, _alive, _start_time
from .image import cache_dir, log

PORT = 9090
INTERVAL = "5s"
USER = "prometheus"  # the Debian package's system user
RULES_NAME = "edd-infra.rules.yml"

# Popen objects of servers this process started, so their exit is reaped.
_children: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class SandboxPrometheus:
    """A running Prometheus: its API's base URL, its process and its work directory."""

    url: str
    pid: int
    pid_start: int | None
    work_dir: str
    host: str


def missing() -> str | None:
    """What this machine lacks to run the sandbox's Prometheus, with the fix; None if nothing."""
    needs = {
        "prometheus": "prometheus (apt-get install prometheus; .ci/run installs it without starting it)",
        "nsenter": "nsenter (util-linux)",
        "setpriv": "setpriv (util-linux)",
    }
    gone = [why for tool, why in needs.items() if shutil.which(tool) is None]
    try:
        pwd.getpwnam(USER)
    except KeyError:
        gone.append(f"user {USER} (made by the prometheus package)")
    return f"missing: {', '.join(gone)}" if gone else None


def start(
    host: SandboxHost,
    targets: list[dict],
    rules_text: str,
    ca_file: str | None = None,
    work_dir: Path | None = None,
    timeout: float = 60,
    die_with_caller: bool = True,
) -> SandboxPrometheus:
    """Start Prometheus in `host`'s network namespace, scraping `targets` (the `scrapeTargets`
    output) with `rules_text` (the rules file as read back from the host) loaded; return once
    it answers `/-/ready`. A start that fails is stopped again (by PID) and raises RuntimeError
    with its log's tail. With `die_with_caller` (tests), the kernel ends it if the calling
    process dies without stopping it; `make sandbox` turns that off (it outlives make)."""
    problem = missing()
    if problem:
        raise RuntimeError(problem)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="edd-prometheus-"))
    work.mkdir(parents=True, exist_ok=True)
    account = pwd.getpwnam(USER)
    (work / RULES_NAME).write_text(rules_text)
    ca_files = {}
    if ca_file:  # a copy the prometheus user can read (the stack's TLS directory may not be)
        shutil.copyfile(ca_file, work / "ca.pem")
        ca_files = {"broker.tls.caFile": str(work / "ca.pem")}
    (work / "prometheus.yml").write_text(
        render_prometheus_config(
            targets, [str(work / RULES_NAME)], ca_files=ca_files, scrape_interval=INTERVAL, evaluation_interval=INTERVAL
        )
    )
    (work / "data").mkdir(exist_ok=True)
    for path in [work, *work.rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid)
    address = f"{host.address}:{PORT}"
    argv = [
        "nsenter",
        "-t",
        str(host.leader_pid),
        "--net",
        "--",
        "setpriv",
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--init-groups",
        *(["--pdeathsig", "TERM"] if die_with_caller else []),
        "--",
        shutil.which("prometheus"),
        f"--config.file={work / 'prometheus.yml'}",
        f"--storage.tsdb.path={work / 'data'}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address={address}",
    ]
    with open(work / "prometheus.log", "a") as out:
        # nsenter without --pid and setpriv exec what follows: the PID is Prometheus's own.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _children[proc.pid] = proc
    server = SandboxPrometheus(f"http://{address}", proc.pid, _start_time(proc.pid), str(work), host.name)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(server):
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with status {proc.returncode}:\n{log_tail(server)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready at {server.url} after {timeout:.0f} s:\n{log_tail(server)}")
            time.sleep(0.2)
    except BaseException:
        stop(server, remove=False)
        raise
    return server


def _ready(server: SandboxPrometheus) -> bool:
    try:
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def stop(server: SandboxPrometheus, remove: bool = True, timeout: float = 30) -> None:
    """SIGTERM (then SIGKILL) the server's PID if it is still that process; with `remove`,
    delete its work directory (config, rules, TSDB, log)."""
    for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        if not _alive(server.pid, server.pid_start):
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, sig)
        deadline = time.monotonic() + grace
        while _alive(server.pid, server.pid_start) and time.monotonic() < deadline:
            time.sleep(0.2)
    if server.pid in _children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            _children.pop(server.pid).wait(timeout=5)
    if _alive(server.pid, server.pid_start):
        raise RuntimeError(f"prometheus (PID {server.pid}) still runs after SIGKILL")
    if remove:
        shutil.rmtree(server.work_dir, ignore_errors=True)


def log_tail(server: SandboxPrometheus, lines: int = 15) -> str:
    path = Path(server.work_dir) / "prometheus.log"
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:]) if path.exists() else ""


def api(server: SandboxPrometheus, path: str) -> dict:
    """GET /api/v1/<path> from this machine (over the host's link); the `data` of the answer."""
    with urllib.request.urlopen(f"{server.url}/api/v1/{path}", timeout=10) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]


def targets_up(server: SandboxPrometheus, count: int) -> bool:
    """All `count` scrape targets are active and `up`."""
    active = api(server, "targets?state=active")["activeTargets"]
    return len(active) == count and all(t["health"] == "up" for t in active)


def loaded_rules(server: SandboxPrometheus) -> dict[str, dict]:
    """Alerting rules Prometheus evaluates, by name (each with its state, `duration`, health)."""
    return {r["name"]: r for g in api(server, "rules?type=alert")["groups"] for r in g["rules"]}


def active_alerts(server: SandboxPrometheus) -> dict[str, dict]:
    """Pending and firing alerts by name (resolved ones are not listed by /api/v1/alerts)."""
    return {a["labels"]["alertname"]: a for a in api(server, "alerts")["alerts"]}


def rule_names(rules_text: str) -> list[str]:
    return [r["alert"] for g in yaml.safe_load(rules_text)["groups"] for r in g["rules"]]


def wait_loaded(server: SandboxPrometheus, target_count: int, rules_text: str, timeout: float = 90) -> float:
    """Wait until every target is up and every rule of `rules_text` loaded and healthy; the seconds."""
    started = time.monotonic()
    wanted = set(rule_names(rules_text))
    while True:
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            rules = loaded_rules(server)
            if targets_up(server, target_count) and wanted <= {n for n, r in rules.items() if r["health"] == "ok"}:
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            active = api(server, "targets?state=active")["activeTargets"]
            raise RuntimeError(
                f"after {timeout:.0f} s: targets {[(t['scrapeUrl'], t['health'], t['lastError']) for t in active]}, "
                f"rules {sorted(loaded_rules(server))} (want {sorted(wanted)})"
            )
        time.sleep(1)


# --- the one `make sandbox` keeps running -----------------------------------------------------


def _state_path() -> Path:
    return cache_dir() / "sandbox" / "prometheus.json"


def record(server: SandboxPrometheus) -> None:
    _state_path().parent.mkdir(parents=True, exist_ok=True)
    _state_path().write_text(json.dumps(asdict(server), indent=2) + "\n")


def recorded() -> SandboxPrometheus | None:
    path = _state_path()
    return SandboxPrometheus(**json.loads(path.read_text())) if path.exists() else None


def stop_recorded() -> SandboxPrometheus | None:
    """Stop the recorded server (if its PID is still it) and forget it; return what was stopped."""
    server = recorded()
    if server:
        stop(server)
        _state_path().unlink()
        log(f"stopped prometheus (PID {server.pid}) at {server.url}")
    return server
