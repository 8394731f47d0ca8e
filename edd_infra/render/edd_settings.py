"""EDD's `rabbitmq` settings (the keys of its server.cfg) as one dict and as a file.

EDD read server.cfg with `json.load` and took `config['rabbitmq'].get('edd_pass')` and the
like, so `json` writes that shape: `{"rabbitmq": {...}}`, ready to merge into server.cfg.
`ini` (a `[rabbitmq]` section) and `env` (RABBITMQ_EDD_PASS=... lines) serve sites that read
their settings some other way. Every value is a string, ports too, as in EDD's example
server.cfg, so all three formats and the dict hold the same values. A value may hold any
printable character; anything else (newline, tab, other control or format characters) raises
ValueError naming the setting, never showing the value.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Mapping, Optional

from .service_files import render_env_file

SettingsFormat = Literal["ini", "json", "env"]
FORMATS: tuple[SettingsFormat, ...] = ("ini", "json", "env")

SECTION = "rabbitmq"
KEYS = ("hostname", "edd_user", "edd_pass", "edd_vhost", "port", "mgmt_user", "mgmt_pass", "mgmt_port")
ENV_PREFIX = "RABBITMQ_"
CELERY_SECTION = "celery"
CELERY_ENV_PREFIX = "CELERY_"
HEADER = "Written by edd-infra. Holds passwords: root-owned, readable by EDD's group only."


def edd_rabbitmq_settings(
    *,
    hostname: str,
    edd_user: str,
    edd_pass: str,
    edd_vhost: str,
    port: int,
    mgmt_user: str,
    mgmt_pass: str,
    mgmt_port: int,
) -> dict[str, str]:
    """EDD's `rabbitmq` settings as a dict of strings, in server.cfg's key order.

    The same dict is the secret stack output and the input of `render_edd_settings`.
    """
    settings = {
        "hostname": hostname,
        "edd_user": edd_user,
        "edd_pass": edd_pass,
        "edd_vhost": edd_vhost,
        "port": _port("port", port),
        "mgmt_user": mgmt_user,
        "mgmt_pass": mgmt_pass,
        "mgmt_port": _port("mgmt_port", mgmt_port),
    }
    _check(settings)
    return settings


def render_edd_settings(
    settings: Mapping[str, str], file_format: SettingsFormat, celery: Optional[Mapping[str, Any]] = None
) -> str:
    """The settings file EDD (or the site's own tooling) reads, in `file_format`.

    `celery` (render.celery_config's settings, publisher confirms among them) goes beside the
    `rabbitmq` keys: a `celery` object (json), a `[celery]` section (ini), or `CELERY_<NAME>`
    lines (env, the names a Django settings module with namespace CELERY uses); in ini and env
    a value that is not a string is written as JSON.

    - `json`: server.cfg's own shape, ASCII only (`\\uXXXX` escapes), so `json.load` with
      any locale's default encoding gets the exact value.
    - `ini`: for `configparser.ConfigParser()` with its default BasicInterpolation, the
      reader Python code gets without options: `%` is written `%%`. configparser strips
      values, so a value that begins or ends with a space is refused: use json or env.
    - `env`: `RABBITMQ_<KEY>='value'` lines in POSIX shell quoting, read the same by `sh`'s
      `.` and by systemd's EnvironmentFile (its parser follows shell quotes, including
      `'a'"'"'b'` concatenation, and expands nothing). Not for python-dotenv: it reads
      `\\` escapes inside single quotes and no concatenation, so no one quoting serves both.
    """
    _check(settings)
    celery = dict(celery or {})
    if file_format == "json":
        document = {SECTION: {key: settings[key] for key in KEYS}} | ({CELERY_SECTION: celery} if celery else {})
        return json.dumps(document, indent=4, ensure_ascii=True) + "\n"
    if file_format == "ini":
        return _render_ini(settings, celery)
    if file_format == "env":
        return render_env_file(
            {ENV_PREFIX + key.upper(): settings[key] for key in KEYS}
            | {CELERY_ENV_PREFIX + name.upper(): _text(value) for name, value in celery.items()}
        )
    raise ValueError(f"settings file format {file_format!r}: use one of {', '.join(FORMATS)}")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _render_ini(settings: Mapping[str, str], celery: Mapping[str, Any]) -> str:
    lines = [f"# {HEADER}", f"[{SECTION}]"]
    for key in KEYS:
        value = settings[key]
        if value != value.strip():
            raise ValueError(
                f"{key}: begins or ends with a space, which configparser strips from INI values;"
                " write EDD's settings as json or env instead"
            )
        lines.append(f"{key} = {value.replace('%', '%%')}")
    if celery:
        lines.append(f"[{CELERY_SECTION}]")
        lines += [f"{name} = {_text(value).replace('%', '%%')}" for name, value in celery.items()]
    return "\n".join(lines) + "\n"


def _port(key: str, port: int) -> str:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{key}: must be a port number from 1 to 65535")
    return str(port)


def _check(settings: Mapping[str, str]) -> None:
    """Exactly server.cfg's keys, each a string of printable characters."""
    if set(settings) != set(KEYS):
        raise ValueError(f"EDD's rabbitmq settings must be exactly {', '.join(KEYS)}")
    for key, value in settings.items():
        if not isinstance(value, str):
            raise ValueError(f"{key}: must be a string")
        bad = next((ch for ch in value if not ch.isprintable()), None)
        if bad is not None:
            raise ValueError(
                f"{key}: holds a non-printable character (U+{ord(bad):04X}, e.g. a newline or tab);"
                " EDD's settings take printable characters only"
            )
