"""Faults on a real deployment: SSH cut in the middle of `up`, a host reboot, a broker restart
while tasks flow. Each test asserts what an operator would see, and measures how long the
deployment took to recover (printed at the end of the module).

One deployment on its own sandbox host (`edd-faults`), shared by the tests in file order; each
test puts back what it broke (sshd, a stopped worker) also when it fails. The host's root is an
overlay of the image on disk, so a reboot keeps what was deployed, as a real host's disk does.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from edd_infra.workspace import ROOT
from sandbox import hosts as sandbox_hosts
from sandbox.deploy import configure, send_task
from tests.engine.conftest import PASSPHRASE
from tests.hosts.deployment import (UNITS, WORKER_UNIT, Deployment, Producer, deployment, print_figures, queue_stats,
                                    secret_forms, wait_all_completed)

pytestmark = pytest.mark.hosts
HOST = "edd-faults"
RECOVERY: dict[str, float] = {}


@pytest.fixture(scope="module")
def deployed(plugins_ready, sandbox_hosts, tmp_path_factory, request):
    (host,) = sandbox_hosts(HOST)
    try:
        with deployment(host, tmp_path_factory.mktemp("faults"), prefix="faults") as d:
            RECOVERY["(fresh up, for scale)"] = d.fresh_up_seconds
            yield d
    finally:
        if len(RECOVERY) > 1:
            print_figures(request, "fault recovery", RECOVERY)


# --- the host seen from this machine, without SSH -----------------------------------------

def inside(host: sandbox_hosts.SandboxHost, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `command` in the host's namespaces (nsenter on its PID 1): works while sshd is down."""
    return subprocess.run(["nsenter", "-t", str(host.leader_pid), "-a", "/bin/sh", "-c", command],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def host_processes(host: sandbox_hosts.SandboxHost) -> list[tuple[int, str, str]]:
    """(PID as this machine sees it, comm, argv joined by spaces) of every process on the host."""
    ns = os.readlink(f"/proc/{host.leader_pid}/ns/pid")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != ns:
                continue
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        found.append((int(pid), comm, args))
    return found


def cut_ssh(host: sandbox_hosts.SandboxHost) -> list[int]:
    """Stop sshd on the host and kill every SSH session it serves (by PID): open connections
    drop, new ones are refused. Returns the PIDs killed."""
    stopped = inside(host, "systemctl stop ssh.service")
    assert stopped.returncode == 0, stopped.stderr
    # OpenSSH 9.8+ (Debian 13) serves each session from an `sshd-session` process.
    sessions = [pid for pid, comm, _ in host_processes(host) if comm in ("sshd", "sshd-session", "sshd-auth")]
    for pid in sessions:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return sessions


def restore_ssh(host: sandbox_hosts.SandboxHost, timeout: float = 120) -> float:
    """Start sshd again; return the seconds until an SSH command answers."""
    started = time.monotonic()
    inside(host, "systemctl start ssh.service")
    while sandbox_hosts.run(host, "true", timeout=30).returncode != 0:
        assert time.monotonic() - started < timeout, "sshd did not answer again"
        time.sleep(0.5)
    return time.monotonic() - started


def wait_for(probe, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


# --- what the host holds -------------------------------------------------------------------

def inventory(d: Deployment) -> dict[str, list[str]]:
    """Accounts, units and files a stack could duplicate or leave behind, in host order."""
    return {
        "users": d.sh("getent passwd | cut -d: -f1").split(),
        "groups": d.sh("getent group | cut -d: -f1").split(),
        "units": d.sh("systemctl list-unit-files --no-legend --plain 'celery-*' 'flower*' 'rabbitmq*' "
                      "| cut -d' ' -f1").split(),
        "files": d.sh("find /etc/edd-infra /etc/systemd/system /etc/rabbitmq /var/lib/edd-infra -xdev "
                      "2>/dev/null | sort").split(),
    }


def is_worker_script(comm: str, args: str) -> bool:
    """A shell running the worker's host script (its text names the unit it writes)."""
    return comm in ("sh", "bash", "dash") and WORKER_UNIT in args and "set -eu" in args


def worker_main_processes(d: Deployment) -> int:
    """Celery worker main processes (children of PID 1): one per worker unit."""
    return int(d.sh("ps -eo ppid=,args= | awk '$1 == 1' | grep -c '[c]elery -A edd worker' || true").strip())


# --- the faults ----------------------------------------------------------------------------

def test_ssh_cut_in_the_middle_of_up_fails_clearly_and_a_rerun_converges(deployed):
    """A worker change is being applied when the host's sshd dies and its sessions drop: `up`
    fails naming the resource, with no secret in its text; with sshd back, a rerun waits for the
    cut script (which went on without its session), applies the change once: no duplicate
    account, unit or file, and tasks run."""
    d = deployed
    before = inventory(d)
    configure(d.stack, d.host, worker_concurrency=3)  # a change that restarts the worker
    # The cut `up` runs in a process of its own, as `pulumi up` does: when the engine fails,
    # nothing of that run (its inline program, its SDK state) lingers in this process.
    log = d.stack.work_dir / "cut-up.log"
    code = ("import sys; from edd_infra.workspace import ProjectStack; "
            "s = ProjectStack(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]); "
            "s.stack.up(on_output=print, color='never')")
    backend = d.stack.env["PULUMI_BACKEND_URL"]
    with open(log, "w") as out:
        cut_up = subprocess.Popen([sys.executable, "-c", code, d.stack.name, str(d.stack.work_dir), backend, PASSPHRASE],
                                  cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        # The worker's script runs on the host (it names the unit it writes): cut now.
        wait_for(lambda: any(is_worker_script(comm, args) for _, comm, args in host_processes(d.host)),
                 600, "the worker's script to run on the host")
        cut_at = time.monotonic()
        killed = cut_ssh(d.host)
        assert killed, "no SSH session was open: the cut hit nothing"
        assert sandbox_hosts.run(d.host, "true", timeout=30).returncode == 255  # refused, as for the engine
        cut_up.wait(600)
        RECOVERY["ssh cut: up failed after"] = time.monotonic() - cut_at
    finally:
        RECOVERY["ssh cut: sshd back after"] = restore_ssh(d.host)
        if cut_up.poll() is None:
            cut_up.kill()
            cut_up.wait(60)

    text = log.read_text()
    assert cut_up.returncode != 0, f"up did not fail:\n{text[-3000:]}"
    failed = [line.strip() for line in text.splitlines() if "edd-worker-1-service" in line and "failed" in line]
    assert failed, f"the error does not name the resource that failed:\n{text[-3000:]}"
    print(f"\nengine error after the SSH cut: {failed[0][:200]}...")
    forms = secret_forms(d.secrets)
    assert not [f for f in forms if f in text], "a secret is in the failed up's output or error"

    # The script went on without its session: whether it got to restart the worker or not,
    # the failed update was not recorded, so the rerun applies the change again.
    orphan = "--concurrency 3" in d.sh(f"systemctl show -p ExecStart --value {WORKER_UNIT}")
    print(f"after the cut the host {'already ran' if orphan else 'did not yet run'} the new worker")
    started = time.monotonic()
    seen = len(d.output)
    result, _ = d.up()
    RECOVERY["ssh cut: rerun up"] = time.monotonic() - started
    assert result.summary.result == "succeeded"
    changes = result.summary.resource_changes
    assert set(changes) == {"same", "update"}, changes  # nothing created, replaced or deleted
    updated = re.findall(r"~\s+\S+ (\S+) updated ", "".join(d.output[seen:]))
    print(f"the rerun updated {updated}")
    assert "edd-worker-1-service" in updated, "".join(d.output[seen:])[-3000:]
    # The script of the cut `up` went on without its session: the rerun waited for it instead
    # of interleaving with it, so nothing of it runs (or rolls back) after the rerun succeeded.
    stragglers = [args[:80] for _, comm, args in host_processes(d.host) if is_worker_script(comm, args)]
    assert not stragglers, f"a script of the cut up still runs after the rerun succeeded: {stragglers}"
    after = inventory(d)
    for kind, names in after.items():
        assert len(names) == len(set(names)), f"duplicate {kind}: {sorted(n for n in names if names.count(n) > 1)}"
        assert sorted(names) == sorted(before[kind]), f"{kind} changed: {set(names) ^ set(before[kind])}"
    assert d.sh("find / -xdev -name '*.edd-infra-old' 2>/dev/null; true").strip() == ""
    assert worker_main_processes(d) == 1
    assert "--concurrency 3" in d.sh(f"systemctl cat {WORKER_UNIT}")
    for unit in UNITS:
        assert d.sh(f"systemctl is-active {unit}").strip() == "active"
    assert send_task(d.host, 40, 2) == "42"
    again, _ = d.up()
    assert set(again.summary.resource_changes) == {"same"}, again.summary.resource_changes


def test_reboot_brings_every_service_back_and_runs_the_queued_tasks(deployed):
    """Tasks wait in the queue with no worker; the host reboots. Broker, worker and Flower come
    back on their own (enabled, active), and every queued task runs."""
    d = deployed
    total = 300
    d.sh(f"systemctl stop {WORKER_UNIT}")
    try:
        producer = Producer(d, total)
        producer.wait(300)
        ids = producer.ids()
        assert len(ids) == total
        wait_for(lambda: queue_stats(d).get("messages") == total, 60, f"{total} messages in the queue", every=1)
        boot_id = d.sh("cat /proc/sys/kernel/random/boot_id").strip()

        started = time.monotonic()
        d.host = sandbox_hosts.reboot(d.host)  # `systemctl reboot` on the host, then it boots again
        RECOVERY["reboot: ssh back after"] = time.monotonic() - started
        assert d.sh("cat /proc/sys/kernel/random/boot_id").strip() != boot_id
        states = {}

        def all_active():
            out = sandbox_hosts.run(d.host, f"systemctl is-active {' '.join(UNITS)}", timeout=30).stdout.split()
            states.update(zip(UNITS, out))
            return out == ["active"] * len(UNITS)

        wait_for(all_active, 300, f"{', '.join(UNITS)} active after the reboot ({states})", every=0.5)
        RECOVERY["reboot: all services active after"] = time.monotonic() - started
        for unit in UNITS:
            assert d.sh(f"systemctl is-enabled {unit}").strip() == "enabled"
        # RabbitMQ stopped cleanly at the reboot (rabbitmqctl stop, not a kill after it failed),
        # and the worker started once the broker was up, not into connection retries.
        stop = d.sh("journalctl -b -1 -u rabbitmq-server -o cat --no-pager")
        assert "Stopped rabbitmq-server" in stop and "Failed with result" not in stop, stop[-1500:]
        retries = d.sh(f"journalctl -b -u {WORKER_UNIT} -o cat --no-pager | grep 'Cannot connect' || true")
        assert not retries.strip(), f"the worker started before the broker:\n{retries[-1000:]}"
        wait_all_completed(d, ids, producer.prefix, timeout=600)
        RECOVERY["reboot: queued tasks all done after"] = time.monotonic() - started
        with urllib.request.urlopen(f"http://{d.host.address}:5555/healthcheck", timeout=10) as response:
            assert response.status == 200
        assert d.sh("systemctl list-units --failed --no-legend --plain").strip() == ""
        assert send_task(d.host, 1, 2) == "3"
        again, _ = d.up()  # the rebooted host is what the stack describes
        assert set(again.summary.resource_changes) == {"same"}, again.summary.resource_changes
    finally:
        with contextlib.suppress(Exception):  # the worker was stopped by hand: put it back
            d.sh(f"systemctl start {WORKER_UNIT}", check=False, timeout=120)


def test_broker_restart_while_tasks_flow_loses_no_task(deployed):
    """2,000 tasks (persistent, publisher confirms, acks late) flow while rabbitmq-server
    restarts. The producer retries a publish that fails while the broker is away, as a real
    producer does; the worker reconnects on its own (same process); every task completes."""
    d = deployed
    total = 2000
    worker_pid = d.main_pid(WORKER_UNIT)
    producer = Producer(d, total, pace=0.005)
    try:
        wait_for(lambda: producer.published() >= total // 5, 300, "the first tasks to be published", every=0.5)
        assert producer.running(), "the producer finished before the restart: nothing flowed through it"
        restart_at = float(d.sh("date +%s.%N"))
        started = time.monotonic()
        d.sh("systemctl restart rabbitmq-server", timeout=300)  # Type=notify: returns once it is up
        RECOVERY["broker restart: broker back after"] = time.monotonic() - started
        producer.wait(600)
        ids = producer.ids()
        assert len(ids) == total
        wait_all_completed(d, ids, producer.prefix, timeout=600)
        RECOVERY["broker restart: all tasks done after"] = time.monotonic() - started
        RECOVERY["broker restart: producer retries"] = producer.retries()

        assert d.main_pid(WORKER_UNIT) == worker_pid, "the worker was restarted, not reconnected"
        journal = d.sh(f"journalctl -u {WORKER_UNIT} -o short-unix --no-pager --since=@{int(restart_at)}")
        connected = [float(line.split()[0]) for line in journal.splitlines()
                     if "Connected to amqp://" in line and float(line.split()[0]) > restart_at]
        assert connected, f"the worker never reconnected:\n{journal[-2000:]}"
        RECOVERY["broker restart: worker consuming again after"] = connected[0] - restart_at
        stats = queue_stats(d)
        assert (stats["messages"], stats["messages_unacknowledged"]) == (0, 0), stats
        assert send_task(d.host, 2, 2) == "4"
    finally:
        producer.stop()
