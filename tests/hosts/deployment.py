"""A real deployment of the sandbox stack on a sandbox host, for tests of the hosts tier.

`deployment(host, work_dir)` makes a stack of this project in its own directory and file
backend, configures it for `host` (sandbox.deploy.configure: random hostile secrets, set on
stdin), runs a real `up`, yields a `Deployment`, and destroys the stack (protected queue
included) when the block ends, failed or not. The helpers look at the host as a user would: the broker's management API
(`queue_stats`), the worker's journal (`completed_tasks`), a producer on the host
(`start_producer`, `PRODUCER`). No secret goes on a command line: the broker URL comes from
the worker's environment file on the host, passwords travel on stdin or in HTTP headers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shlex
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

from edd_infra.render.broker_urls import amqp_url
from edd_infra.workspace import ProjectStack
from sandbox import hosts as sandbox_hosts
from sandbox.deploy import WORKER, configure, tls_dir
from sandbox.image import APP_TARGET, VENV
from tests.engine.conftest import PASSPHRASE

WORKER_UNIT = f"celery-{WORKER}"
WORKER_ENV = f"/etc/edd-infra/{WORKER_UNIT}.env"
UNITS = ("rabbitmq-server", WORKER_UNIT, "flower")


class Deployment:
    """One stack deployed on one host: run things there, `up` again, read what it shows."""

    def __init__(self, host: sandbox_hosts.SandboxHost, stack: ProjectStack, secrets: dict[str, str]):
        self.host, self.stack, self.secrets = host, stack, secrets
        self.every_secret = dict(secrets)  # old values too, for leak scans
        self.output: list[str] = []
        self.ca_file: str | None = None  # the sandbox CA when the management API uses TLS

    def sh(self, command: str, check: bool = True, timeout: float = 180, input: str | None = None) -> str:
        result = sandbox_hosts.run(self.host, command, timeout=timeout, input=input)
        if check:
            assert result.returncode == 0, f"{self.host.name}: {command}: {result.stderr}"
        return result.stdout

    def up(self, **kwargs):
        """`up` with the engine's output kept in `self.output`; returns (result, seconds)."""
        started = time.monotonic()
        result = self.stack.stack.up(on_output=self.output.append, color="never", **kwargs)
        return result, time.monotonic() - started

    def main_pid(self, unit: str) -> str:
        return self.sh(f"systemctl show -p MainPID --value {unit}").strip()

    def management_get(self, path: str, user: str = "edd-infra-admin", password: str | None = None) -> dict:
        """GET /api/<path> of the management API (the address Pulumi uses), as the admin by default."""
        password = self.secrets["adminPassword"] if password is None else password
        # With broker.tls the API is HTTPS on broker.tls.managementPort (15671), plain on 15672.
        where = f"https://{self.host.address}:15671" if self.ca_file else f"http://{self.host.address}:15672"
        request = urllib.request.Request(f"{where}/api/{path}")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return json.loads(response.read())


@contextlib.contextmanager
def deployment(host: sandbox_hosts.SandboxHost, work_dir: Path, prefix: str = "t", **config) -> Iterator[Deployment]:
    """Deploy the sandbox stack on `host` for real; destroy it when the block ends, failed or not."""
    (work_dir / "state").mkdir(exist_ok=True)
    stack = ProjectStack(f"{prefix}{uuid.uuid4().hex[:6]}", work_dir, f"file://{work_dir / 'state'}", PASSPHRASE)
    configure(stack, host, **config)
    secrets = {k.split(":", 1)[1]: v.value for k, v in stack.stack.get_all_config().items() if v.secret}
    d = Deployment(host, stack, secrets)
    if config.get("hardened"):
        d.ca_file = str(work_dir / tls_dir(stack) / "ca.pem")
    try:
        result, seconds = d.up()
        assert result.summary.result == "succeeded", result.summary
        d.fresh_up_seconds = seconds
        yield d
    finally:
        destroy(stack)


def destroy(stack: ProjectStack) -> None:
    """Destroy a test's stack, protected queue included; a failure is printed, not raised (the
    hosts go at session end anyway, and the test's own failure is the one to see)."""
    try:
        # The queue and exchange are protected from accidental deletion; this one is deliberate.
        stack.cli_run("state", "unprotect", "--all", "--yes", check=False)
        stack.stack.destroy(color="never")
    except Exception as error:  # noqa: BLE001
        print(f"\ndestroy of {stack.name} failed: {str(error)[-300:]}", file=sys.stderr)


def print_figures(request, title: str, figures: dict[str, float]) -> None:
    """One line of measured seconds on the terminal, past pytest's output capture (a report,
    not an assertion: speed goals are checked by `make bench`)."""
    if not figures:
        return
    print_line(request, f"{title} (s): " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))


