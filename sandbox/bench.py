"""`make bench`: issue 7's benchmarks, measured in one run on this machine and printed as a table.

A report, not a test: nothing here passes or fails on a number. What it measures, and why:

1. A fresh `up` of the single-host sandbox stack (`configure(..., hardened=True)`, as `make
   sandbox` does) against the raw floor: the steps no deployment can skip, run by hand over SSH
   on a fresh host of the same image (install RabbitMQ from the image's offline apt cache and
   wait for it; users, vhost and permissions with rabbitmqctl; a worker unit answering ping;
   Flower answering /healthcheck). Their ratio is what the program's own work costs.
2. No-op `up` and `preview` (median of 3), the remote commands a no-op `up` ran (counted from
   the engine's events) and the read-only drift probes it makes (broker API and SSH).
3. Rotating appPassword while a producer sends tasks: that `up`'s duration and each worker's
   gap (systemd stopping it to the new one logging "ready", from the host's journal).
4. Throughput of no-op tasks through the deployed stack against the same app and worker
   concurrency on a stock local broker (guest on localhost), both timed from the producer's
   first publish to the worker's last "succeeded" journal line.
5. Worker-fleet scaling: `up` that adds 1, 2, 4, 8 worker-only hosts (each one worker over
   TLS) to the deployed stack, from none each time, and the ratio 8:1; with 4, an appPassword
   rotation that rolls through the 5 workers, and the longest time the `edd` queue had no
   consumer (sampled every 100 ms), beside the lone worker's gap of item 3.
6. A RabbitMQ cluster: a fresh `up` of three broker nodes (a stack of its own on hosts
   `edd-bc1..3`) against the single-host fresh `up`, its no-op `up`, and a rolling restart
   (a config change every node takes).

Hosts of its own (`edd-bench` for the stack, `edd-benchraw` for the raw steps and the
baseline), booted fresh from the sandbox image and shut down at the end, failed or not. The
machine is shared and small, so the report records its cores and load average at start and
end. Secrets never go on a command line, raw steps included: they travel on stdin.
The table is printed and written to `docs/bench.txt` (checked in with the machine it ran on)
and `<cache>/bench/last.txt`.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import secrets
import ssl
import statistics
import sys
import tempfile
import time
import traceback
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pulumi.automation import EngineEvent, OpType

from edd_infra.render.broker_urls import amqp_url
from edd_infra.render.celery_config import CONFIG_MODULE, celery_settings, render_celery_config_module
from edd_infra.settings import Tasks
from edd_infra.workspace import ProjectStack, engine_problem
from sandbox import hosts as sandbox_hosts
from sandbox import deploy_timeline
from sandbox.bench_throughput import (
    PRODUCERS,
    RUNS,
    TASKS,
    Producer,
    breakdown,
    measure_throughput,
    prepare,
    run_variant,
    sh,
    summary,
    SAME_SETTINGS,
)
from sandbox.deploy import PASSPHRASE, WORKER, configure, phase, random_secrets, tls_dir
from sandbox.probes import ConsumerSampler
from sandbox.image import APP_TARGET, VENV, cache_dir, release

REPORT = Path(__file__).resolve().parents[1] / "docs" / "bench.txt"
HOST, RAW_HOST = "edd-bench", "edd-benchraw"  # host names are at most 12 characters
FLEET_HOSTS = [f"edd-bw{i}" for i in range(1, 9)]
CLUSTER_HOSTS = ["edd-bc1", "edd-bc2", "edd-bc3"]
ROTATION_PACE = 0.02  # s between publishes: the rotation's tasks span ~40 s, longer than its `up`
APP_USER, FLOWER_USER, ADMIN_USER = "edd_user", "bunny", "edd-infra-admin"
# The raw steps hand the app the same Celery settings the program does (queue edd, confirms).
RAW_CONFIG_DIR = "/etc/edd-bench/celery"
RAW_CONFIG_ENV = f"CELERY_CONFIG_MODULE={CONFIG_MODULE}\\nPYTHONPATH={RAW_CONFIG_DIR}\\n"
UNTIL = "i=0; until {probe}; do i=$((i+1)); [ $i -lt 120 ] || exit 1; sleep 1; done"


@dataclass
class Row:
    name: str
    value: str
    unit: str = ""
    note: str = ""


def timed(action, *args, **kwargs) -> tuple[object, float]:
    started = time.monotonic()
    result = action(*args, **kwargs)
    return result, time.monotonic() - started


class UpEvents:
    """`on_event` for up/preview: counts remote commands the engine ran (any op but `same`) and
    notes when each resource's step started and ended (this machine's clock)."""

    def __init__(self):
        self.ran = 0
        self.starts: dict[str, float] = {}
        self.ends: dict[str, float] = {}

    def __call__(self, event: EngineEvent) -> None:
        now = time.monotonic()
        pre, done = event.resource_pre_event, event.res_outputs_event
        if pre and not pre.planning and pre.metadata.op != OpType.SAME:
            self.starts.setdefault(pre.metadata.urn, now)
            if pre.metadata.type == "command:remote:Command":
                self.ran += 1
        if done and not done.planning:
            self.ends[done.metadata.urn] = now


def up(stack: ProjectStack, events: UpEvents | None = None) -> tuple[float, int, dict]:
    """One `up`: (seconds, remote commands run, resource changes)."""
    events = events or UpEvents()
    result, seconds = timed(stack.stack.up, color="never", on_event=events)
    return seconds, events.ran, dict(result.summary.resource_changes or {})


# --- 1. fresh deploy vs the raw floor -------------------------------------------------------


def raw_broker() -> str:
    """Install RabbitMQ from the offline cache (management on, as the program has it), start it."""
    return "\n".join(
        [
            "set -e",
            "export DEBIAN_FRONTEND=noninteractive",
            "mkdir -p /etc/rabbitmq && echo '[rabbitmq_management].' > /etc/rabbitmq/enabled_plugins",
            "apt-get install -y -q rabbitmq-server </dev/null >/dev/null",
            "systemctl start rabbitmq-server",
            UNTIL.format(probe="rabbitmqctl -q await_startup --timeout 10 </dev/null >/dev/null 2>&1"),
        ]
    )


def raw_accounts() -> str:
    """The admin, the vhost, the app and Flower users and their permissions; passwords are the
    first three lines of stdin, piped from the shell's builtin printf (never an argv)."""
    add = 'printf "%s\\n" "${pw}" | rabbitmqctl add_user {user} >/dev/null'
    perms = "rabbitmqctl -q set_permissions -p /edd {user} '.*' '.*' '.*'"
    return "\n".join(
        [
            "set -e",
            "read -r admin; read -r app; read -r flower",
            add.replace("{pw}", "admin").replace("{user}", ADMIN_USER),
            f"rabbitmqctl -q set_user_tags {ADMIN_USER} administrator",
            "rabbitmqctl -q add_vhost /edd",
            add.replace("{pw}", "app").replace("{user}", APP_USER),
            perms.replace("{user}", APP_USER),
            add.replace("{pw}", "flower").replace("{user}", FLOWER_USER),
            perms.replace("{user}", FLOWER_USER),
            f"rabbitmqctl -q set_user_tags {FLOWER_USER} monitoring",
        ]
    )


