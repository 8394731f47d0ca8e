"""Celery's PostgreSQL result backend, end to end on a real sandbox host (issue 10).

Debian's PostgreSQL (15 on Debian 12, 17 on 13) is installed on the host from the image's offline apt cache, a role
`celery` gets a password with every printable ASCII character (quotes, `%`, `@`, `:`, `/`,
space, backslash), and the database `edd_results` (owned by postgres) gets Celery's tables,
made by the owner, plus exactly the grants `result_backend_grants` prints. Then a hardened
(TLS + signing) sandbox stack is deployed with the secret `resultBackend` built by
`postgresql_url`, and a task's result is checked in the table and read back by another
process that cannot reach the broker at all.

The role is created from a SCRAM-SHA-256 verifier computed here: the SQL travels on psql's
stdin, and the plain password never reaches the server (nor its log), only the worker's
environment file through the program.

Tests run in file order against one deployment; the fixture destroys it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import shlex
import time
import uuid
from urllib.parse import quote

import pytest

from sandbox import hosts as sandbox_hosts
from sandbox.deploy import PRINTABLE_ASCII, WORKER, configure, send_task
from sandbox.image import APP_TARGET, VENV
from edd_infra.render.result_backend import postgresql_url, result_backend_grants
from edd_infra.workspace import ProjectStack
from tests.engine.conftest import PASSPHRASE

pytestmark = pytest.mark.hosts
HOST = "edd-pg"  # short: "ve-" + name (+ "-N" under xdist) is a link name
ROLE, DATABASE = "celery", "edd_results"
ENV_FILE = f"/etc/edd-infra/celery-{WORKER}.env"
TIMINGS: dict[str, float] = {}


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802/7677, as pg_authid keeps
    it). Given as the role's PASSWORD, the server stores it as is: it never sees the password.
    SASLprep leaves printable ASCII unchanged, so the client's proof matches this verifier."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def sh(host, command: str, input: str | None = None, timeout: float = 300) -> str:
    result = sandbox_hosts.run(host, command, input=input, timeout=timeout)
    assert result.returncode == 0, f"{command}: {result.stderr[-1500:]}"
    return result.stdout


def psql(host, sql: str, database: str = "postgres") -> str:
    """Run `sql` as postgres (peer auth on the socket); the SQL goes on stdin, never argv."""
    return sh(host, f"cd /tmp && runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -d {database}", input=sql)


def install_postgresql(host) -> None:
    """Debian's postgresql from the image's apt cache (the host has no route to a registry),
    as broker_install installs rabbitmq-server; the package starts cluster <version>/main."""
    sh(host, "export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q postgresql </dev/null", timeout=600)
    sh(
        host,
        "for i in $(seq 60); do pg_isready -q -h /var/run/postgresql && exit 0; sleep 1; done; pg_lsclusters; exit 1",
        timeout=120,
    )


def prepare_database(host, password: str) -> None:
    """Role, database, Celery's tables (made by the owner) and the role's grants."""
    psql(
        host,
        f"CREATE ROLE {ROLE} LOGIN PASSWORD '{scram_verifier(password)}';\n"
        f"CREATE DATABASE {DATABASE} OWNER postgres;\n"
        # Without this, PUBLIC's default CONNECT would make the grant below moot.
        f"REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC;\n",
    )
    # The owner makes the tables the way a worker does at backend setup (Celery's own models),
    # with postgres's URL: peer authentication on the socket, no password anywhere.
    owner_url = f"db+postgresql://postgres@/{DATABASE}?host=/var/run/postgresql"
    code = f"from celery import Celery; Celery(backend={owner_url!r}).backend"
    sh(host, f"cd /tmp && runuser -u postgres -- {VENV}/bin/python -c {shlex.quote(code)}", timeout=120)
    psql(host, result_backend_grants(ROLE, database=DATABASE), database=DATABASE)


@pytest.fixture(scope="module")
def deployed(request, plugins_ready, sandbox_hosts, tmp_path_factory):
    started = time.monotonic()
    (host,) = sandbox_hosts(HOST)
    TIMINGS["boot host"] = time.monotonic() - started
    password = secrets.token_urlsafe(12) + PRINTABLE_ASCII
    url = postgresql_url(user=ROLE, password=password, host="127.0.0.1", database=DATABASE)
    started = time.monotonic()
    install_postgresql(host)
    TIMINGS["install postgresql (offline)"] = time.monotonic() - started
    started = time.monotonic()
    prepare_database(host, password)
    TIMINGS["role, database, tables, grants"] = time.monotonic() - started

    work = tmp_path_factory.mktemp("pg")
    (work / "state").mkdir()
    stack = ProjectStack(f"pg{uuid.uuid4().hex[:6]}", work, f"file://{work / 'state'}", PASSPHRASE)
    configure(stack, host, hardened=True)
    stack.set_secret("resultBackend", url)
    output: list[str] = []
    started = time.monotonic()
    result = stack.stack.up(on_output=output.append, color="never")
    TIMINGS["pulumi up"] = time.monotonic() - started
    assert result.summary.result == "succeeded"
    yield {"host": host, "stack": stack, "password": password, "url": url, "output": output}
    started = time.monotonic()
    try:
        # The queue and exchange are protected; this removal is deliberate.
        stack.cli_run("state", "unprotect", "--all", "--yes", check=False)
        stack.stack.destroy(color="never")
    finally:
        TIMINGS["destroy"] = time.monotonic() - started
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print("\n[result backend timings] " + ", ".join(f"{k}: {v:.1f} s" for k, v in TIMINGS.items()))


def test_postgresql_runs_from_the_offline_cache_with_least_privilege(deployed):
    host = deployed["host"]
    (version,) = sh(host, "ls /etc/postgresql").split()  # the release's one PostgreSQL
    assert sh(host, f"systemctl is-active postgresql@{version}-main").strip() == "active"
    # Tables owned by postgres; the role may use rows and sequences, may not create anything.
    checks = psql(
        host,
        f"""
        SELECT string_agg(tableowner, ',' ORDER BY tablename) FROM pg_tables
          WHERE tablename IN ('celery_taskmeta', 'celery_tasksetmeta');
        SELECT has_database_privilege('{ROLE}', '{DATABASE}', 'CONNECT'),
               has_schema_privilege('{ROLE}', 'public', 'CREATE'),
               has_table_privilege('{ROLE}', 'celery_taskmeta', 'SELECT, INSERT, UPDATE, DELETE'),
               has_sequence_privilege('{ROLE}', 'task_id_sequence', 'USAGE'),
               has_database_privilege('{ROLE}', '{DATABASE}', 'CREATE');
        SELECT rolpassword LIKE 'SCRAM-SHA-256$4096:%' FROM pg_authid WHERE rolname = '{ROLE}';
        """,
        database=DATABASE,
    ).split()
    assert checks == ["postgres,postgres", "t|f|t|t|f", "t"], checks


def test_worker_environment_carries_the_backend(deployed):
    host = deployed["host"]
    assert sh(host, f"stat -c '%a %U %G' {ENV_FILE}").strip() == "640 root celery"
    lines = sh(host, f"cat {ENV_FILE}").splitlines()
    assert f"CELERY_RESULT_BACKEND={shlex.quote(deployed['url'])}" in lines
    # The worker's banner names the database backend, password masked.
    journal = sh(host, f"journalctl -u celery-{WORKER} --no-pager -o cat")
    assert f"postgresql://{ROLE}:**@127.0.0.1:5432/{DATABASE}" in journal, journal[-2000:]


SEND = "from edd import add; r = add.delay(20, 22); print(r.id, r.get(timeout=60))"
# Another process, whose broker URL points nowhere: the result can only come from PostgreSQL.
READ = """
import sys
from celery.result import AsyncResult
from edd import app
result = AsyncResult(sys.argv[1], app=app)
print(type(app.backend).__name__, result.state, result.get(timeout=30))
"""


def on_host_python(code: str, *args: str, broker: str | None = None) -> str:
    """The venv's python in the app directory with the worker's env file loaded (so no
    secret is on a command line); `broker` overrides CELERY_BROKER_URL."""
    override = f"CELERY_BROKER_URL={shlex.quote(broker)}; " if broker else ""
    return (
        f"set -a; . {ENV_FILE}; {override}set +a; cd {APP_TARGET} && "
        f"{VENV}/bin/python -c {shlex.quote(code)} {shlex.join(args)}"
    )


def test_task_result_lands_in_postgresql_and_another_process_reads_it(deployed):
    host = deployed["host"]
    started = time.monotonic()
    assert send_task(host, 2, 3) == "5"  # the stock helper, waiting over the database backend
    task_id, value = sh(host, on_host_python(SEND), timeout=120).split()
    TIMINGS["two task round trips"] = time.monotonic() - started
    assert value == "42"
    task_id = str(uuid.UUID(task_id))  # a plain UUID: safe to put in SQL below
    row = psql(
        host,
        f"SELECT status, convert_from(result, 'UTF8') FROM celery_taskmeta WHERE task_id = '{task_id}';",
        database=DATABASE,
    ).strip()
    assert row == "SUCCESS|42", row
    assert int(psql(host, "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS';", database=DATABASE)) >= 2
    read = sh(host, on_host_python(READ, task_id, broker="amqp://nobody:nothing@127.0.0.1:9//"), timeout=120)
    assert read.split() == ["DatabaseBackend", "SUCCESS", "42"], read


def test_password_on_no_command_line_and_in_no_log(deployed):
    host, password = deployed["host"], deployed["password"]
    forms = {
        "plain": password,
        "percent-quoted": quote(password, safe=""),
        "random part": password[: -len(PRINTABLE_ASCII)],
    }
    ps = sh(host, "ps -eo args")
    assert "celery -A edd worker" in ps  # the worker is running while we look
    places = {
        "ps -eo args": ps,
        "journal": sh(host, "journalctl --no-pager -o cat"),
        "postgresql log": sh(host, "cat /var/log/postgresql/*.log"),
        "engine output": "".join(deployed["output"]),
        "stack export": deployed["stack"].export(),
    }
    for place, text in places.items():
        for name, form in forms.items():
            assert form not in text, f"the {name} password is in {place}"
