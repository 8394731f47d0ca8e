"""`make bench`'s throughput breakdown: where the deployed stack's tasks per second go.

The same app, worker concurrency and producer run on one stock broker (the raw host's
RabbitMQ from apt, guest on loopback), with the deployed stack's features added one at a
time, each row on top of the one before: Celery's defaults; the program's late acks and
prefetch; publisher confirms; signed tasks; task events with Flower consuming them; AMQP
over TLS. Then the deployed stack itself. Each row is RUNS runs of TASKS no-op tasks, each
timed from the producer's first publish to the worker's last "succeeded" journal line, each
run with a worker of its own (a unit per run keeps journald's rate limit out of the count).
"""

from __future__ import annotations

import re
import secrets
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edd_infra.render.celery_config import CONFIG_MODULE, render_celery_config_module
from sandbox import hosts as sandbox_hosts
from sandbox.image import APP_TARGET, VENV
from sandbox.tls import make_broker_certificates

TASKS = 2000
RUNS = 3
# Producers side by side in the rows that ask for several: EDD publishes from several web processes.
PRODUCERS = 4
WAIT = "i=0; until {probe}; do i=$((i+1)); [ $i -lt 240 ] || exit 1; sleep 0.5; done"

PRODUCER = """
import sys, time
from edd import add
total, prefix, pace, first, step = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print("start", time.time(), flush=True)
for i in range(first, total, step):
    add.apply_async((i, 1), task_id=f"{prefix}-{i}", ignore_result=True)
    if pace:
        time.sleep(pace)
print("end", time.time(), flush=True)
print("cpu", time.process_time(), flush=True)
"""


def sh(host: sandbox_hosts.SandboxHost, command: str, input: str | None = None, timeout: float = 900) -> str:
    result = sandbox_hosts.run(host, command, input=input, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"{host.name}: `{command.splitlines()[0][:80]}` exited {result.returncode}: {result.stderr.strip()[-800:]}"
        )
    return result.stdout


class Producer:
    """PRODUCER on a host, with the broker URL of `env` (an env file) or the app's default;
    `processes` of them side by side share the `total` tasks (as a site's web processes do)."""

    def __init__(
        self, host: sandbox_hosts.SandboxHost, env: str | None, total: int, pace: float = 0.0, processes: int = 1
    ):
        self.host, self.total = host, total
        self.prefix = f"b{secrets.token_hex(4)}"
        self.outs = [f"/tmp/{self.prefix}.{k}.out" for k in range(processes)]
        self.since = int(sh(host, "date +%s").strip()) - 1
        load = f"set -a; . {env}; set +a; " if env else ""
        sh(host, "cat > /tmp/bench_producer.py", input=PRODUCER)
        sh(
            host,
            "; ".join(
                f"({load}cd {APP_TARGET}; PYTHONPATH={APP_TARGET}:${{PYTHONPATH:-}} nohup {VENV}/bin/python "
                f"/tmp/bench_producer.py {total} {self.prefix} {pace} {k} {processes} > {out} 2>&1 < /dev/null &)"
                for k, out in enumerate(self.outs)
            ),
        )

    def marks(self) -> dict[str, float]:
        """`start` (the first producer's) and, once every producer is done, `end` (the last's);
        `cpu`: their CPU seconds together."""
        marks: dict[str, list[float]] = {}
        for out in self.outs:
            text = sh(self.host, f"cat {out}")
            if "Traceback" in text:
                raise RuntimeError(f"producer failed on {self.host.name}:\n{text[-1500:]}")
            for line in text.splitlines():
                if line.split()[:1] in (["start"], ["end"], ["cpu"]):
                    marks.setdefault(line.split()[0], []).append(float(line.split()[1]))
        done = len(marks.get("cpu", [])) == len(self.outs)  # `cpu` is each producer's last line
        return ({"start": min(marks["start"])} if "start" in marks else {}) | (
            {"end": max(marks["end"]), "cpu": sum(marks["cpu"])} if done and "cpu" in marks else {}
        )

    def _journal(self, unit: str, count: bool) -> str:
        return sh(
            self.host,
            f"journalctl -u {unit} -o short-unix --no-pager --since=@{self.since} "
            f"| grep -F '[{self.prefix}-' | grep -F{'c' if count else ''} ' succeeded in ' || true",
        )

    def succeeded(self, unit: str) -> dict[str, float]:
        """Task id -> journal time of the worker's first `succeeded` line for it."""
        done: dict[str, float] = {}
        for line in self._journal(unit, count=False).splitlines():
            match = re.search(rf"\[({self.prefix}-\d+)\] succeeded", line)
            if match:
                done.setdefault(match.group(1), float(line.split()[0]))
        return done

    def wait(self, unit: str, timeout: float = 1200) -> tuple[dict[str, float], dict[str, float]]:
        """Wait until the worker logged every task as succeeded; (producer marks, successes).
        Polls a count every 2 s (cheap: the host's cores are the ones being measured)."""
        deadline = time.monotonic() + timeout
        while True:
            marks = self.marks()
            if "end" in marks and int(self._journal(unit, count=True).strip() or 0) >= self.total:
                done = self.succeeded(unit)
                if len(done) >= self.total:
                    return marks, done
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(self.succeeded(unit))} of {self.total} tasks succeeded after {timeout:.0f} s "
                    "(journald rate limit?)"
                )
            time.sleep(2)