# The stock worker runs with the program's default task settings, so throughput compares like with like.
TASK_LIMITS = Tasks()


def raw_config_module() -> str:
    """Shell writing the Celery config module the program would write (the program's renderer)."""
    text = render_celery_config_module(
        celery_settings(
            queue="edd",
            exchange="edd",
            exchange_type="fanout",
            queue_type="classic",
            control_exchange="celery",
            event_exchange="celeryev",
            event_queue_prefix="celeryev",
            soft_time_limit=TASK_LIMITS.soft_time_limit,
            time_limit=TASK_LIMITS.time_limit,
            prefetch_multiplier=TASK_LIMITS.prefetch_multiplier,
        )
    )
    return f"mkdir -p {RAW_CONFIG_DIR}\ncat > {RAW_CONFIG_DIR}/{CONFIG_MODULE}.py <<'EOF'\n{text}EOF"


def raw_unit(name: str, exec_start: str, env: str) -> str:
    return (
        f"cat > /etc/systemd/system/{name}.service <<'EOF'\n[Unit]\nAfter=rabbitmq-server.service\n"
        f"[Service]\nType=exec\nUser=celery\nGroup=celery\nWorkingDirectory={APP_TARGET}\n"
        f"EnvironmentFile={env}\nExecStart={exec_start}\nRestart=always\n"
        f"[Install]\nWantedBy=multi-user.target\nEOF\n"
        f"systemctl daemon-reload && systemctl enable -q --now {name}"
    )