def print_line(request, line: str) -> None:
    """One line on the terminal, past pytest's output capture (figures that are not seconds)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + line, flush=True)


def secret_forms(secrets: dict[str, str]) -> set[str]:
    """Every secret as it could show up: raw, percent-quoted, base64, JSON-escaped (twice, as
    in `stack export`), and with Go's escaping of & < >."""
    forms = set()
    for value in secrets.values():
        if len(value) < 8:
            continue
        once = json.dumps(value)[1:-1]
        go = once.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
        forms |= {
            value,
            quote(value, safe=""),
            base64.b64encode(value.encode()).decode(),
            once,
            json.dumps(once)[1:-1],
            go,
            json.dumps(go)[1:-1],
        }
    return forms


def amqp_login(d: Deployment, user: str, password: str) -> bool:
    """Open an AMQP connection on the host; the URL travels on stdin, not argv."""
    code = "import sys; from kombu import Connection; Connection(sys.stdin.read(), connect_timeout=5).connect()"
    url = amqp_url(user, password, "127.0.0.1", 5672, "/edd")
    result = sandbox_hosts.run(d.host, f"{VENV}/bin/python -c {shlex.quote(code)}", input=url, timeout=60)
    return result.returncode == 0


def queue_stats(d: Deployment, queue: str = "edd") -> dict:
    """The queue as the management API shows it (messages, messages_unacknowledged, consumers...).
    Its counters are sampled every 5 s and `message_stats` start again from 0 when the broker restarts."""
    return d.management_get(f"queues/%2Fedd/{queue}")


PRODUCER = '''
"""Publish argv[1] tasks edd.add(i, 1) (or, with argv[5], edd.work(argv[5]): that many seconds)
with ids <argv[2]>-<i>; append each id to argv[3] once the broker confirmed it; argv[4] seconds
between publishes (a steady flow, not a burst).

Messages are persistent and confirmed (the app sets confirm_publish). When the broker goes
away (restart, reboot) a publish raises; like a real producer this one retries it, with the
same id, until it is confirmed, so a task is written down only once the broker has it.
"""
import sys, time
from edd import add, work

total, prefix, out, pace = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
seconds = float(sys.argv[5]) if len(sys.argv) > 5 else None
retries = 0
with open(out, "a") as ids:
    for i in range(total):
        task_id = f"{prefix}-{i}"
        give_up = time.monotonic() + 300
        while True:
            try:
                if seconds is None:
                    add.apply_async((i, 1), task_id=task_id, ignore_result=True)
                else:
                    work.apply_async((seconds,), task_id=task_id, ignore_result=True)
                break
            except Exception as error:  # the broker is restarting: retry the same task
                if time.monotonic() > give_up:
                    raise
                retries += 1
                print(f"retrying {task_id} after {type(error).__name__}", file=sys.stderr, flush=True)
                time.sleep(0.5)
        ids.write(task_id + "\\n")
        ids.flush()
        if pace:
            time.sleep(pace)
print(f"published {total} retries {retries}", flush=True)
'''


class Producer:
    """A PRODUCER process on the host, run with the worker's broker URL (from its env file)."""

    def __init__(self, d: Deployment, total: int, pace: float = 0.0, work_seconds: float | None = None):
        self.d, self.total = d, total
        self.prefix = f"p{uuid.uuid4().hex[:8]}"
        self.dir = f"/tmp/{self.prefix}"
        code = base64.b64encode(PRODUCER.encode()).decode()
        d.sh(f"mkdir -p {self.dir} && echo {code} | base64 -d > {self.dir}/producer.py")
        self.pid = d.sh(
            f"(set -a; . {WORKER_ENV}; set +a; cd {APP_TARGET}; PYTHONPATH={APP_TARGET}:$PYTHONPATH "
            f"nohup {VENV}/bin/python {self.dir}/producer.py {total} {self.prefix} {self.dir}/ids {pace} "
            f"{'' if work_seconds is None else work_seconds} "
            f"> {self.dir}/out 2> {self.dir}/err < /dev/null & echo $!)"
        ).strip()

    def published(self) -> int:
        return int(self.d.sh(f"cat {self.dir}/ids 2>/dev/null | wc -l").strip())

    def running(self) -> bool:
        return sandbox_hosts.run(self.d.host, f"kill -0 {self.pid}", timeout=30).returncode == 0

    def output(self) -> str:
        return self.d.sh(f"cat {self.dir}/out {self.dir}/err")

    def wait(self, timeout: float = 600) -> str:
        """Wait until it exits; return its stdout (`published N retries R`); fail if it did not publish all."""
        deadline = time.monotonic() + timeout
        while self.running():
            assert time.monotonic() < deadline, (
                f"producer still running after {timeout:.0f} s:\n{self.output()[-2000:]}"
            )
            time.sleep(1)
        out = self.d.sh(f"cat {self.dir}/out").strip()
        assert out.startswith(f"published {self.total} "), f"producer failed:\n{self.output()[-2000:]}"
        return out

    def wait_published(self, count: int, timeout: float = 300) -> None:
        """Block until `count` tasks are published: the flow is under way."""
        deadline = time.monotonic() + timeout
        while self.published() < count:
            assert time.monotonic() < deadline, (
                f"{count} tasks not published in {timeout:.0f} s:\n{self.output()[-2000:]}"
            )
            time.sleep(0.5)

    def all_ids(self, timeout: float = 600) -> set[str]:
        """Wait until the producer is done; the id of every task (each one the broker confirmed)."""
        self.wait(timeout)
        ids = self.ids()
        assert len(ids) == self.total, f"{len(ids)} ids for {self.total} tasks published"
        return ids

    def retries(self) -> int:
        return int(self.d.sh(f"cat {self.dir}/out").split()[-1])

    def ids(self) -> set[str]:
        return set(self.d.sh(f"cat {self.dir}/ids").split())

    def stop(self) -> None:
        """End the producer (by its PID) if it still runs."""
        sandbox_hosts.run(self.d.host, f"kill {self.pid} 2>/dev/null; true", timeout=30)


