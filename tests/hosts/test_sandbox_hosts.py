"""The sandbox hosts are what the deployment tests assume: real systemd hosts, pinned SSH,
isolated links, RabbitMQ installable offline, the EDD stand-in app ready, nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import hosts
from sandbox.image import ensure_image, host_public_key

pytestmark = pytest.mark.hosts

PAIR = ("sbx-a", "sbx-b")
VENV = "/opt/edd-sandbox/venv"
APP = "/opt/edd-sandbox/app"
# The bare app (no config module from the program): Celery's default queue, `celery`.
WORKER = f"{VENV}/bin/celery -A edd worker -n edd-worker-1@%h"


def sh(host: hosts.SandboxHost, command: str, timeout: float = 120) -> str:
    """Run ``command`` on ``host``; fail the test with its output unless it exits 0."""
    done = hosts.run(host, command, timeout=timeout)
    assert done.returncode == 0, f"{host.name}: {command!r} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout.strip()


def test_image_is_cached_and_publishes_its_host_key(hosts_tier):
    rootfs = ensure_image()
    built = (rootfs.parent / "manifest.json").stat().st_mtime_ns
    assert ensure_image() == rootfs  # the second call finds the same image
    assert (rootfs.parent / "manifest.json").stat().st_mtime_ns == built, "a cached image must not be rebuilt"
    assert host_public_key(rootfs).startswith("ssh-ed25519 AAAA")
    manifest = json.loads((rootfs.parent / "manifest.json").read_text())
    assert any(deb.startswith("rabbitmq-server_") for deb in manifest["offline_debs"])
    assert not (rootfs / "etc/hostname").exists()


def test_pid1_is_systemd_with_no_failed_unit(sandbox_hosts):
    for host in sandbox_hosts(*PAIR):
        assert sh(host, "cat /proc/1/comm") == "systemd"
        state = hosts.run(host, "systemctl is-system-running --wait").stdout.strip()
        failed = sh(host, "systemctl list-units --failed --no-legend --plain")
        details = hosts.run(
            host, "systemctl status --no-pager --failed; journalctl -b -p warning --no-pager | tail -30"
        )
        assert (state, failed) == ("running", ""), f"{host.name}: {state}\n{details.stdout}"


def test_hostname_is_the_host_name(sandbox_hosts):
    for host in sandbox_hosts(*PAIR):
        assert sh(host, "hostname") == host.name


def test_pinned_host_key_is_the_one_the_host_serves(sandbox_hosts):
    host, _ = sandbox_hosts(*PAIR)
    served = sh(host, "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
    assert " ".join(served) == host.host_key
    assert sh(host, "whoami") == "root"


def test_wrong_host_key_is_refused(sandbox_hosts, tmp_path):
    host, _ = sandbox_hosts(*PAIR)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{host.address} {other}\n")
    done = subprocess.run(
        [*host.ssh_command(known_hosts=known_hosts), "true"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 255
    assert "Host key verification failed" in done.stderr


def test_hosts_reach_each_other_and_nothing_else(sandbox_hosts):
    """Sandbox hosts reach one another through this machine (workers on one host, the broker
    on another) and have no route anywhere else, like a locked-down production network."""
    first, second = sandbox_hosts(*PAIR)
    assert first.address != second.address
    for host, other in ((first, second), (second, first)):
        gateway = host.address.rsplit(".", 1)[0] + ".1"
        sh(host, f"ping -c 1 -W 2 {gateway}")  # the machine's end of its own link
        assert sh(host, "ip -4 route show default") == "", "a host must have no default route"
        sh(host, f"timeout 5 bash -c 'echo > /dev/tcp/{other.address}/22'")  # the other host's sshd
        # No route: refused locally, nothing is sent (192.0.2.0/24 is a documentation network).
        outside = hosts.run(host, "timeout 5 bash -c 'echo > /dev/tcp/192.0.2.1/80'")
        assert outside.returncode != 0 and "unreachable" in outside.stderr.lower(), outside.stderr


def test_each_host_has_its_own_cgroup_tree(sandbox_hosts):
    # Shared, two hosts' same-named units share one cgroup: units fail at boot (219/CGROUP)
    # when one host removes a cgroup the other is entering, and stops can hit the wrong host.
    first, second = sandbox_hosts(*PAIR)
    trees = [Path(f"/proc/{h.leader_pid}/cgroup").read_text() for h in (first, second)]
    assert trees[0] != trees[1]
    for host in (first, second):
        assert f"/edd-sandbox/{host.name}/" in Path(f"/proc/{host.leader_pid}/cgroup").read_text()


def test_edd_app_is_baked_with_pinned_celery_and_flower(sandbox_hosts):
    host, _ = sandbox_hosts(*PAIR)
    # The app leaves queue and confirms to the program's config module (none here: Celery's defaults).
    probe = (
        "import celery, flower, edd; c = edd.app.conf; "
        "print(celery.__version__, flower.__version__, c.task_default_queue, "
        "c.broker_transport_options, sorted(t for t in edd.app.tasks if t.startswith('edd.')))"
    )
    out = sh(host, f'cd {APP} && {VENV}/bin/python -c "{probe}"')
    assert out == "5.7.0 2.2.0 celery {} ['edd.add', 'edd.retry_once', 'edd.work']"
    report = sh(host, f"cd {APP} && {VENV}/bin/celery -A edd report")  # the CLI finds the app by -A edd
    # The app sets no reliability setting of its own: late acks come from the program's module.
    assert "celery:5.7.0" in report and "task_acks_late" not in report


def test_running_host_is_reused_and_visible_to_other_processes(sandbox_hosts):
    first, _ = sandbox_hosts(*PAIR)
    again = hosts.boot([first.name])[0]
    assert again == first
    status = subprocess.run(
        [sys.executable, "-m", "sandbox", "status"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(hosts.__file__).parents[1],
    )
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    assert rows[first.name]["alive"] and rows[first.name]["pid"] == first.pid


def test_rabbitmq_installs_offline_and_a_worker_runs_edd_add(throwaway_hosts):
    (host,) = throwaway_hosts("sbx-rmq")
    install = sh(host, "DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server", timeout=300)
    assert "Need to get 0 B" in install, "rabbitmq-server must come from the baked apt cache"
    assert sh(host, "systemctl is-active rabbitmq-server") == "active"
    sh(host, f"systemd-run --unit edd-worker -p WorkingDirectory={APP} {WORKER}")
    sh(
        host,
        f"cd {APP} && for i in $(seq 60); do "
        f"{VENV}/bin/celery -A edd inspect ping -d edd-worker-1@$(hostname) >/dev/null 2>&1 && exit 0; "
        "sleep 1; done; exit 1",
        timeout=120,
    )
    assert "edd.add" in sh(host, f"cd {APP} && {VENV}/bin/celery -A edd inspect registered")
    assert sh(host, f"cd {APP} && {VENV}/bin/python -c 'import edd; print(edd.add.delay(2, 3).get(timeout=30))'") == "5"


def test_shutdown_leaves_no_process_link_or_trace_in_the_image(hosts_tier):
    rootfs = ensure_image()
    (host,) = hosts.boot(["sbx-down"])
    link = Path("/sys/class/net/ve-sbx-down")
    assert link.exists()
    sh(host, "echo scratch > /etc/edd-sandbox-scratch")
    hosts.shutdown([host])
    assert not _running(host.pid) and not _running(host.leader_pid)
    assert not link.exists()
    assert "sbx-down" not in {row["name"] for row in hosts.status()}
    assert not (rootfs / "etc/edd-sandbox-scratch").exists(), "a host's writes must not reach the image"


def _running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
