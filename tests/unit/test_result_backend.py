"""Result backend URLs through SQLAlchemy's parser and Celery's loader; the validator; the grants."""

from urllib.parse import quote, unquote

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.app.backends import by_url
from celery.backends.database import DatabaseBackend
from celery.backends.database.session import ResultModelBase
from celery.backends.rpc import RPCBackend
from sqlalchemy.engine import make_url

from edd_infra.render.result_backend import (
    NONE,
    POSTGRESQL_SCHEMES,
    RPC,
    postgresql_url,
    result_backend_grants,
    result_backend_problems,
)
from tests.unit.samples import HOSTILE_PASSWORDS

KEY = "edd-infra:resultBackend"
ALL_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x20, 0x7F))
PASSWORDS = HOSTILE_PASSWORDS + [ALL_PRINTABLE_ASCII]


@pytest.mark.parametrize("password", PASSWORDS)
def test_url_round_trips_through_celerys_loader_and_sqlalchemy(password):
    url = postgresql_url(
        user=f"cel:ery/{password}", password=password, host="db.example.org", port=5433, database=f"edd {password}"
    )
    assert result_backend_problems(url, KEY) == []
    backend_cls, sa_url = by_url(url)
    assert backend_cls is DatabaseBackend
    app = Celery("t", result_backend=url)
    app.conf.database_create_tables_at_setup = False  # Celery 5.7 would connect to create the tables
    backend = app.backend
    assert isinstance(backend, DatabaseBackend) and backend.url == sa_url
    parsed = make_url(backend.url)
    assert (parsed.drivername, parsed.host, parsed.port) == ("postgresql", "db.example.org", 5433)
    assert (parsed.username, parsed.password, parsed.database) == (f"cel:ery/{password}", password, f"edd {password}")


def test_ipv6_host_and_driver_schemes():
    assert make_url(by_url(postgresql_url(user="u", password="p", host="::1", database="edd"))[1]).host == "::1"
    for scheme in POSTGRESQL_SCHEMES:
        url = postgresql_url(user="u", password="p", host="h", database="edd", scheme=scheme)
        assert result_backend_problems(url, KEY) == []
        backend_cls, sa_url = by_url(url)
        assert backend_cls is DatabaseBackend
        assert make_url(sa_url).get_backend_name() == "postgresql"


def test_rpc_and_none_are_allowed():
    assert result_backend_problems(RPC, KEY) == [] and result_backend_problems(NONE, KEY) == []
    assert by_url(RPC)[0] is RPCBackend


@pytest.mark.parametrize("password", PASSWORDS)
def test_an_unquoted_password_is_accepted_only_when_sqlalchemy_reads_it_back_exactly(password):
    url = f"db+postgresql://celery:{password}@db.example.org:5432/edd"
    problems = result_backend_problems(url, KEY)
    if not problems:  # %XX in a URL someone typed is an escape: SQLAlchemy decodes it, as it should
        assert make_url(by_url(url)[1]).password == unquote(password)
    for message in problems:
        assert message.startswith(f"{KEY}: ") and password not in message and quote(password, safe="") not in message


def test_raw_at_and_space_are_among_the_refused():
    assert result_backend_problems("db+postgresql://celery:p@ss@h/edd", KEY)
    assert make_url("postgresql://celery:p@ss@h/edd").password != "p@ss"  # why it is refused
    assert result_backend_problems("db+postgresql://celery:p ss@h/edd", KEY)


