"""Host scripts run for real in a scratch directory: idempotent writes and the secret bundle."""

import os
import shlex
import socket
import subprocess
import sys

import pytest

from edd_infra.health_report import worker_report
from edd_infra.render import host_scripts
from edd_infra.render.host_scripts import FileSpec
from tests.conftest import ROOT
from tests.unit.samples import HOSTILE_PASSWORDS
from tests.unit.script_fixtures import run_script

me = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
grp = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()


def run(script, stdin=""):
    return subprocess.run(
        ["sh", "-c", script + '\necho "changed=$changed"'], input=stdin, capture_output=True, text=True
    )


def test_write_file_is_idempotent(tmp_path):
    f = FileSpec(str(tmp_path / "etc" / "a.conf"), "x = 1\n$notavar `nocmd` 'q'\n", "0640", me, grp)
    first = run(host_scripts.script(host_scripts.write_file(f)))
    assert first.returncode == 0, first.stderr
    assert first.stdout.endswith("changed=1\n")
    assert (tmp_path / "etc" / "a.conf").read_text() == f.text
    assert oct(os.stat(f.path).st_mode & 0o777) == "0o640"
    again = run(host_scripts.script(host_scripts.write_file(f)))
    assert again.stdout.endswith("changed=0\n")


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_secret_bundle_round_trip(tmp_path, password):
    files = [
        FileSpec(str(tmp_path / "s.env"), f"K={password}\n", "0600", me, grp),
        FileSpec(str(tmp_path / "t.py"), f"p = {password!r}\n", "0640", me, grp),
    ]
    script = host_scripts.script(host_scripts.READ_SECRET_FILES)
    assert password not in script
    result = run(script, host_scripts.secret_bundle(files))
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout + result.stderr
    for f in files:
        assert open(f.path, encoding="utf-8").read() == f.text
    assert oct(os.stat(files[0].path).st_mode & 0o777) == "0o600"


def test_bundle_refuses_spaces_in_attributes():
    with pytest.raises(ValueError):
        host_scripts.secret_bundle([FileSpec("/etc/a b", "x")])


def test_service_scripts_mention_no_secret_and_undo_each_other():
    install = host_scripts.service_install(manager="systemd", name="celery-w", definition="[Unit]\n")
    remove = host_scripts.service_remove(manager="systemd", name="celery-w", files=["/etc/edd-infra/celery-w.env"])
    assert "systemctl enable -q celery-w" in install and "systemctl restart celery-w" in install
    assert "systemctl disable --now -q celery-w" in remove
    assert "rm -f /etc/systemd/system/celery-w.service /etc/edd-infra/celery-w.env" in remove
    assert "rmdir /etc/systemd/system /etc/edd-infra 2>/dev/null || true" in remove