def raw_worker(concurrency: int) -> str:
    """The service account, the env file (broker URL from stdin, 0640 root:celery), the unit,
    started, then `celery inspect ping` until it answers."""
    ping = (
        f"(set -a; . /etc/edd-bench/worker.env; set +a; cd {APP_TARGET} && runuser -u celery -- "
        f"{VENV}/bin/celery -A edd inspect ping -d edd-worker-1@$(hostname) --timeout 3) >/dev/null 2>&1"
    )
    return "\n".join(
        [
            "set -e",
            "read -r url",
            "getent group celery >/dev/null || groupadd --system celery",
            "id -u celery >/dev/null 2>&1 || useradd --system --gid celery --no-create-home "
            "--home-dir /nonexistent --shell /usr/sbin/nologin celery",
            "mkdir -p /etc/edd-bench",
            raw_config_module(),
            f"(umask 027; printf 'CELERY_BROKER_URL=%s\\n{RAW_CONFIG_ENV}' \"$url\" > /etc/edd-bench/worker.env)",
            "chgrp celery /etc/edd-bench/worker.env",
            raw_unit(
                "celery-bench",
                f"{VENV}/bin/celery -A edd worker -Q edd -n edd-worker-1@%%h --loglevel INFO "
                f"--concurrency {concurrency} -E",
                "/etc/edd-bench/worker.env",
            ),
            UNTIL.format(probe=ping),
        ]
    )


def raw_flower(address: str) -> str:
    """Flower's env file and config (basic auth) from stdin, its unit, then /healthcheck."""
    probe = (
        f"{VENV}/bin/python -c 'import urllib.request; "
        f'urllib.request.urlopen("http://{address}:5555/healthcheck", timeout=3)\' >/dev/null 2>&1'
    )
    return "\n".join(
        [
            "set -e",
            "read -r url; read -r ui",
            "(umask 027; printf 'CELERY_BROKER_URL=%s\\n' \"$url\" > /etc/edd-bench/flower.env; "
            f'printf \'address = "{address}"\\nport = 5555\\nbasic_auth = ["admin:%s"]\\n\' "$ui" '
            "> /etc/edd-bench/flowerconfig.py)",
            "chgrp celery /etc/edd-bench/flower.env /etc/edd-bench/flowerconfig.py",
            raw_unit(
                "flower-bench",
                f"{VENV}/bin/celery -A edd flower --conf=/etc/edd-bench/flowerconfig.py",
                "/etc/edd-bench/flower.env",
            ),
            UNTIL.format(probe=probe),
        ]
    )


def raw_floor(raw: sandbox_hosts.SandboxHost, concurrency: int) -> list[Row]:
    pw = {k: secrets.token_hex(16) for k in ("admin", "app", "flower", "ui")}
    app_url = amqp_url(APP_USER, pw["app"], "127.0.0.1", 5672, "/edd")
    flower_url = amqp_url(FLOWER_USER, pw["flower"], "127.0.0.1", 5672, "/edd")
    steps = [
        (
            "raw: install + start RabbitMQ",
            raw_broker(),
            None,
            "offline apt cache, management plugin on; until await_startup answers",
        ),
        (
            "raw: users, vhost, permissions",
            raw_accounts(),
            f"{pw['admin']}\n{pw['app']}\n{pw['flower']}\n",
            "8 rabbitmqctl calls, passwords on stdin; guest kept (the baseline uses it)",
        ),
        (
            "raw: worker unit + ping",
            raw_worker(concurrency),
            app_url + "\n",
            "account, env file, unit, start; until `celery inspect ping` answers",
        ),
        (
            "raw: Flower + /healthcheck",
            raw_flower(raw.address),
            f"{flower_url}\n{pw['ui']}\n",
            "config with basic auth, unit, start; until /healthcheck answers",
        ),
    ]
    rows = []
    for name, script, stdin, note in steps:
        phase(name)
        _, seconds = timed(sh, raw, script, input=stdin)
        rows.append(Row(name, f"{seconds:.1f}", "s", note))
    # Leave the raw host idle for the baseline: its own worker and Flower stop.
    sh(raw, "systemctl stop celery-bench flower-bench")
    return rows