GOOD = "db+postgresql://celery:pw@db.example.org:5432/edd"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("db+postgresql://celery:pw@:5432/edd", "has no host"),
        ("db+postgresql://celery:pw@/edd", "has no host"),
        ("db+postgresql://celery:pw@db.example.org:0/edd", "port must be a number from 1 to 65535"),
        ("db+postgresql://celery:pw@db.example.org:65536/edd", "port must be a number from 1 to 65535"),
        ("db+postgresql://celery:pw@db.example.org:5x32/edd", "port must be a number from 1 to 65535"),
        ("db+postgresql://celery:pw@[::1/edd", "not a valid [IPv6] address"),
        ("db+postgresql://celery:pw@[db.example.org]:5432/edd", "not a valid [IPv6] address"),
        ("db+postgresql://celery:pw@db.example.org:5432", "has no database"),
        ("db+postgresql://celery:pw@db.example.org:5432/", "has no database"),
        ("db+postgresql://db.example.org:5432/edd", "has no USER@ part"),
        ("db+postgresql://:pw@db.example.org:5432/edd", "the user is empty"),
        ("db+postgresql://celery:p@w@db.example.org/edd", "raw '@'"),
        ("db+postgresql://celery:p#w@db.example.org/edd", "must be percent-quoted"),
        ("db+postgresql://celery:p%zzw@db.example.org/edd", "must be percent-quoted"),
        ("db+postgresql://celery:p%0Aw@db.example.org/edd", "decodes to a newline"),
        ("db+postgresql://celery:pw@db.example.org/ed d", "database name holds a character"),
        ("db+postgresql://celery:pw@db.example.org/edd?ssl mode=x", "query"),
        ("redis://h:6379/0", "scheme 'redis' is not supported"),
        ("postgresql://celery:pw@db.example.org/edd", "needs the db+ prefix"),
        ("db+mysql://celery:pw@db.example.org/edd", "scheme 'db+mysql' is not supported"),
        ("rpc://db.example.org", "rpc:// takes nothing"),
        ("", "is not a URL"),
        ("None", "is not a URL"),
        (GOOD + "\n", "non-printable"),
    ],
)
def test_bad_values_are_refused_naming_the_key_and_what_is_allowed(value, expected):
    problems = result_backend_problems(value, KEY)
    assert problems and all(p.startswith(f"{KEY}: ") for p in problems), problems
    assert expected in " ".join(problems), problems
    assert "pw" not in " ".join(problems)


def test_a_good_url_has_no_problems_and_every_problem_is_reported():
    assert result_backend_problems(GOOD, KEY) == []
    assert result_backend_problems(GOOD + "?sslmode=verify-full&application_name=celery", KEY) == []
    problems = result_backend_problems("db+postgresql://celery:pw@:0/", KEY)
    assert len(problems) == 3, problems  # no host, bad port, no database: all at once


def test_the_schemes_message_names_what_is_allowed():
    (message,) = result_backend_problems("amqp://x", KEY)
    assert "db+postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE" in message and "rpc://" in message and "none" in message


def test_builder_refuses_what_cannot_be_a_postgresql_url():
    with pytest.raises(ValueError, match="port"):
        postgresql_url(user="u", password="p", host="h", database="d", port=0)
    with pytest.raises(ValueError, match="empty"):
        postgresql_url(user="u", password="p", host="", database="d")
    with pytest.raises(ValueError, match="scheme"):
        postgresql_url(user="u", password="p", host="h", database="d", scheme="db+mysql")


def _celery_tables_and_sequences():
    tables = sorted(ResultModelBase.metadata.tables)
    sequences = sorted(
        col.default.name
        for table in ResultModelBase.metadata.tables.values()
        for col in table.columns
        if isinstance(col.default, sa.Sequence)
    )
    return tables, sequences


def test_grants_cover_every_table_and_sequence_of_celerys_database_backend():
    tables, sequences = _celery_tables_and_sequences()
    assert tables == ["celery_taskmeta", "celery_tasksetmeta"]
    assert sequences == ["task_id_sequence", "taskset_id_sequence"]
    sql = result_backend_grants("celery", database="edd")
    assert 'GRANT CONNECT ON DATABASE "edd" TO "celery";' in sql
    assert 'GRANT USAGE ON SCHEMA "public" TO "celery";' in sql
    table_grant = next(
        line for line in sql.splitlines() if line.startswith("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE")
    )
    sequence_grant = next(line for line in sql.splitlines() if line.startswith("GRANT USAGE ON SEQUENCE"))
    assert all(f'"public"."{t}"' in table_grant for t in tables)
    assert all(f'"public"."{s}"' in sequence_grant for s in sequences)
    assert "CREATE" not in sql


def test_grants_when_the_worker_creates_the_tables():
    sql = result_backend_grants("celery", database="edd", schema="results", worker_creates_tables=True)
    assert 'GRANT USAGE, CREATE ON SCHEMA "results" TO "celery";' in sql
    assert "ON TABLE" not in sql and "ON SEQUENCE" not in sql


def test_grant_identifiers_are_quoted_and_every_line_is_sql_or_a_comment():
    sql = result_backend_grants('we"ird role', database="edd; DROP DATABASE edd")
    assert '"we""ird role"' in sql and '"edd; DROP DATABASE edd"' in sql
    assert all(
        line.startswith(("GRANT ", "-- ")) and (line.startswith("--") or line.endswith(";"))
        for line in sql.splitlines()
    )
    with pytest.raises(ValueError):
        result_backend_grants("celery\nDROP", database="edd")