def cpu_seconds(host: sandbox_hosts.SandboxHost, units: dict[str, str]) -> dict[str, float]:
    """CPU seconds each unit's processes used so far: its cgroup's `cpu.stat` (cgroup v2 keeps
    usage_usec for every group, accounting on or not; the sandbox hosts see v2 as `unified`)."""
    command = "; ".join(
        f"cg=$(systemctl show -p ControlGroup --value {unit}); f=/sys/fs/cgroup/unified$cg/cpu.stat; "
        '[ -r "$f" ] || f=/sys/fs/cgroup$cg/cpu.stat; awk \'/^usage_usec/ { print $2 }\' "$f" 2>/dev/null || echo nan'
        for unit in units.values()
    )
    out = sh(host, command).split()
    return {name: int(us) / 1e6 if us.isdigit() else float("nan") for name, us in zip(units, out)}


@dataclass(frozen=True)
class Run:
    """One run: tasks per second, seconds publishing, CPU milliseconds per task by process."""

    rate: float
    publishing: float
    cpu_ms: dict[str, float]


def measure_throughput(
    host, unit: str, env: str | None, units: dict[str, str] | None = None, total: int = TASKS, producers: int = 1
) -> Run:
    """Tasks per second from the first publish to the last success; the CPU `units` (name ->
    systemd unit) and the producers used per task."""
    units = units or {}
    before = cpu_seconds(host, units) if units else {}
    producer = Producer(host, env, total, processes=producers)
    marks, done = producer.wait(unit)
    after = cpu_seconds(host, units) if units else {}
    cpu = {"producer": marks.get("cpu", float("nan")) * 1000 / total}
    cpu |= {name: (after[name] - before[name]) * 1000 / total for name in units}
    return Run(total / (max(done.values()) - marks["start"]), marks["end"] - marks["start"], cpu)