def fresh_deploy(stack: ProjectStack, host: sandbox_hosts.SandboxHost, floor: list[Row]) -> list[Row]:
    phase(f"fresh `up` of the sandbox stack on {host.name}")
    events = UpEvents()
    began = time.monotonic()
    seconds, ran, changes = up(stack, events)
    total = sum(float(r.value) for r in floor)
    return (
        floor
        + [
            Row(
                "raw floor (sum of the raw steps)",
                f"{total:.1f}",
                "s",
                "host boot excluded; no TLS, signing or least privilege",
            ),
            Row(
                "fresh up",
                f"{seconds:.1f}",
                "s",
                f"{ran} remote commands, {changes.get('create', 0)} resources created; config/certs excluded",
            ),
            Row("fresh up / raw floor", f"{seconds / total:.2f}", "x", "issue 22's goal: <= 1.3"),
        ]
        + timeline(stack, events, began, seconds)
    )


def timeline(stack: ProjectStack, events: UpEvents, began: float, seconds: float) -> list[Row]:
    """The fresh `up`'s critical path (deploy_timeline) and the slowest steps off it."""
    state = stack.stack.export_stack().deployment["resources"]
    custom = {r["urn"] for r in state if r.get("custom")}
    timed = {u: s for u, s in deploy_timeline.spans(events.starts, events.ends).items() if u in custom}
    path = deploy_timeline.critical_path(
        timed,
        # A resource waits for its provider too (a rabbitmq provider for the broker's admin login).
        {
            r["urn"]: [*r.get("dependencies", []), *([r["provider"].rsplit("::", 1)[0]] if r.get("provider") else [])]
            for r in state
        },
        {r["urn"]: r["parent"] for r in state if r.get("parent")},
    )
    if not path:
        return [Row("fresh up: critical path", "n/a", "", "no resource events")]
    rows = [Row("fresh up: engine before the first step", f"{path[0].start - began:.1f}", "s", "CLI, plugins, program")]
    for i, span in enumerate(path):
        waited = span.start - path[i - 1].end if i else 0.0
        rows.append(
            Row(
                f"  path {i + 1}: {span.name}",
                f"{span.seconds:.1f}",
                "s",
                f"from {span.start - began:.1f} s" + (f"; {waited:.1f} s after the step before" if i else ""),
            )
        )
    steps = sum(s.seconds for s in path)
    rows.append(
        Row(
            "fresh up: critical path, steps",
            f"{steps:.1f}",
            "s",
            f"{len(path)} steps; between them {path[-1].end - path[0].start - steps:.1f} s",
        )
    )
    rows.append(Row("fresh up: engine after the last step", f"{began + seconds - path[-1].end:.1f}", "s", ""))
    off_path = [s for s in deploy_timeline.slowest(timed.values(), 8) if s not in path][:3]
    rows += [
        Row(f"  off the path: {s.name}", f"{s.seconds:.1f}", "s", f"from {s.start - began:.1f} s") for s in off_path
    ]
    return rows


# --- 2. no-op up, preview, drift probes ------------------------------------------------------


def ssh_logins(host: sandbox_hosts.SandboxHost, since: float, until: float) -> int:
    """Logins sshd accepted on `host` between two machine times (same clock as the host's)."""
    out = sh(
        host,
        f"journalctl -u ssh -o cat --no-pager --since=@{int(since)} --until=@{int(until) + 1} "
        "| grep -c 'Accepted publickey' || true",
    )
    return int(out.strip() or 0)


