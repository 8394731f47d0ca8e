"""Faults on a real deployment: SSH cut in the middle of `up`, a host reboot, a broker restart
while tasks flow; a 30 s task in flight through a config change that restarts its worker and
through reboots; a disk alarm while a producer publishes. Each test asserts what an operator
would see, and measures how long the deployment took to recover (printed at the end of the module).

One deployment on its own sandbox host (`edd-faults`), shared by the tests in file order; each
test puts back what it broke (sshd, a stopped worker) also when it fails. The host's root is an
overlay of the image on disk, so a reboot keeps what was deployed, as a real host's disk does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from edd_infra.workspace import ROOT
from sandbox import hosts as sandbox_hosts
from sandbox.deploy import configure, send_task
from sandbox.image import VENV
from tests.engine.conftest import PASSPHRASE
from tests.hosts.deployment import (
    LONG_TASK_SECONDS,
    UNITS,
    WORKER_UNIT,
    Deployment,
    Producer,
    deployment,
    host_now,
    journal_times,
    print_figures,
    queue_stats,
    secret_forms,
    start_long_task,
    task_journal,
    wait_all_completed,
    wait_long_task,
)

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
    stopped = sandbox_hosts.inside(host, "systemctl stop ssh.service")
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
    sandbox_hosts.inside(host, "systemctl start ssh.service")
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
        "units": d.sh(
            "systemctl list-unit-files --no-legend --plain 'celery-*' 'flower*' 'rabbitmq*' | cut -d' ' -f1"
        ).split(),
        "files": d.sh(
            "find /etc/edd-infra /etc/systemd/system /etc/rabbitmq /var/lib/edd-infra -xdev 2>/dev/null | sort"
        ).split(),
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
    code = (
        "import sys; from edd_infra.workspace import ProjectStack; "
        "s = ProjectStack(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]); "
        "s.stack.up(on_output=print, color='never')"
    )
    backend = d.stack.env["PULUMI_BACKEND_URL"]
    with open(log, "w") as out:
        cut_up = subprocess.Popen(
            [sys.executable, "-c", code, d.stack.name, str(d.stack.work_dir), backend, PASSPHRASE],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        # The worker's script runs on the host (it names the unit it writes): cut now.
        wait_for(
            lambda: any(is_worker_script(comm, args) for _, comm, args in host_processes(d.host)),
            600,
            "the worker's script to run on the host",
        )
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
        # Flower answers where the stack put it (loopback in this plain config: asked on the host).
        flower = d.stack.stack.outputs()["flowerUrl"].value
        check = f"import urllib.request; print(urllib.request.urlopen('{flower}healthcheck', timeout=10).status)"
        assert d.sh(f"{VENV}/bin/python -c {shlex.quote(check)}").strip() == "200"
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
        ids = producer.all_ids()
        wait_all_completed(d, ids, producer.prefix, timeout=600)
        RECOVERY["broker restart: all tasks done after"] = time.monotonic() - started
        RECOVERY["broker restart: producer retries"] = producer.retries()

        assert d.main_pid(WORKER_UNIT) == worker_pid, "the worker was restarted, not reconnected"
        journal = d.sh(f"journalctl -u {WORKER_UNIT} -o short-unix --no-pager --since=@{int(restart_at)}")
        connected = [
            float(line.split()[0])
            for line in journal.splitlines()
            if "Connected to amqp://" in line and float(line.split()[0]) > restart_at
        ]
        assert connected, f"the worker never reconnected:\n{journal[-2000:]}"
        RECOVERY["broker restart: worker consuming again after"] = connected[0] - restart_at
        stats = queue_stats(d)
        assert (stats["messages"], stats["messages_unacknowledged"]) == (0, 0), stats
        assert send_task(d.host, 2, 2) == "4"
    finally:
        producer.stop()


# --- a long task in flight through a fault -------------------------------------------------


def succeeded_counts(d: Deployment, prefix: str) -> Counter:
    """How many times each task id with `prefix` succeeded, by the worker's journal (all boots)."""
    journal = d.sh(f"journalctl -u {WORKER_UNIT} -o cat --no-pager | grep -F '[{prefix}-' || true", timeout=300)
    return Counter(re.findall(rf"edd\.add\[({re.escape(prefix)}-\d+)\] succeeded", journal))


