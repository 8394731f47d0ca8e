"""Celery's result backend: a PostgreSQL URL as in EDD's guide, `rpc://`, or none.

Celery hands `db+postgresql://...` to SQLAlchemy, which `unquote`s user, password and
database, so those are percent-quoted with no safe characters: any character survives.
The validator checks a URL someone typed against the same grammar and never quotes the
URL back, since it holds a password. The grants are what the Celery role needs on EDD's
database, which this program does not own. Plain `db+postgresql` uses SQLAlchemy's default
driver (psycopg 3 from SQLAlchemy 2.1, psycopg2 before): the workers' virtualenv needs it.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote, unquote

RPC = "rpc://"
NONE = "none"
POSTGRESQL_SCHEMES = ("db+postgresql", "db+postgresql+psycopg2", "db+postgresql+psycopg", "db+postgresql+pg8000")
TASK_TABLE, GROUP_TABLE = "celery_taskmeta", "celery_tasksetmeta"
# Celery names these sequences itself (celery/backends/database/models.py); renaming the
# tables with database_table_names does not rename them.
TASK_SEQUENCE, GROUP_SEQUENCE = "task_id_sequence", "taskset_id_sequence"

_ALLOWED = f"db+postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE (PostgreSQL), {RPC} (results over the broker) or {NONE}"
_QUOTE_HINT = "percent-quote it with urllib.parse.quote(value, safe=''); raw, only letters, digits, -._~!$&'()*+,;= and %XX escapes"
# RFC 3986 character classes; `@` is left out of pchar so only one `@` can end the userinfo.
_UNRESERVED_SUBDELIMS = r"A-Za-z0-9\-._~!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_USER = re.compile(rf"(?:[{_UNRESERVED_SUBDELIMS}]|{_PCT})+")
_PASSWORD = re.compile(rf"(?:[{_UNRESERVED_SUBDELIMS}:]|{_PCT})*")
_DATABASE = re.compile(rf"(?:[{_UNRESERVED_SUBDELIMS}:]|{_PCT})+")
_QUERY = re.compile(rf"(?:[{_UNRESERVED_SUBDELIMS}:/?]|{_PCT})*")
_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,40}")


def postgresql_url(
    *, user: str, password: str, host: str, database: str, port: int = 5432, scheme: str = "db+postgresql"
) -> str:
    """`db+postgresql://USER:PASS@HOST:PORT/DB` with user, password and database quoted
    with safe="", so SQLAlchemy's parser gives back exactly these strings."""
    if scheme not in POSTGRESQL_SCHEMES:
        raise ValueError(f"scheme: use one of {', '.join(POSTGRESQL_SCHEMES)}")
    if not user or not host or not database:
        raise ValueError("user, host and database must not be empty")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError("port: must be a number from 1 to 65535")
    host_part = f"[{host}]" if ":" in host else host
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host_part}:{port}/{quote(database, safe='')}"


def result_backend_problems(value: str, key: str) -> list[str]:
    """Every problem with a result backend setting, each `"<key>: ..."` saying what is allowed.

    Allowed: `none`, `rpc://`, or `db+postgresql[+driver]://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?QUERY]`
    with user, password and database percent-quoted. No message contains any part of the
    value except a well-formed scheme name: the value holds a password.
    """
    if not isinstance(value, str):
        return [f"{key}: must be a string: {_ALLOWED}"]
    if value in (NONE, RPC):
        return []
    if any(not ch.isprintable() for ch in value):
        return [f"{key}: holds a newline or other non-printable character; it must be one line: {_ALLOWED}"]
    scheme, sep, rest = value.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return [f"{key}: is not a URL; use {_ALLOWED}"]
    if scheme == "rpc":
        return [f"{key}: rpc:// takes nothing after the scheme (it uses the broker connection)"]
    if scheme not in POSTGRESQL_SCHEMES:
        hint = " (Celery needs the db+ prefix: db+postgresql://)" if scheme in ("postgresql", "postgres") else ""
        return [
            f"{key}: scheme {scheme!r} is not supported{hint}; use {_ALLOWED};"
            f" PostgreSQL schemes: {', '.join(POSTGRESQL_SCHEMES)}"
        ]
    return [f"{key}: {problem}" for problem in _postgresql_problems(rest)]