def no_op(stack: ProjectStack, host: sandbox_hosts.SandboxHost) -> list[Row]:
    phase(f"{RUNS} no-op `up`s and {RUNS} `preview`s")
    time.sleep(2)  # our own last ssh login falls before the window
    window_start = time.time()
    ups = [up(stack) for _ in range(RUNS)]
    window_end = time.time()
    time.sleep(2)
    logins = ssh_logins(host, window_start, window_end)
    previews = [timed(stack.stack.preview, color="never")[1] for _ in range(RUNS)]
    times = [u[0] for u in ups]
    changed = [c for _, _, c in ups if set(c) - {"same"}]
    hosts = len(json.loads(stack.stack.get_config("edd-infra:hosts").value))
    return [
        Row(
            "no-op up (median)",
            f"{statistics.median(times):.1f}",
            "s",
            "runs " + ", ".join(f"{t:.1f}" for t in times) + (f"; CHANGES: {changed}" if changed else ""),
        ),
        Row(
            "remote commands in a no-op up",
            str(max(u[1] for u in ups)),
            "commands",
            "max over the runs; engine events, command:remote:Command with op != same",
        ),
        Row(
            "drift probes per up",
            f"1 + {hosts}",
            "reads",
            f"1 API read (GET /api/users) + {hosts} ssh read(s), 1 per host in config; "
            f"sshd logged {logins / RUNS:.1f} logins per no-op up",
        ),
        Row(
            "preview (median)",
            f"{statistics.median(previews):.1f}",
            "s",
            "runs " + ", ".join(f"{t:.1f}" for t in previews) + "; reads nothing from hosts or broker",
        ),
    ]


# --- 3./4. producer, throughput, rotation ----------------------------------------------------


def management_get(stack: ProjectStack, host, path: str) -> dict:
    """GET the deployed management API over HTTPS, trusting only the stack's CA, as the admin."""
    password = stack.stack.get_config("edd-infra:adminPassword").value
    request = urllib.request.Request(f"https://{host.address}:15671/api/{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{ADMIN_USER}:{password}".encode()).decode())
    context = ssl.create_default_context(cafile=str(stack.work_dir / tls_dir(stack) / "ca.pem"))
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return json.loads(response.read())


def acked(stack: ProjectStack, host) -> int:
    return management_get(stack, host, "queues/%2Fedd/edd").get("message_stats", {}).get("ack", 0)


def wait_acked(stack: ProjectStack, host, before: int, total: int, timeout: float = 60) -> int:
    """The management API's ack count since `before`, once it reaches `total` (sampled every 5 s)."""
    deadline = time.monotonic() + timeout
    while (count := acked(stack, host) - before) < total and time.monotonic() < deadline:
        time.sleep(2)
    return count


def throughput(stack: ProjectStack, host, raw, worker: str, concurrency: int, signing: Path) -> list[Row]:
    """The breakdown on the raw host (bench_throughput: features added one at a time), then
    the deployed stack the same way, RUNS runs each."""
    phase(f"throughput breakdown on {raw.name}: {TASKS} tasks x {RUNS} runs per row")
    prepare(raw, signing, stack.work_dir)
    rows_measured = breakdown(raw, concurrency)
    phase(f"throughput: {TASKS} tasks x {RUNS} runs through the deployed stack on {host.name}")
    before = acked(stack, host)
    units = {"worker": f"celery-{worker}", "broker": "rabbitmq-server", "flower": "flower"}
    env = f"/etc/edd-infra/celery-{worker}.env"
    deployed_runs = [measure_throughput(host, f"celery-{worker}", env, units) for _ in range(RUNS)]
    phase(f"throughput with {PRODUCERS} producers side by side: the stock broker's same settings, the deployed stack")
    same = next(v for v, _ in rows_measured if v.key == SAME_SETTINGS)
    same_parallel = run_variant(raw, same, concurrency, producers=PRODUCERS)
    deployed_parallel = [
        measure_throughput(host, f"celery-{worker}", env, units, producers=PRODUCERS) for _ in range(RUNS)
    ]
    count = wait_acked(stack, host, before, TASKS * RUNS * 2)
    measured = [*((v.label, runs) for v, runs in rows_measured), ("deployed stack", deployed_runs)]
    summaries = [(label, *summary(runs)) for label, runs in measured]
    medians = {label: rates.median for label, rates, _ in summaries}
    stock, same_settings = summaries[0][1].median, medians[same.label]
    rows = [
        Row(f"throughput: {label}", f"{rates.median:.0f}", "tasks/s", f"{rates.median / stock:.2f}x stock; {note}")
        for label, rates, note in summaries
    ]
    deployed = summaries[-1][1].median
    rows[-1].note += f"; signed, confirmed, -E, Flower on, worker on loopback; {count} acked per management API"
    return (
        rows
        + [
            Row("throughput deployed / stock", f"{deployed / stock:.2f}", "x", "Celery's defaults on a stock broker"),
            Row(
                "throughput deployed / stock, same settings",
                f"{deployed / same_settings:.2f}",
                "x",
                "issue 22's goal: >= 0.8; the stock broker with the program's Celery settings (late acks, confirms)",
            ),
        ]
        + parallel_rows(same_parallel, deployed_parallel)
    )