def completed_tasks(d: Deployment, prefix: str) -> set[str]:
    """Ids of tasks with `prefix` that the worker logged as succeeded (its journal, all boots)."""
    journal = d.sh(f"journalctl -u {WORKER_UNIT} -o cat --no-pager | grep -F '[{prefix}-' || true", timeout=300)
    return set(re.findall(rf"edd\.add\[({re.escape(prefix)}-\d+)\] succeeded", journal))


def wait_all_completed(d: Deployment, ids: set[str], prefix: str, timeout: float = 600) -> float:
    """Wait until every id in `ids` succeeded and the queue holds nothing; return the seconds waited."""
    started = time.monotonic()
    while True:
        done = completed_tasks(d, prefix)
        try:
            stats = queue_stats(d)
        except urllib.error.URLError:  # the management listener comes up a little after the node
            stats = {}
        if ids <= done and stats.get("messages", 1) == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            missing = sorted(ids - done)
            suppressed = d.sh("journalctl --no-pager -o cat | grep -i 'suppressed' | tail -3 || true")
            raise AssertionError(
                f"{len(missing)} of {len(ids)} tasks never completed (e.g. {missing[:5]}); "
                f"queue: {stats.get('messages')} messages, "
                f"{stats.get('messages_unacknowledged')} unacked; journald: {suppressed}"
            )
        time.sleep(3)


# EDD's tasks run for minutes; `edd.work(LONG_TASK_SECONDS)` stands in for them in tests that
# restart, rotate or upgrade something while a task runs.
LONG_TASK_SECONDS = 30


def start_long_task(d, seconds: int = LONG_TASK_SECONDS, ignore_result: bool = False) -> str:
    """Send `edd.work(seconds)` and wait until the worker runs it; return its id."""
    task_id = f"long-{uuid.uuid4().hex[:8]}"
    code = (
        f"from edd import work; work.apply_async(args=({seconds},), task_id={task_id!r}, ignore_result={ignore_result})"
    )
    d.sh(f"set -a; . {WORKER_ENV}; set +a; cd {APP_TARGET} && {VENV}/bin/python -c {shlex.quote(code)}")
    deadline = time.monotonic() + 60
    while f"edd.work[{task_id}] received" not in d.sh(f"journalctl -u {WORKER_UNIT} -o cat --no-pager | tail -200"):
        assert time.monotonic() < deadline, "the worker never received the long task"
        time.sleep(0.5)
    return task_id


def task_journal(d, task_id: str) -> str:
    """The worker's journal lines about one task (all boots)."""
    return d.sh(f"journalctl -u {WORKER_UNIT} -o cat --no-pager | grep -F '{task_id}' || true", timeout=120)


def wait_long_task(d, task_id: str, timeout: float) -> int:
    """How many times the task completed, once it has (0 if not within `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = task_journal(d, task_id).count(f"edd.work[{task_id}] succeeded")
        if runs or time.monotonic() > deadline:
            return runs
        time.sleep(2)


def journal_times(d: Deployment, since: float, pattern: str) -> list[float]:
    """Host clock times of the worker unit's journal lines since `since` that match `pattern`
    (systemd's lines about the unit included)."""
    journal = d.sh(f"journalctl -u {WORKER_UNIT} -o short-unix --no-pager --since=@{int(since)}", timeout=120)
    return [float(line.split()[0]) for line in journal.splitlines() if re.search(pattern, line)]


def host_now(d: Deployment) -> float:
    return float(d.sh("date +%s.%N"))