def test_removing_a_service_removes_the_bytecode_python_left_beside_its_config_module(tmp_path):
    """A producer run as root with the worker's env file compiles the config module into
    __pycache__; the service's delete takes that away too, then the emptied directories."""
    module_dir = tmp_path / "etc" / "edd-infra" / "celery" / "celery-w"
    (module_dir / "__pycache__").mkdir(parents=True)
    module = module_dir / "edd_infra_celeryconfig.py"
    module.write_text("broker_transport_options = {'confirm_publish': True}\n")
    (module_dir / "__pycache__" / "edd_infra_celeryconfig.cpython-311.pyc").write_bytes(b"\0")
    text = host_scripts.deactivate("launchd", "org.celeryq.w", [str(module)], caches=[str(module_dir / "__pycache__")])
    result = subprocess.run(["sh", "-c", text.replace("launchctl", "true")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "etc" / "edd-infra" / "celery").exists()


@pytest.mark.parametrize("existing", [False, True])
def test_admin_password_reaches_rabbitmqctl_on_stdin_under_rabbitmq_4s_argument_rules(tmp_path, existing):
    """The rabbitmqctl stand-in reads stdin only with exactly two arguments, as RabbitMQ 4.0's
    wrapper does (a third looks like a password on argv), and keeps what it read."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "users").write_text("guest\n" + ("edd-infra-admin\n" if existing else ""))
    text = host_scripts.broker_admin(user="edd-infra-admin", start_timeout=60)
    password = "pässwörd ünïcode"
    result = run_script(text, tmp_path, stdin=password + "\nrepair-token\n", FAKE=str(fake))
    assert result.returncode == 0, result.stderr
    verb = "change_password" if existing else "add_user"
    assert (fake / "calls").read_text().splitlines() == [
        f"rabbitmqctl {verb} edd-infra-admin",
        "rabbitmqctl -q set_user_tags edd-infra-admin administrator",
        "rabbitmqctl -q delete_user guest",
    ]
    assert (fake / "password.edd-infra-admin").read_text() == password + "\n"
    assert password not in text and "LC_ALL=C.UTF-8" in text


UPGRADES = [
    # installed, target, refused with
    ("3.10.8-1.1+deb12u1", "3.10.8-1.1+deb12u2", None),
    ("3.10.8-1.1+deb12u1", "3.11.28-1", None),
    ("3.13.7-1", "4.0.5-6+deb13u2", None),
    ("4.0.5-6+deb13u2", "4.1.4-1", None),
    (
        "3.10.8-1.1+deb12u1",
        "4.0.5-6+deb13u2",
        "skips a release series: RabbitMQ upgrades one minor series at a time (3.10 -> 3.11)",
    ),
    ("3.12.1-1", "3.13.7-1", None),
    ("4.0.5-6+deb13u2", "4.3.6-1", "skips a release series: RabbitMQ upgrades one minor series at a time (4.0 -> 4.1)"),
    ("4.0.5-6+deb13u2", "3.10.8-1.1+deb12u1", "is a downgrade"),
    ("", "4.0.5-6+deb13u2", None),
]


@pytest.mark.parametrize("installed, target, refused", UPGRADES)
def test_a_version_change_is_refused_unless_rabbitmq_supports_that_upgrade(installed, target, refused):
    result = subprocess.run(
        ["sh", "-c", host_scripts.script(f"installed='{installed}'; target='{target}'", *host_scripts.UPGRADE_PATH)],
        capture_output=True,
        text=True,
    )
    if refused:
        assert result.returncode == 1 and refused in result.stderr, result.stderr
    else:
        assert result.returncode == 0, result.stderr


def test_a_failing_script_puts_the_previous_files_back(tmp_path):
    old = FileSpec(str(tmp_path / "unit.conf"), "good\n", "0640", me, grp)
    assert run(host_scripts.script(host_scripts.write_file(old))).returncode == 0
    new = FileSpec(old.path, "broken\n", "0640", me, grp)
    fresh = FileSpec(str(tmp_path / "new.env"), "x\n", "0600", me, grp)
    failing = host_scripts.script(
        host_scripts.write_file(new),
        host_scripts.write_file(fresh),
        f"on_rollback='echo rolled back > {tmp_path}/rb'",
        "false",
    )
    result = run(failing)
    assert result.returncode != 0 and "rolled back to the previous files" in result.stderr
    assert open(old.path).read() == "good\n" and oct(os.stat(old.path).st_mode & 0o777) == "0o640"
    assert not os.path.exists(fresh.path)
    assert (tmp_path / "rb").read_text() == "rolled back\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rb", "unit.conf"]  # no backup left behind


def test_a_failing_script_keeps_the_new_broker_password_and_puts_the_rest_back(tmp_path):
    """A rotation whose health check fails: the broker already has the new password, so the
    env file keeps it (the old one would lock the service out); the unit goes back."""
    env, unit = str(tmp_path / "w.env"), str(tmp_path / "w.service")
    bundle = [
        FileSpec(env, "URL=amqp://u:old@h\n", "0640", me, grp, keep_on_failure=True),
        FileSpec(unit, "ExecStart=good\n", "0644", me, grp),
    ]
    first = run(host_scripts.script(host_scripts.READ_SECRET_FILES), host_scripts.secret_bundle(bundle))
    assert first.returncode == 0, first.stderr
    bundle = [
        FileSpec(env, "URL=amqp://u:new@h\n", "0640", me, grp, keep_on_failure=True),
        FileSpec(unit, "ExecStart=broken\n", "0644", me, grp),
    ]
    result = run(host_scripts.script(host_scripts.READ_SECRET_FILES, "false"), host_scripts.secret_bundle(bundle))
    assert result.returncode != 0 and "rolled back to the previous files" in result.stderr
    assert open(env).read() == "URL=amqp://u:new@h\n" and open(unit).read() == "ExecStart=good\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.env", "w.service"]  # no backup left behind


def test_a_succeeding_script_leaves_no_backup(tmp_path):
    f = FileSpec(str(tmp_path / "a"), "1\n", "0644", me, grp)
    run(host_scripts.script(host_scripts.write_file(f)))
    run(host_scripts.script(host_scripts.write_file(FileSpec(f.path, "2\n", "0644", me, grp))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"] and open(f.path).read() == "2\n"


DELIVERED = {"broker_transport_options": {"confirm_publish": True}, "task_acks_late": True, "task_time_limit": 3600}


@pytest.mark.parametrize(
    "reply, exit_code, message",
    [
        ({"w1@h": DELIVERED}, 0, ""),
        ({"w1@h": {}}, 1, "worker w1 runs without publisher confirms: its app does not load CELERY_CONFIG_MODULE"),
        (
            {"w1@h": DELIVERED | {"broker_transport_options": {"visibility_timeout": 60}}},
            1,
            "worker w1 runs without publisher confirms",
        ),
        # An app that sets its own acks (early) or a shorter time limit is named setting by setting.
        (
            {"w1@h": DELIVERED | {"task_acks_late": False, "task_time_limit": 60}},
            1,
            "worker w1 runs without the program's Celery settings task_acks_late task_time_limit: its app overrides them",
        ),
        (None, 1, "worker w1 did not answer ping (inspect conf) within 1 s"),
        ("no app", 1, "worker w1: its app edd does not import in"),
    ],
)
def test_worker_health_needs_an_answer_with_publisher_confirms(tmp_path, reply, exit_code, message):
    """The health check of a worker unit, with Celery's app lookup and `runuser` stood in for:
    an answer with confirms passes, one without fails naming the worker, no answer fails when
    the wait is over, an app that does not import says so."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    # The working directory is on the check's sys.path: a stand-in `celery` package there.
    (tmp_path / "celery" / "app").mkdir(parents=True)
    (tmp_path / "celery" / "__init__.py").write_text("")
    (tmp_path / "celery" / "app" / "__init__.py").write_text("")
    conf = None if reply is None or reply == "no app" else next(iter(reply.values()))
    (tmp_path / "celery" / "app" / "utils.py").write_text(
        f"""CONF = {conf!r}
class Inspect:
    def __init__(self, destination):
        self.node = destination[0]
    def conf(self):
        return {{}} if CONF is None else {{self.node: CONF}}
class Control:
    def inspect(self, destination, timeout):
        return Inspect(destination)
class App:
    control = Control()
def find_app(name):
    if {reply == "no app"!r}:
        raise ImportError(name)
    return App()
"""
    )
    (tmp_path / "runuser").write_text('#!/bin/sh\nshift 3\nexec "$@"\n')  # runuser -u USER -- CMD...
    (tmp_path / "runuser").chmod(0o755)
    (tmp_path / "worker.env").write_text("CELERY_BROKER_URL='amqp://u:p@h//edd'\n")
    check = host_scripts.worker_ping(
        env_file=str(tmp_path / "worker.env"),
        user="celery",
        working_directory=str(tmp_path),
        virtualenv=str(tmp_path / "venv"),
        app="edd",
        node="w1",
        wait_seconds=1,
        required={"broker_transport_options.confirm_publish": True, "task_acks_late": True, "task_time_limit": 3600},
    )
    result = subprocess.run(
        ["sh", "-euc", check],
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}"),
    )
    assert result.returncode == exit_code and result.stderr.strip().startswith(message), result.stderr
    # A worker that answered with the settings says so for the `health` output; one that did not, nothing.
    report = worker_report(result.stdout)
    assert report["answered"] == (f"w1@{socket.gethostname()}" if exit_code == 0 else None)