def parallel_rows(same: list, deployed: list) -> list[Row]:
    """The same settings and the deployed stack with PRODUCERS producers side by side."""
    (same_rates, same_note), (rates, note) = summary(same), summary(deployed)
    return [
        Row(
            f"throughput, {PRODUCERS} producers: stock broker, same settings",
            f"{same_rates.median:.0f}",
            "tasks/s",
            same_note,
        ),
        Row(f"throughput, {PRODUCERS} producers: deployed stack", f"{rates.median:.0f}", "tasks/s", note),
        Row(
            f"throughput, {PRODUCERS} producers: deployed / same settings",
            f"{rates.median / same_rates.median:.2f}",
            "x",
            "each producer's confirm waits and signing overlap the others'",
        ),
    ]


def worker_gap(host, unit: str, since: int) -> float | None:
    """Seconds from systemd stopping the worker to the new one logging "ready" (the hosts tier's
    measure in test_rotation_under_load_loses_no_task); None if it was not restarted."""
    journal = sh(host, f"journalctl -u {unit} -o short-unix --no-pager --since=@{since}").splitlines()
    stopping = next((float(line.split()[0]) for line in journal if "Stopping celery-" in line), None)
    if stopping is None:
        return None
    ready = next(
        (float(line.split()[0]) for line in journal if " ready." in line and float(line.split()[0]) > stopping), None
    )
    return None if ready is None else ready - stopping


def rotation(stack: ProjectStack, host, workers: list[str]) -> list[Row]:
    phase(f"rotation: appPassword rotated by `up` while {TASKS} tasks are sent")
    before = acked(stack, host)
    producer = Producer(host, f"/etc/edd-infra/celery-{workers[0]}.env", TASKS, ROTATION_PACE)
    time.sleep(2)  # tasks are flowing
    stack.set_secret("appPassword", random_secrets()["appPassword"])
    seconds, ran, changes = up(stack)
    under_load = "end" not in producer.marks()
    marks, done = producer.wait(f"celery-{workers[0]}")
    count = wait_acked(stack, host, before, TASKS)
    rows = [
        Row(
            "rotation up (appPassword)",
            f"{seconds:.1f}",
            "s",
            f"{ran} remote commands, {changes.get('update', 0)} updates; producer "
            f"{'still publishing' if under_load else 'DONE'} when it ended; {len(done)}/{TASKS} tasks "
            f"succeeded, {count} acked",
        )
    ]
    for worker in workers:
        gap = worker_gap(host, f"celery-{worker}", producer.since)
        rows.append(
            Row(
                f"rotation worker gap, {worker}",
                "n/a" if gap is None else f"{gap:.1f}",
                "s",
                "journal: Stopping -> ready (no consumer on the queue)",
            )
        )
    return rows


# --- the run ---------------------------------------------------------------------------------