@dataclass(frozen=True)
class Spread:
    """Figures of repeated runs: min / median / max."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def text(self, digits: int = 0) -> str:
        return "/".join(f"{v:.{digits}f}" for v in (min(self.values), self.median, max(self.values)))


# --- the rows: what each adds ------------------------------------------------------------------

# Celery's defaults with only the queue named (the producer and worker must meet).
STOCK: dict[str, Any] = {"task_default_queue": "edd"}
# The program's at-least-once settings (celery_config.celery_settings) without the confirms.
RELIABILITY: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_cancel_long_running_tasks_on_connection_loss": True,
    "worker_prefetch_multiplier": 1,
}
CONFIRMS: dict[str, Any] = {"broker_transport_options": {"confirm_publish": True}}
SIGNING_DIR = "/etc/edd-bench/signing"
TLS_DIR = "/etc/edd-bench/tls"


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    settings: dict[str, Any]
    signing: bool = False
    events: bool = False
    tls: bool = False

    def env(self) -> str:
        """The env file: config module, broker URL (guest: loopback only), signing, CA."""
        port, scheme = (5671, "amqps") if self.tls else (5672, "amqp")
        lines = {
            "CELERY_CONFIG_MODULE": CONFIG_MODULE,
            "PYTHONPATH": f"/etc/edd-bench/v-{self.key}",
            "CELERY_BROKER_URL": f"{scheme}://guest:guest@127.0.0.1:{port}//",
        }
        if self.signing:
            lines |= {
                "CELERY_SECURITY_KEY": f"{SIGNING_DIR}/signing.key",
                "CELERY_SECURITY_CERTIFICATE": f"{SIGNING_DIR}/signing.pem",
                "CELERY_SECURITY_CERT_STORE": f"{SIGNING_DIR}/store",
            }
        if self.tls:
            lines["CELERY_BROKER_CA_FILE"] = f"{TLS_DIR}/ca.pem"
        return "".join(f"{k}={v}\n" for k, v in lines.items())


def variants() -> list[Variant]:
    """Each row adds one feature to the row before it."""
    return [
        Variant("stock", "stock Celery defaults", STOCK),
        Variant("acks", "+ late acks, prefetch 1", STOCK | RELIABILITY),
        Variant("confirms", "+ publisher confirms", STOCK | RELIABILITY | CONFIRMS),
        Variant("signing", "+ signed tasks", STOCK | RELIABILITY | CONFIRMS, signing=True),
        Variant("events", "+ task events, Flower", STOCK | RELIABILITY | CONFIRMS, signing=True, events=True),
        Variant("tls", "+ AMQP over TLS", STOCK | RELIABILITY | CONFIRMS, signing=True, events=True, tls=True),
    ]


# The row whose Celery settings are the program's (late acks, confirms): the "stock".
SAME_SETTINGS = "confirms"


# --- the raw host: files for every row, a worker per run --------------------------------------


def prepare(raw: sandbox_hosts.SandboxHost, signing_dir: Path, work: Path) -> None:
    """Signing files (the stack's certificate) and a TLS listener on 5671 (a CA of its own for
    127.0.0.1) on the raw host, each row's config module and env file; the broker restarted
    once, before any row, so every row meets the same broker."""
    tls = make_broker_certificates(work / "raw-tls", "127.0.0.1")
    files = {
        f"{SIGNING_DIR}/signing.key": ((signing_dir / "signing.key").read_text(), "0640 root celery"),
        f"{SIGNING_DIR}/signing.pem": ((signing_dir / "signing.pem").read_text(), "0644 root root"),
        f"{SIGNING_DIR}/store/signing.pem": ((signing_dir / "signing.pem").read_text(), "0644 root root"),
        f"{TLS_DIR}/ca.pem": (tls["ca.pem"].read_text(), "0644 root root"),
        f"{TLS_DIR}/server.pem": (tls["server.pem"].read_text(), "0644 root root"),
        f"{TLS_DIR}/server.key": (tls["server.key"].read_text(), "0640 root rabbitmq"),
    }
    for v in variants():
        files[f"/etc/edd-bench/v-{v.key}/{CONFIG_MODULE}.py"] = (
            render_celery_config_module(v.settings),
            "0644 root root",
        )
        files[f"/etc/edd-bench/v-{v.key}.env"] = (v.env(), "0640 root celery")
    for path, (text, owner) in files.items():
        mode, user, group = owner.split()
        sh(
            raw,
            f"mkdir -p $(dirname {path}) && cat > {path} && chmod {mode} {path} && chown {user}:{group} {path}",
            input=text,
        )
    conf = "\n".join(
        [
            "listeners.tcp.default = 5672",
            "listeners.ssl.default = 5671",
            f"ssl_options.cacertfile = {TLS_DIR}/ca.pem",
            f"ssl_options.certfile = {TLS_DIR}/server.pem",
            f"ssl_options.keyfile = {TLS_DIR}/server.key",
            "ssl_options.verify = verify_none",
            "ssl_options.fail_if_no_peer_cert = false",
        ]
    )
    sh(raw, "cat > /etc/rabbitmq/rabbitmq.conf && systemctl restart rabbitmq-server", input=conf + "\n")
    sh(raw, WAIT.format(probe="rabbitmqctl -q await_startup --timeout 10 </dev/null >/dev/null 2>&1"))


def start_worker(raw: sandbox_hosts.SandboxHost, v: Variant, unit: str, concurrency: int) -> None:
    env = f"/etc/edd-bench/v-{v.key}.env"
    node = f"{unit}@{raw.name}"
    events = " -E" if v.events else ""
    sh(
        raw,
        f"systemd-run -q --unit={unit} -p User=celery -p WorkingDirectory={APP_TARGET} -p EnvironmentFile={env} "
        f"{VENV}/bin/celery -A edd worker -Q edd -n {node} --concurrency {concurrency} --loglevel INFO{events}",
    )
    ping = (
        f"(set -a; . {env}; set +a; cd {APP_TARGET} && {VENV}/bin/celery -A edd inspect ping -d {node} "
        "--timeout 2) >/dev/null 2>&1"
    )
    sh(raw, WAIT.format(probe=ping))


def start_flower(raw: sandbox_hosts.SandboxHost, v: Variant) -> None:
    """Flower consuming the row's events, as the stack runs it (loopback, its own port)."""
    sh(
        raw,
        f"systemd-run -q --unit=bench-flower-{v.key} -p User=celery -p WorkingDirectory={APP_TARGET} "
        f"-p EnvironmentFile=/etc/edd-bench/v-{v.key}.env {VENV}/bin/celery -A edd flower "
        "--address=127.0.0.1 --port=5556",
    )
    probe = (
        f"{VENV}/bin/python -c 'import urllib.request; "
        'urllib.request.urlopen("http://127.0.0.1:5556/healthcheck", timeout=2)\' >/dev/null 2>&1'
    )
    sh(raw, WAIT.format(probe=probe))