@pytest.mark.parametrize(
    "answer, resets",
    [
        # What `rabbitmqctl eval 'rabbit_nodes:all().'` prints (Erlang quotes atoms with @ and .).
        ("['rabbit@10.0.0.3']", True),  # a node on its own: joins
        ("['rabbit@10.0.0.2','rabbit@10.0.0.3']", False),  # a member already: left alone
        (None, False),  # the CLI failed: never taken for "not a member"
    ],
)
def test_cluster_join_resets_only_a_node_that_says_it_is_not_a_member(tmp_path, answer, resets):
    log = tmp_path / "calls"
    eval_reply = f"echo {shlex.quote(answer)}" if answer else "exit 69"
    tools = {"rabbitmqctl": f'echo "$*" >> {log}\ncase "$*" in *eval*) {eval_reply} ;; esac', "rabbitmq-queues": ""}
    text = host_scripts.cluster_join(seed="rabbit@10.0.0.2", node="rabbit@10.0.0.3", start_timeout=10)
    result = run_script(text, tmp_path, tools=tools)
    calls = log.read_text()
    assert ("-q reset" in calls) is resets, calls
    if answer is None:
        assert result.returncode == 1 and "did not say which cluster it is in: not resetting it" in result.stderr
    else:
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "changed, quorum_ok, expected",
    [
        (True, True, ["await_online_quorum_plus_one", "drain", "restart rabbitmq-server"]),
        (False, True, []),  # nothing to restart: no drain
        (True, False, ["await_online_quorum_plus_one"]),  # a peer is not back: refused, no stop
    ],
)
def test_a_cluster_node_restarts_only_drained_and_only_while_its_peers_hold_quorum(
    tmp_path, changed, quorum_ok, expected
):
    log = tmp_path / "calls"
    tools = {
        "rabbitmq-upgrade": f"echo \"$*\" | awk '{{print $NF}}' >> {log}; "
        f'case "$*" in *await*) exit {0 if quorum_ok else 1} ;; esac',
        "systemctl": f'case "$*" in restart*|stop*) echo "$*" >> {log} ;; esac',
    }
    step = host_scripts.drain_before_stop(30) + '\nif [ "$changed" = 1 ]; then systemctl restart rabbitmq-server; fi'
    text = host_scripts.script(f"changed={int(changed)}; installed=3.10.8; target=3.10.8", step)
    result = run_script(text, tmp_path, tools=tools)
    assert (result.returncode == 0) is quorum_ok, result.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    assert calls == expected
    if not quorum_ok:
        assert "a quorum queue would lose its majority without it" in result.stderr