def machine_facts() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return f"{platform.node()}, {os.cpu_count()} cores ({model}), Linux {platform.release()}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def render(rows: list[Row], header: list[str]) -> str:
    widths = [max(len(getattr(r, f)) for r in rows + [Row("name", "value", "unit")]) for f in ("name", "value", "unit")]
    lines = [*header, ""]
    for r in [Row("name", "value", "unit", "note")] + rows:
        lines.append(f"{r.name:<{widths[0]}}  {r.value:>{widths[1]}}  {r.unit:<{widths[2]}}  {r.note}".rstrip())
    return "\n".join(lines) + "\n"


def new_stack(work: Path) -> ProjectStack:
    (work / "state").mkdir()
    return ProjectStack("bench", work, f"file://{work / 'state'}", PASSPHRASE)


PARTS = ("throughput", "rotation", "fleet", "cluster")  # after the fresh, no-op up and preview rows


def unlimited_journal(host: sandbox_hosts.SandboxHost) -> None:
    """No journald rate limit on a bench host: every `succeeded` line must reach the journal."""
    sh(
        host,
        "mkdir -p /etc/systemd/journald.conf.d && printf '[Journal]\\nRateLimitBurst=0\\n' "
        "> /etc/systemd/journald.conf.d/edd-bench.conf && systemctl restart systemd-journald",
    )


def measure(rows: list[Row], parts: tuple[str, ...] = PARTS) -> None:
    """Every figure, appended to `rows` as it is measured (so a failure keeps the earlier ones)."""
    host, raw = sandbox_hosts.boot([HOST, RAW_HOST])
    for h in (host, raw):
        unlimited_journal(h)
    with tempfile.TemporaryDirectory(prefix="work-", dir=cache_dir() / "bench") as work:
        stack = new_stack(Path(work))
        configure(stack, host, hardened=True)
        workers = json.loads(stack.stack.get_config("edd-infra:workers").value)
        concurrency = workers[0]["concurrency"]
        rows += fresh_deploy(stack, host, raw_floor(raw, concurrency))
        rows += no_op(stack, host)
        if "throughput" in parts:
            rows += throughput(stack, host, raw, workers[0]["name"], concurrency, stack.work_dir / tls_dir(stack))
        if "rotation" in parts:
            rows += rotation(stack, host, [w["name"] for w in workers])
        if "fleet" in parts:
            rows += fleet(stack, host)
        if "cluster" in parts:
            fresh = next(float(r.value) for r in rows if r.name == "fresh up")
            rows += cluster(Path(work) / "cluster", fresh)


def fleet(stack: ProjectStack, host: sandbox_hosts.SandboxHost) -> list[Row]:
    """`up` adding N worker hosts (from none), N = 1, 2, 4, 8, and with 4 a rotation that rolls
    through the 5 workers while the `edd` queue's consumers are sampled; hosts shut down
    afterwards."""
    workers = sandbox_hosts.boot(FLEET_HOSTS)
    try:
        seconds, rolled = {}, []
        for n in (1, 2, 4, 8):
            configure(stack, host, hardened=True, worker_hosts=tuple(workers[:n]))
            seconds[n], _, _ = up(stack)
            if n == 4:
                rolled = fleet_rotation(stack, host, n + 1)
            configure(stack, host, hardened=True)
            up(stack)  # back to none
        rows = [
            Row(f"up adding {n} worker host{'s' * (n > 1)}", f"{t:.1f}", "s", "account, unit, repair command each")
            for n, t in seconds.items()
        ]
        return (
            rows
            + [
                Row(
                    "fleet up 8:1",
                    f"{seconds[8] / seconds[1]:.2f}",
                    "x",
                    "accounts in parallel, worker units in turn (rollout.maxUnavailable 1)",
                )
            ]
            + rolled
        )
    finally:
        sandbox_hosts.shutdown(FLEET_HOSTS)


def fleet_rotation(stack: ProjectStack, host: sandbox_hosts.SandboxHost, count: int) -> list[Row]:
    """appPassword rotated with `count` workers: they restart one at a time; the `edd` queue's
    consumers sampled every 100 ms from the broker (not the management API's 5 s stats)."""
    phase(f"fleet rotation: appPassword rotated with {count} workers, consumers on `edd` sampled")
    sampler = ConsumerSampler(host, f"/etc/edd-infra/celery-{WORKER}.env")
    stack.set_secret("appPassword", random_secrets()["appPassword"])
    seconds, ran, _ = up(stack)
    lowest, longest = sampler.stop()
    return [
        Row(f"fleet rotation up, {count} workers", f"{seconds:.1f}", "s", f"{ran} remote commands; workers in turn"),
        Row(
            "fleet rotation: longest time with no consumer",
            f"{longest:.1f}",
            "s",
            f"`edd` sampled every 100 ms; fewest consumers seen {lowest} (a lone worker's gap is the row above)",
        ),
    ]