def test_a_tasks_change_that_restarts_the_worker_lets_a_long_task_in_flight_finish_once(deployed):
    """A 30 s task is running when `up` applies a `tasks` change (softTimeLimit), which rewrites
    the worker's Celery config and restarts it. The restart waits for the task (SIGTERM to the
    main process only: warm shutdown): the task succeeds once, no process is lost, and `up`
    returns only after the task ended. The config is put back afterwards (also on failure)."""
    d = deployed
    pid = d.main_pid(WORKER_UNIT)
    since = host_now(d)
    task_id = start_long_task(d, ignore_result=True)
    d.stack.set_plain({"tasks": {"softTimeLimit": 3000}})  # default 3300: a change the worker runs with
    try:
        result, seconds = d.up()
        up_done = host_now(d)
        assert result.summary.result == "succeeded"
        RECOVERY["tasks change: up with a 30 s task running"] = seconds
        assert d.main_pid(WORKER_UNIT) != pid, "the change did not restart the worker: nothing was tested"
        assert "task_soft_time_limit = 3000" in d.sh(
            f"cat /etc/edd-infra/celery/{WORKER_UNIT}/edd_infra_celeryconfig.py"
        )

        assert wait_long_task(d, task_id, LONG_TASK_SECONDS * 4) == 1
        journal = task_journal(d, task_id)
        assert journal.count(f"edd.work[{task_id}] received") == 1, journal  # not redelivered: it ran once
        lost = journal_times(d, since, "WorkerLostError|exited with 'signal")
        assert not lost, d.sh(f"journalctl -u {WORKER_UNIT} -o cat --no-pager --since=@{int(since)} | tail -60")

        received = journal_times(d, since, rf"edd\.work\[{task_id}\] received")[0]
        finished = journal_times(d, since, rf"edd\.work\[{task_id}\] succeeded")[0]
        stopping = journal_times(d, since, r"Stopping celery-")
        stopped = journal_times(d, since, r"Stopped celery-")
        assert len(stopping) == 1 and len(stopped) == 1, (stopping, stopped)  # one restart, by the up
        # The stop began while the task ran, and the old worker exited only after it finished:
        # the restart took at least the task's remaining time, and `up` returned after it.
        assert received < stopping[0] < finished <= stopped[0] <= up_done, (received, stopping, finished, stopped)
        RECOVERY["tasks change: task time left when the stop began"] = received + LONG_TASK_SECONDS - stopping[0]
        RECOVERY["tasks change: worker stop took"] = stopped[0] - stopping[0]
        assert send_task(d.host, 5, 6) == "11"
    finally:
        d.stack.stack.remove_config("edd-infra:tasks")
        back, _ = d.up()
        assert back.summary.result == "succeeded"
    assert "task_soft_time_limit = 3300" in d.sh(f"cat /etc/edd-infra/celery/{WORKER_UNIT}/edd_infra_celeryconfig.py")
    again, _ = d.up()
    assert set(again.summary.resource_changes) == {"same"}, again.summary.resource_changes


def wait_services_back(d: Deployment, boot_id: str, started: float, label: str) -> None:
    """After a reboot: a new boot, every unit active (RECOVERY figure `<label>: all services active after`)."""
    assert d.sh("cat /proc/sys/kernel/random/boot_id").strip() != boot_id
    states: dict[str, str] = {}

    def all_active():
        out = sandbox_hosts.run(d.host, f"systemctl is-active {' '.join(UNITS)}", timeout=30).stdout.split()
        states.update(zip(UNITS, out))
        return out == ["active"] * len(UNITS)

    wait_for(all_active, 300, f"{', '.join(UNITS)} active after the reboot ({states})", every=0.5)
    RECOVERY[f"{label}: all services active after"] = time.monotonic() - started


def queue_drained(d: Deployment) -> None:
    """The `edd` queue holds nothing, ready or unacked (after a reboot the management API shows
    the queue's counters only once it sampled them)."""
    stats: dict = {}

    def empty():
        stats.update(queue_stats(d))
        return stats.get("messages") == 0 and stats.get("messages_unacknowledged") == 0

    wait_for(empty, 60, f"an empty edd queue ({stats})", every=1)