def test_only_a_clustered_node_is_drained():
    def install(clustered):
        return host_scripts.broker_install(files=[], package_version=None, start_timeout=10, clustered=clustered)

    assert "rabbitmq-upgrade" not in install(False)
    text = install(True)
    assert (
        text.index("rabbitmq-upgrade -q drain")
        < text.index('install_without_start "$target"')
        < text.index("then systemctl restart rabbitmq-server; fi")
    )


@pytest.mark.parametrize("free_bytes, refused", [(10 * 2**40, False), (2**20, True)])
def test_a_host_without_the_free_disk_the_broker_needs_is_refused_before_anything_changes(
    tmp_path, free_bytes, refused
):
    df = f"echo 'Filesystem 1-blocks Used Available Capacity Mounted'\necho '/dev/x 1 1 {free_bytes} 1% /'"
    result = run_script(f"set -eu\n{host_scripts.disk_check(0.4)}\necho checked", tmp_path, tools={"df": df})
    if refused:
        assert result.returncode == 1 and "checked" not in result.stdout
        assert "1 MiB free on /var/lib" in result.stderr and "edd-infra:broker.memoryHighWatermark" in result.stderr
    else:
        assert result.returncode == 0 and "checked" in result.stdout, result.stderr


def test_the_policy_pack_reads_the_bundle_format_the_program_writes():
    """policy/rules.py reads Flower's config out of the secret bundle; both sides must agree."""
    from policy import rules

    bundle = host_scripts.secret_bundle(
        [
            FileSpec("/etc/a.env", "A=1\n", "0640", keep_on_failure=True),
            FileSpec("/etc/edd-infra/flowerconfig.py", "port = 5555\n", "0640"),
        ]
    )
    assert rules.bundle_file(bundle, "/etc/edd-infra/flowerconfig.py") == "port = 5555\n"
    assert rules.bundle_file(bundle, "/etc/missing") is None