def cluster(work: Path, single_fresh: float) -> list[Row]:
    """A fresh `up` of a three-node cluster (TLS, signing, quorum queue), a no-op `up`, then a
    config change every node takes (they restart in turn, each drained first)."""
    phase(f"fresh `up` of a three-node RabbitMQ cluster on {', '.join(CLUSTER_HOSTS)}")
    seed, *nodes = sandbox_hosts.boot(CLUSTER_HOSTS)
    try:
        work.mkdir()
        stack = new_stack(work)
        configure(stack, seed, hardened=True, broker_nodes=tuple(nodes))
        seconds, ran, changes = up(stack)
        noop, noop_ran, _ = up(stack)
        broker = json.loads(stack.stack.get_config("edd-infra:broker").value)
        stack.set_plain({"broker": dict(broker, memoryHighWatermark=0.41)})
        rolling, rolled, _ = up(stack)
        return [
            Row(
                "cluster fresh up, 3 nodes",
                f"{seconds:.1f}",
                "s",
                f"{ran} remote commands, {changes.get('create', 0)} resources created; nodes installed in turn",
            ),
            Row(
                "cluster fresh up / single-host fresh up",
                f"{seconds / single_fresh:.2f}",
                "x",
                "same image, TLS and signing",
            ),
            Row("cluster no-op up", f"{noop:.1f}", "s", f"{noop_ran} remote commands"),
            Row(
                "cluster rolling restart",
                f"{rolling:.1f}",
                "s",
                f"{rolled} remote commands; memory watermark changed: 3 nodes restarted in turn, each drained first",
            ),
        ]
    finally:
        sandbox_hosts.shutdown(CLUSTER_HOSTS)


def main(parts: tuple[str, ...] = PARTS) -> int:
    """`python -m sandbox.bench [part ...]`: the fresh/no-op rows and the named PARTS (all by
    default; `deploy` alone: the fresh/no-op rows only)."""
    unknown = set(parts) - {*PARTS, "deploy"}
    if unknown:
        sys.exit(f"unknown bench part(s) {sorted(unknown)}: choose from {', '.join(PARTS)}")
    problem = engine_problem()
    if problem:
        sys.exit(problem)
    started, load_start = time.monotonic(), load()
    (cache_dir() / "bench").mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    failed = None
    sandbox_hosts.shutdown(
        [HOST, RAW_HOST, *FLEET_HOSTS, *CLUSTER_HOSTS]
    )  # left by a crashed run: measure fresh hosts only
    try:
        measure(rows, parts)
    except Exception as error:  # noqa: BLE001 - report what was measured, then the failure
        traceback.print_exc()
        failed = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}"
        rows.append(Row("FAILED", "-", "", failed))
    finally:
        phase(f"stopping {HOST}, {RAW_HOST}")
        sandbox_hosts.shutdown([HOST, RAW_HOST])
    header = [
        f"edd-infra bench, {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"machine: {machine_facts()}",
        f"load average (1/5/15 min): {load_start} at start, {load()} at end; "
        f"bench ran {time.monotonic() - started:.0f} s",
        f"hosts: {HOST} (the stack), {RAW_HOST} (raw steps, stock baseline), sandbox image "
        f"Debian {release().number} ({release().suite}; SANDBOX_DEBIAN), fresh",
    ]
    report = render(rows, header)
    print("\n" + report, end="")
    # A partial run is a working figure, not the report: docs/bench.txt holds whole runs only.
    for out in (cache_dir() / "bench" / "last.txt", *([REPORT] if parts == PARTS else [])):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        phase(f"written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(tuple(sys.argv[1:]) or PARTS))
