"""The definitions backup and restore scripts, run against fake rabbitmqctl/systemctl/date:
what a sysadmin finds in the backup directory, and what a restore does to the node."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess

import pytest

from edd_infra.render import broker_backups
from edd_infra.render.broker_backups import BACKUP_DIR, NODE_COPY, backup_script, backup_timer, restore_script
from edd_infra.render.host_scripts import MANIFEST_DIR

EXPORT = '{"users": [{"name": "edd-infra-admin", "password_hash": "abc"}], "vhosts": [{"name": "/edd"}]}'


def fake_tools(tmp_path, export: str = EXPORT, users: str = "guest\t[administrator]\nedd-infra-admin\t[]") -> dict:
    """PATH with fake rabbitmqctl (answers, logs its arguments), systemctl, chown and a date
    that moves one second a call; returns the environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls"
    tools = {
        "rabbitmqctl": f"""echo "$*" >> {log}
case "$*" in
  *export_definitions*) printf '%s\\n' '{export}' ;;
  *list_users*) printf '%s\\n' '{users}' ;;
  *list_queues*) echo edd ;;
  *import_definitions*) cp "${{3}}" {tmp_path}/imported ;;
  *eval*) echo 2 ;;
esac""",
        "install": 'eval "dst=\\${$#}"; cp "$7" "$dst"',
        "systemctl": "exit 0",
        "chown": "exit 0",
        "date": f"n=$(cat {tmp_path}/clock 2>/dev/null || echo 0); echo $((n + 1)) > {tmp_path}/clock; "
        "echo 20261206T0000$(printf %02d $n)Z",
    }
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")


def run(text: str, tmp_path, env, *args: str) -> subprocess.CompletedProcess:
    text = (
        text.replace(BACKUP_DIR, str(tmp_path / "backups"))
        .replace(NODE_COPY, str(tmp_path / "node-copy"))
        .replace(MANIFEST_DIR, str(tmp_path / "manifests"))
    )
    return subprocess.run(["sh", "-c", text, "sh", *args], capture_output=True, text=True, env=env)


def deployed(tmp_path, manifest: str = "abc  /etc/edd-infra/flowerconfig.py\n") -> str:
    """A manifest edd-infra left on the host; the 12-digit digest backups are named by."""
    (tmp_path / "manifests").mkdir(exist_ok=True)
    (tmp_path / "manifests" / "flower-service.sha256").write_text(manifest)
    return hashlib.sha256(manifest.encode()).hexdigest()[:12]


def backups(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "backups").glob("definitions-*.json"))


def test_a_backup_is_root_only_named_by_time_and_deployment_and_only_the_newest_are_kept(tmp_path):
    env = fake_tools(tmp_path)
    digest = deployed(tmp_path)
    script = backup_script(keep=2)
    for _ in range(3):
        result = run(script, tmp_path, env)
        assert result.returncode == 0, result.stderr
        assert "(2 bindings of transient queues left out)" in result.stdout
    assert backups(tmp_path) == [
        f"definitions-20261206T000001Z-{digest}.json",
        f"definitions-20261206T000002Z-{digest}.json",
    ]
    newest = tmp_path / "backups" / backups(tmp_path)[-1]
    assert newest.read_text().strip() == EXPORT
    assert stat.S_IMODE(newest.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "backups").stat().st_mode) == 0o700
    assert not list((tmp_path / "backups").glob(".export.*")) and not (tmp_path / "node-copy").exists()
    assert "rabbit_json:encode" in (tmp_path / "calls").read_text()  # the bindings filter ran in the node


def test_an_export_without_users_is_not_kept(tmp_path):
    env = fake_tools(tmp_path, export="Error: unable to connect")
    result = run(backup_script(keep=2), tmp_path, env)
    assert result.returncode == 1 and "the export has no users: not kept" in result.stderr
    assert backups(tmp_path) == [] and not list((tmp_path / "backups").glob(".export.*"))


RESTORE = dict(vhost="/edd", queue="edd", start_timeout=10)


@pytest.mark.parametrize("guest, deletes", [(True, True), (False, False)])
def test_restore_imports_the_newest_backup_and_deletes_guest(tmp_path, guest, deletes):
    env = fake_tools(tmp_path, users="guest\t[administrator]" if guest else "edd-infra-admin\t[]")
    (tmp_path / "backups").mkdir()
    digest = deployed(tmp_path)
    for name, text in (
        (f"definitions-20261201T000000Z-{digest}.json", "old"),
        (f"definitions-20261205T000000Z-{digest}.json", "new"),
    ):
        (tmp_path / "backups" / name).write_text(text)
    result = run(restore_script(**RESTORE), tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "imported").read_text() == "new"
    assert ("delete_user guest" in (tmp_path / "calls").read_text()) is deletes
    assert "differed" not in result.stderr


def test_restore_of_a_named_file_from_another_deployment_says_so(tmp_path):
    env = fake_tools(tmp_path)
    digest = deployed(tmp_path)
    other = tmp_path / "definitions-20261201T000000Z-ffffffffffff.json"
    other.write_text("other")
    result = run(restore_script(**RESTORE), tmp_path, env, str(other))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "imported").read_text() == "other"
    assert f"was taken when edd-infra's files on this host differed (now {digest})" in result.stderr


def test_restore_without_a_backup_fails_before_touching_the_node(tmp_path):
    env = fake_tools(tmp_path)
    result = run(restore_script(**RESTORE), tmp_path, env)
    assert result.returncode == 1 and "no backup to restore" in result.stderr
    assert not (tmp_path / "calls").exists()


def test_the_timer_catches_up_after_downtime_and_the_scripts_are_root_only():
    timer = backup_timer("*-*-* 03:00")
    assert "OnCalendar=*-*-* 03:00" in timer and "Persistent=true" in timer
    files = {
        f.path: f
        for f in broker_backups.backup_files(schedule="daily", keep=3, vhost="/edd", queue="edd", start_timeout=10)
    }
    assert {p: f.mode for p, f in files.items()} == {
        "/usr/local/sbin/edd-infra-backup": "0700",
        "/usr/local/sbin/edd-infra-restore": "0700",
        "/etc/systemd/system/edd-infra-backup.service": "0644",
        "/etc/systemd/system/edd-infra-backup.timer": "0644",
    }


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed (apt-get install shellcheck)")
def test_backup_and_restore_scripts_pass_shellcheck(tmp_path):
    files = broker_backups.backup_files(schedule="daily", keep=3, vhost="/edd", queue="edd", start_timeout=10)
    for f in files[:2]:
        path = tmp_path / f.path.rsplit("/", 1)[1]
        path.write_text(f.text)
        result = subprocess.run(["shellcheck", "-s", "sh", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