def test_a_rolled_back_unit_that_crash_looped_is_started_again(tmp_path):
    """The bad unit hit systemd's start limit while it crash-looped: the rollback clears that
    (reset-failed) before it restarts the unit on the files put back."""
    systemctl = (
        f'echo "$*" >> {tmp_path}/calls\n'
        f'case "$1" in is-active) exit 0 ;; reset-failed) touch {tmp_path}/reset ;; '
        f"restart) [ -f {tmp_path}/reset ] || {{ echo 'Start request repeated too quickly.' >&2; exit 1; }} ;; esac"
    )
    unit = FileSpec(str(tmp_path / "w.service"), "[Service]\nExecStart=/bad\n", "0644", me, grp)
    text = host_scripts.script(host_scripts.write_file(unit), *host_scripts.activate_steps("systemd", "w"), "false")
    result = run_script(text, tmp_path, tools={"systemctl": systemctl})
    assert result.returncode != 0
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[-2:] == ["reset-failed w", "restart w"], calls


@pytest.mark.parametrize(
    "written, waits", [({}, "900"), ({"celery-a": "4530", "celery-b": "700"}, "4530"), ({"celery-a": "junk"}, "900")]
)
def test_scripts_wait_for_the_host_lock_as_long_as_a_worker_may_hold_it(tmp_path, written, waits):
    """A worker's restart waits for its running tasks (up to the hard time limit), holding the
    host lock: every other script on the host waits that long for it, not 15 min."""
    waits_dir = tmp_path / "lock-wait"
    text = host_scripts.service_install(manager="systemd", name="celery-a", definition="", lock_wait=4530)
    assert f"echo 4530 > {host_scripts.LOCK_WAIT}/celery-a" in text
    if written:
        waits_dir.mkdir()
        for name, value in written.items():
            (waits_dir / name).write_text(value + "\n")
    prelude = (
        host_scripts.script("true")
        .replace(host_scripts.LOCK_WAIT, str(waits_dir))
        .replace("/var/run/edd-infra.lock", str(tmp_path / "lock"))
    )
    result = run_script(prelude, tmp_path, tools={"flock": f'echo "$2" > {tmp_path}/waited'})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "waited").read_text().strip() == waits


def test_removing_the_last_file_in_a_subdirectory_removes_the_edd_infra_directory_too(tmp_path):
    """The alert rules live in /etc/edd-infra/prometheus/; when the broker goes last, its
    delete must leave no empty /etc/edd-infra behind (and never touch /etc itself)."""
    root = tmp_path / "etc"
    rules = root / "edd-infra" / "prometheus" / "edd-infra.rules.yml"
    rules.parent.mkdir(parents=True)
    rules.write_text("groups: []\n")
    (root / "hostname").write_text("h\n")
    text = host_scripts.remove_files(["/etc/edd-infra/prometheus/edd-infra.rules.yml"]).replace("/etc", str(root))
    subprocess.run(["sh", "-c", text], check=True)
    assert sorted(p.name for p in root.iterdir()) == ["hostname"]