def test_a_reboot_waits_for_a_long_task_in_flight_which_completes_once(deployed):
    """The worker's host reboots (`systemctl reboot`) while a 30 s task runs. The worker stops
    as in any restart (SIGTERM to its main process, which waits for the task; RabbitMQ stops only
    after it): the task finishes and is acked before the host goes down, so it completes exactly
    once and is not given out again after the boot, and the reboot takes the task's remaining time.

    Within systemd's limit for a reboot: reboot.target has JobTimeoutSec=30min with
    JobTimeoutAction=reboot-force on Debian 12 and 13, shorter than TimeoutStopSec (timeLimit +
    30 s, 3630 s by default); the next test shows a task cut by that limit."""
    d = deployed
    since = host_now(d)
    boot_id = d.sh("cat /proc/sys/kernel/random/boot_id").strip()
    task_id = start_long_task(d, ignore_result=True)
    received = journal_times(d, since, rf"edd\.work\[{task_id}\] received")[0]
    started = time.monotonic()
    d.host = sandbox_hosts.reboot(d.host)
    RECOVERY["reboot with a 30 s task: ssh back after"] = time.monotonic() - started
    wait_services_back(d, boot_id, started, "reboot with a 30 s task")

    assert wait_long_task(d, task_id, LONG_TASK_SECONDS * 4) == 1
    journal = task_journal(d, task_id)
    assert journal.count(f"edd.work[{task_id}] received") == 1, journal  # not given out again after the boot
    lost = journal_times(d, since, "WorkerLostError|exited with 'signal")
    assert not lost, d.sh(f"journalctl -u {WORKER_UNIT} -o cat --no-pager --since=@{int(since)} | tail -60")
    # It finished in the boot that was going down, before its worker stopped and before the host
    # rebooted: the reboot waited for it.
    previous = d.sh(f"journalctl -b -1 -u {WORKER_UNIT} -o short-unix --no-pager --since=@{int(since)}")
    assert f"edd.work[{task_id}] succeeded" in previous, previous[-2000:]
    finished = journal_times(d, since, rf"edd\.work\[{task_id}\] succeeded")[0]
    stopping = journal_times(d, since, r"Stopping celery-")
    stopped = journal_times(d, since, r"Stopped celery-")
    assert stopping and stopped and stopping[0] < finished <= stopped[0], (stopping, finished, stopped)
    RECOVERY["reboot with a 30 s task: task time left at the stop"] = received + LONG_TASK_SECONDS - stopping[0]
    RECOVERY["reboot with a 30 s task: worker stop took"] = stopped[0] - stopping[0]
    queue_drained(d)
    assert send_task(d.host, 7, 8) == "15"


def test_a_reboot_forced_past_its_job_timeout_cuts_a_long_task_which_runs_again_once(deployed):
    """What happens past systemd's reboot limit (reboot.target JobTimeoutSec, 30 min on Debian:
    a task with more time left than that, under the default timeLimit of 3600 s). The limit is
    shortened to 10 s for this boot only (a runtime drop-in in /run, which the reboot itself
    removes): the forced reboot kills the worker with its 30 s task, the task was not acked, and
    after the boot the broker gives it out again: it starts twice and completes exactly once."""
    d = deployed
    dropin = "/run/systemd/system/reboot.target.d/50-edd-infra-test.conf"
    assert d.sh("systemctl show -p JobTimeoutUSec -p JobTimeoutAction --value reboot.target").split() == [
        "30min",
        "reboot-force",
    ]
    since = host_now(d)
    boot_id = d.sh("cat /proc/sys/kernel/random/boot_id").strip()
    rebooted = False
    try:
        d.sh(
            f"mkdir -p {dropin.rsplit('/', 1)[0]} && printf '[Unit]\\nJobTimeoutSec=10s\\n' > {dropin} "
            "&& systemctl daemon-reload"
        )
        assert d.sh("systemctl show -p JobTimeoutUSec --value reboot.target").strip() == "10s"
        task_id = start_long_task(d, ignore_result=True)
        started = time.monotonic()
        d.host = sandbox_hosts.reboot(d.host)
        rebooted = True
        RECOVERY["forced reboot: ssh back after"] = time.monotonic() - started
        wait_services_back(d, boot_id, started, "forced reboot")
        # /run went with the boot: the host's own limit is back.
        assert d.sh("systemctl show -p JobTimeoutUSec --value reboot.target").strip() == "30min"

        assert wait_long_task(d, task_id, LONG_TASK_SECONDS * 4) == 1
        RECOVERY["forced reboot: task done after"] = time.monotonic() - started
        journal = task_journal(d, task_id)
        assert journal.count(f"edd.work[{task_id}] received") == 2, journal  # cut, then given out again
        previous = d.sh(f"journalctl -b -1 -u {WORKER_UNIT} -o cat --no-pager --since=@{int(since)}")
        assert f"edd.work[{task_id}] succeeded" not in previous, previous[-2000:]  # the first run was cut
        # It was the reboot's job timeout that cut it (systemd's words in the old boot's journal).
        shutdown = d.sh(
            f"journalctl -b -1 -o cat --no-pager --since=@{int(since)} | grep -Ei 'timed out|forcibl' || true"
        )
        assert "Forcibly rebooting: job timed out" in shutdown, shutdown
        queue_drained(d)
    finally:
        if not rebooted:  # the reboot did not happen: take the drop-in away by hand
            with contextlib.suppress(Exception):
                d.sh(f"rm -f {dropin} && systemctl daemon-reload", check=False)


# --- a disk alarm while producers publish --------------------------------------------------


def disk_alarm_raised(d: Deployment) -> bool:
    """The broker's own word: a resource alarm for free disk on this node."""
    alarms = d.sh("rabbitmq-diagnostics -q alarms", timeout=60)
    return "disk" in alarms.lower()


