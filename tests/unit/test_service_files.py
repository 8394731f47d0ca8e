"""Env files, Flower's config, systemd units and launchd plists, parsed back."""

import configparser
import plistlib
import shutil
import subprocess

import pytest

from edd_infra.render.celery_commands import flower_argv, worker_argv
from edd_infra.render.launchd_plists import render_daemon_plist
from edd_infra.render.service_files import render_env_file, render_flower_config
from edd_infra.render.systemd_units import render_service_unit
from edd_infra.settings import Tasks
from tests.unit.golden import assert_golden
from tests.unit.samples import HOSTILE_PASSWORDS

ARGV = worker_argv(
    virtualenv="/opt/edd/venv",
    app="edd",
    name="edd-worker-1",
    queues=["edd"],
    concurrency=None,
    autoscale="10,1",
    log_level="info",
    events=True,
)


def unit():
    return render_service_unit(
        description="Celery worker edd-worker-1 (edd-infra)",
        argv=ARGV,
        user="celery",
        group="celery",
        working_directory="/opt/edd/code",
        environment_file="/etc/edd-infra/celery-edd-worker-1.env",
        supplementary_groups=["www-data"],
        stop_timeout=Tasks().stop_timeout,
        graceful_children=True,
    )


def test_worker_argv_matches_seed_and_keeps_secrets_out():
    assert ARGV == [
        "/opt/edd/venv/bin/celery",
        "-A",
        "edd",
        "worker",
        "-Q",
        "edd",
        "-n",
        "edd-worker-1@%h",
        "--loglevel",
        "INFO",
        "--autoscale",
        "10,1",
        "-E",
    ]
    assert flower_argv(virtualenv="/v", app="edd", config_path="/etc/f.py") == [
        "/v/bin/celery",
        "-A",
        "edd",
        "flower",
        "--conf=/etc/f.py",
    ]


def test_unit_parses_and_escapes_percent():
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read_string(unit())
    service = parser["Service"]
    assert service["Type"] == "exec" and service["Restart"] == "always"
    assert service["User"] == "celery" and service["SupplementaryGroups"] == "www-data"
    assert service["EnvironmentFile"] == "/etc/edd-infra/celery-edd-worker-1.env"
    assert "-n edd-worker-1@%%h" in service["ExecStart"]  # systemd's %h would be the home directory
    assert service["NoNewPrivileges"] == "yes" and service["PrivateTmp"] == "yes"
    # A stop lets running tasks finish: SIGTERM to the main process only (its prefork children
    # would die mid-task), for as long as the hard time limit (3600 s) plus 30 s.
    assert service["KillMode"] == "mixed" and service["TimeoutStopSec"] == "3630"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    assert_golden("celery-edd-worker-1.service", unit())


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_verifies(tmp_path):
    path = tmp_path / "celery-edd-worker-1.service"
    path.write_text(unit().replace("/opt/edd/venv/bin/celery", "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert "celery-edd-worker-1.service" not in result.stderr or result.returncode == 0, result.stderr


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_env_file_reads_back_in_sh(tmp_path, password):
    path = tmp_path / "w.env"
    path.write_text(render_env_file({"CELERY_BROKER_URL": password}))
    out = subprocess.run(["sh", "-c", f'. "{path}"; printf %s "$CELERY_BROKER_URL"'], capture_output=True, check=True)
    assert out.stdout.decode() == password


def test_env_file_refuses_newline():
    with pytest.raises(ValueError, match="newline"):
        render_env_file({"K": "a\nb"})


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_flower_config_executes_to_the_configured_values(password):
    text = render_flower_config(
        address="127.0.0.1",
        port=5555,
        url_prefix="",
        basic_auth_user="admin",
        basic_auth_password=password,
        broker_api="http://b:p@127.0.0.1:15672/api/",
        persistent=True,
        db_path="/var/lib/flower/flower.db",
    )
    namespace = {}
    exec(compile(text, "flowerconfig.py", "exec"), namespace)
    assert namespace["basic_auth"] == [f"admin:{password}"]
    assert namespace["address"] == "127.0.0.1" and namespace["port"] == 5555 and namespace["persistent"] is True
    # Workers send events by their own -E; Flower never broadcasts enable_events (unsigned when keyless).
    assert namespace["enable_events"] is False


def test_flower_config_with_tls_serves_https_and_needs_both_files():
    common = dict(
        address="10.0.0.2",
        port=5555,
        url_prefix="",
        basic_auth_user="admin",
        basic_auth_password="pw",
        broker_api="http://127.0.0.1:15672/api/",
        persistent=True,
        db_path="/var/lib/flower/flower.db",
    )
    namespace = {}
    exec(
        render_flower_config(
            **common, certfile="/etc/edd-infra/tls/flower/cert.pem", keyfile="/etc/edd-infra/tls/flower/key.pem"
        ),
        namespace,
    )
    assert (namespace["certfile"], namespace["keyfile"]) == (
        "/etc/edd-infra/tls/flower/cert.pem",
        "/etc/edd-infra/tls/flower/key.pem",
    )
    assert "ca_certs" not in namespace  # no client certificates: logins are basic auth
    plain = {}
    exec(render_flower_config(**common), plain)
    assert "certfile" not in plain and "keyfile" not in plain
    with pytest.raises(ValueError, match="both certfile and keyfile"):
        render_flower_config(**common, certfile="/c.pem")


def test_flower_unit_keeps_its_database_private():
    text = render_service_unit(
        description="Flower",
        argv=["/v/bin/celery", "flower"],
        user="flower",
        group="flower",
        working_directory="/opt/edd/code",
        environment_file="/etc/edd-infra/flower.env",
        state_directory="flower",
        private_state=True,
    )
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read_string(text)
    service = parser["Service"]
    assert (service["User"], service["Group"]) == ("flower", "flower")
    assert (service["StateDirectory"], service["StateDirectoryMode"], service["UMask"]) == ("flower", "0700", "0077")
    assert "UMask" not in unit()  # workers keep systemd's default
    job = plistlib.loads(
        render_daemon_plist(
            label="org.celeryq.flower",
            argv=["/v/bin/celery"],
            user="flower",
            group="flower",
            working_directory="/",
            environment_file=None,
            log_path="/var/log/celery/flower.log",
            umask=0o077,
        ).encode()
    )
    assert job["Umask"] == 0o077


def test_plist_loads_with_absolute_paths_and_no_secret():
    text = render_daemon_plist(
        label="org.celeryq.edd-worker-1",
        argv=ARGV,
        user="celery",
        group="celery",
        working_directory="/opt/edd/code",
        environment_file="/etc/edd-infra/w.env",
        log_path="/var/log/celery/edd-worker-1.log",
    )
    job = plistlib.loads(text.encode())
    assert job["Label"] == "org.celeryq.edd-worker-1" and job["KeepAlive"] and job["RunAtLoad"]
    shell = job["ProgramArguments"]
    assert shell[:2] == ["/bin/sh", "-c"]
    assert ". /etc/edd-infra/w.env" in shell[2]
    assert "exec /opt/edd/venv/bin/celery -A edd worker" in shell[2]
    assert all(p.startswith("/") for p in (job["WorkingDirectory"], job["StandardOutPath"]))
    assert_golden("org.celeryq.edd-worker-1.plist", text)