def test_private_files_takes_group_and_other_bits_from_an_old_database_and_no_match_is_fine(tmp_path):
    (tmp_path / "flower.db").write_text("x")
    (tmp_path / "flower.db.dat").write_text("x")
    for f in tmp_path.iterdir():
        f.chmod(0o644)
    run = subprocess.run(
        [
            "sh",
            "-eu",
            "-c",
            host_scripts.private_files(f"{tmp_path}/flower.db*")
            + "\n"
            + host_scripts.private_files(f"{tmp_path}/none.db*"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in tmp_path.iterdir()} == {
        "flower.db": "0o600",
        "flower.db.dat": "0o600",
    }


def test_http_probe_verifies_https_against_the_given_ca():
    text = host_scripts.http_ok(virtualenv="/v", url="https://10.0.0.2:5555/healthcheck", ca_file="/etc/ca.pem")
    assert " https://10.0.0.2:5555/healthcheck /etc/ca.pem 2>&1)" in text and "create_default_context(cafile=" in text
    assert "tail -n 1 >&2" in text  # the last error (why a certificate was refused) is shown
    assert " http://127.0.0.1:5555/healthcheck 2>&1)" in host_scripts.http_ok(
        virtualenv="/v", url="http://127.0.0.1:5555/healthcheck"
    )


def test_rendered_scripts_are_the_same_in_every_process():
    """Each `pulumi up` is a new Python process with its own hash seed: a script whose text
    followed set order would differ from one run to the next, and every run would be a change.
    (The broker's removal list: two of its directories tie on depth and length.)"""
    paths = [
        "/etc/systemd/system/rabbitmq-server.service.d/a.conf",
        "/etc/systemd/system/epmd.socket.d/a.conf",
        "/etc/rabbitmq/conf.d/a.conf",
        "/etc/systemd/system/x.service",
        "/var/lib/edd-infra/a",
        "/var/lib/rabbitmq/.erlang.cookie",
        "/etc/rabbitmq/tls/ca.pem",
        "/etc/rabbitmq/rabbitmq.conf",
    ]
    code = f"from edd_infra.render import host_scripts; print(host_scripts.remove_files({paths!r}))"
    texts = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONHASHSEED=str(seed)),
        ).stdout
        for seed in range(8)
    }
    assert len(texts) == 1, texts


def test_indenting_the_steps_changes_no_file_text_message_or_embedded_code(monkeypatch):
    """Steps are indented line by line except inside quotes and heredocs: bash parses each
    function the same indented as flat (a file's text, a continued message, Python in -c)."""
    conf = FileSpec("/etc/rabbitmq/conf.d/40.conf", "  indented = 1\n'quote\n")
    renders = {
        "worker": lambda: host_scripts.service_install(
            manager="systemd",
            name="celery-w",
            definition="[Service]\n  ExecStart=/x\n",
            health=host_scripts.worker_ping(
                env_file="/e", user="u", working_directory="/w", virtualenv="/v", app="a", node="n", required={}
            )
            + "\n"
            + host_scripts.http_report(virtualenv="/v", url="http://127.0.0.1:5555/"),
        ),
        "broker": lambda: host_scripts.broker_install(
            files=[conf], package_version=None, start_timeout=10, rabbitmq4_conf=conf, clustered=True
        ),
        "shovel": lambda: host_scripts.shovel_start(
            ca=conf, vhost="/edd", queue="edd", drain_timeout=60, start_timeout=10
        ),
    }

    def functions(text):
        defs = text.split("trap finish EXIT\n", 1)[1].rsplit("\n}\n", 1)[0] + "\n}\n"
        return subprocess.run(
            ["bash", "-c", 'eval "$1"; declare -f', "_", defs], capture_output=True, text=True, check=True
        ).stdout

    real = host_scripts.indent
    for name, render in renders.items():
        indented = render()
        monkeypatch.setattr(host_scripts, "indent", lambda body, pad="  ": real(body, ""))
        flat = render()
        monkeypatch.setattr(host_scripts, "indent", real)
        assert indented != flat and functions(indented) == functions(flat), name


def test_a_step_with_an_unterminated_quote_is_refused():
    with pytest.raises(ValueError):
        host_scripts.indent("echo 'open")
    with pytest.raises(ValueError):
        host_scripts.step("x", "two\nlines", "true")