def configured_disk_free_limit(d: Deployment) -> str:
    """The free-disk limit the node runs with, as `rabbitmqctl set_disk_free_limit` takes it:
    `mem_relative <r>` (what the program configures) or a number of bytes."""
    env = d.sh("rabbitmqctl -q environment", timeout=60)
    relative = re.search(r"\{disk_free_limit,\s*\{mem_relative,\s*([0-9.]+)\}\}", env)
    if relative:
        return f"mem_relative {relative.group(1)}"
    absolute = re.search(r"\{disk_free_limit,\s*(\d+)\}", env)
    assert absolute, f"no disk_free_limit in the node's environment:\n{env[-2000:]}"
    return absolute.group(1)


def connection_states(d: Deployment, pid: str) -> list[str]:
    """The broker's state (running, blocking, blocked...) of each AMQP connection process `pid`
    on the host holds, matched by its local port."""
    sockets = d.sh(f"ss -Htnp state established '( dport = :5672 )' | grep 'pid={pid},' || true")
    ports = {line.split()[2].rsplit(":", 1)[1] for line in sockets.splitlines()}
    rows = json.loads(d.sh("rabbitmqctl -q list_connections peer_port state --formatter json", timeout=60))
    return [row["state"] for row in rows if str(row["peer_port"]) in ports]


def test_a_disk_alarm_blocks_publishers_and_loses_no_task(deployed):
    """Producers publish (persistent, publisher confirms) while the broker's free-disk limit is
    raised above the disk's free space at runtime (`rabbitmqctl set_disk_free_limit`, no config
    change): RabbitMQ raises its disk alarm and blocks publishing connections. A publish then
    waits for its confirm: the producer reports no task as accepted while the alarm lasts, and
    none fails. When the limit is put back the producer goes on, and every task it was told the
    broker accepted runs exactly once. The worker keeps running throughout."""
    d = deployed
    total, hold = 600, 15.0
    status = json.loads(d.sh("rabbitmq-diagnostics -q status --formatter json", timeout=60))
    assert not status.get("alarms"), status.get("alarms")
    limit_bytes, free = status["disk_free_limit"], status["disk_free"]
    restore = configured_disk_free_limit(d)
    producer = Producer(d, total, pace=0.02)
    try:
        wait_for(lambda: producer.published() >= 100, 300, "the first tasks to be published", every=0.5)
        try:
            d.sh(f"rabbitmqctl -q set_disk_free_limit {free + 100 * 2**30}", timeout=60)  # 100 GiB above what is free
            wait_for(lambda: disk_alarm_raised(d), 60, "the broker's disk alarm", every=0.5)
            alarm_at = time.monotonic()
            assert producer.running(), "the producer finished before the alarm: nothing was blocked"
            time.sleep(2)  # publishes the broker had read before the alarm get their confirms
            before = producer.published()
            assert before < total
            states = wait_for(
                lambda: [s for s in connection_states(d, producer.pid) if s == "blocked"],
                30,
                "the producer's connection to be blocked",
                every=1,
            )
            print(f"\nthe producer's connections during the alarm: {states}")
            samples = []
            while time.monotonic() - alarm_at < hold:
                samples.append(producer.published())
                assert producer.running(), f"the producer gave up during the alarm:\n{producer.output()[-2000:]}"
                time.sleep(1)
            assert set(samples) == {before}, f"tasks were reported accepted during the disk alarm: {samples}"
            assert disk_alarm_raised(d)
            assert d.management_get("nodes")[0]["disk_free_alarm"] is True  # what the management UI shows
        finally:
            d.sh(f"rabbitmqctl -q set_disk_free_limit {restore}", check=False, timeout=60)
        cleared_at = time.monotonic()
        wait_for(lambda: not disk_alarm_raised(d), 60, "the disk alarm to clear", every=0.5)
        wait_for(lambda: producer.published() > before, 60, "publishes to go on after the alarm", every=0.2)
        RECOVERY["disk alarm: publishes blocked for"] = time.monotonic() - alarm_at
        RECOVERY["disk alarm: publishes on again after the clear"] = time.monotonic() - cleared_at
        ids = producer.all_ids()
        wait_all_completed(d, ids, producer.prefix, timeout=600)
        RECOVERY["disk alarm: all tasks done after the clear"] = time.monotonic() - cleared_at
        RECOVERY["disk alarm: producer retries"] = producer.retries()
        counts = succeeded_counts(d, producer.prefix)
        assert set(counts) == ids and set(counts.values()) == {1}, {i: n for i, n in counts.items() if n != 1}
        queue_drained(d)
    finally:
        producer.stop()
    after = json.loads(d.sh("rabbitmq-diagnostics -q status --formatter json", timeout=60))
    assert after["disk_free_limit"] == limit_bytes and not after.get("alarms"), (after["disk_free_limit"], limit_bytes)
    again, _ = d.up()  # the node runs with what the stack describes
    assert set(again.summary.resource_changes) == {"same"}, again.summary.resource_changes