def run_variant(
    raw: sandbox_hosts.SandboxHost, v: Variant, concurrency: int, runs: int = RUNS, producers: int = 1
) -> list[Run]:
    if v.events:
        start_flower(raw, v)
    measured = []
    try:
        for n in range(runs):
            unit = f"bench-{v.key}-{producers}p-{n}"
            start_worker(raw, v, unit, concurrency)
            units = {"worker": unit, "broker": "rabbitmq-server"} | (
                {"flower": f"bench-flower-{v.key}"} if v.events else {}
            )
            try:
                measured.append(
                    measure_throughput(raw, unit, f"/etc/edd-bench/v-{v.key}.env", units, producers=producers)
                )
            finally:
                sh(raw, f"systemctl stop {unit}")
    finally:
        if v.events:
            sh(raw, f"systemctl stop bench-flower-{v.key}")
    return measured


def breakdown(raw: sandbox_hosts.SandboxHost, concurrency: int, runs: int = RUNS) -> list[tuple[Variant, list[Run]]]:
    """Each row of `variants` with its runs."""
    return [(v, run_variant(raw, v, concurrency, runs)) for v in variants()]


def summary(runs: list[Run]) -> tuple[Spread, str]:
    """(tasks per second over the runs, a note: publishing time and median CPU ms per task)."""
    rates = Spread(tuple(r.rate for r in runs))
    publishing = Spread(tuple(r.publishing for r in runs))
    cpu = {name: statistics.median(r.cpu_ms[name] for r in runs) for name in runs[0].cpu_ms}
    cpu_text = ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())
    return rates, (
        f"min/median/max {rates.text()}; publishing {publishing.text(1)} s; "
        f"CPU ms/task {cpu_text} (sum {sum(cpu.values()):.2f})"
    )