def _postgresql_problems(rest: str) -> list[str]:
    """Problems in what follows `db+postgresql://`, parsed as SQLAlchemy does."""
    if "@" not in rest:
        return ["has no USER@ part: db+postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE"]
    if rest.count("@") > 1:
        return [f"the user or password holds a raw '@'; {_QUOTE_HINT}"]
    userinfo, _, location = rest.partition("@")
    problems = []
    user, _, password = userinfo.partition(":")
    if not user:
        problems.append("the user is empty: db+postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE")
    elif not _USER.fullmatch(user) or not _PASSWORD.fullmatch(password):
        problems.append(f"the user or password holds a character that must be percent-quoted; {_QUOTE_HINT}")
    elif any(not ch.isprintable() for ch in unquote(user) + unquote(password)):
        problems.append("the user or password decodes to a newline or other non-printable character")

    hostport, slash, path = location.partition("/")
    database, _, query = path.partition("?")
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        port = after[1:]
        if not bracket or not _is_ipv6(host) or (after and not after.startswith(":")):
            problems.append("the host is not a valid [IPv6] address: [ADDRESS]:PORT")
            port = ""
    else:
        host, _, port = hostport.partition(":")
        if not host:
            problems.append("has no host: db+postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE")
        elif not _HOSTNAME.fullmatch(host):
            problems.append("the host must be a host name, an IPv4 address or an [IPv6] address in brackets")
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        problems.append("the port must be a number from 1 to 65535")
    if not slash or not database:
        problems.append("has no database: db+postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE")
    elif not _DATABASE.fullmatch(database):
        problems.append(f"the database name holds a character that must be percent-quoted; {_QUOTE_HINT}")
    if query and not _QUERY.fullmatch(query):
        problems.append("the query (after ?) holds characters that must be percent-quoted")
    return problems


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _ident(name: str) -> str:
    """A PostgreSQL identifier, always double-quoted: the name exactly as the catalog holds it."""
    if not name or not name.isprintable():
        raise ValueError("a PostgreSQL name must be non-empty printable text")
    return '"' + name.replace('"', '""') + '"'


def result_backend_grants(
    role: str, *, database: str, schema: str = "public", worker_creates_tables: bool = False
) -> str:
    """The SQL a database owner runs so Celery's role can store and read results.

    Celery 5.7 looks for its tables each time it sets up the backend and creates missing
    ones. Default: the tables already exist (made once by the owner, e.g. by starting one
    worker with the owner's URL), and the role gets only row access: SELECT to read results,
    INSERT and UPDATE to store a task's states, DELETE for `forget()` and the expiry
    cleanup, and USAGE on the two id sequences for `nextval`. With `worker_creates_tables`
    the role may instead CREATE in the schema; Celery then makes and owns the tables on
    first use (PostgreSQL 15+ no longer lets every role create in `public`). `schema` is
    where the tables are: `public` unless Celery's `database_table_schemas` says otherwise.
    """
    r, s, d = _ident(role), _ident(schema), _ident(database)
    lines = [
        f"-- Celery result backend: what role {r} needs in database {d}, schema {s}.",
        f"GRANT CONNECT ON DATABASE {d} TO {r};",
    ]
    if worker_creates_tables:
        lines += [
            f"-- The worker creates {TASK_TABLE}, {GROUP_TABLE} and their sequences on first use, and owns them.",
            f"GRANT USAGE, CREATE ON SCHEMA {s} TO {r};",
        ]
    else:
        lines += [
            f"-- {TASK_TABLE}, {GROUP_TABLE} and their sequences exist already, made by the owner.",
            f"GRANT USAGE ON SCHEMA {s} TO {r};",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {s}.{_ident(TASK_TABLE)}, {s}.{_ident(GROUP_TABLE)} TO {r};",
            f"GRANT USAGE ON SEQUENCE {s}.{_ident(TASK_SEQUENCE)}, {s}.{_ident(GROUP_SEQUENCE)} TO {r};",
        ]
    return "\n".join(lines) + "\n"
