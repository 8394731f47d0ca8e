"""Files that carry a service's settings: environment files and Flower's config.

The broker URL with its password reaches Celery only through these files (root-owned,
group-readable by the service user), never through argv where `ps` shows it.
"""

from __future__ import annotations

import shlex
from typing import Mapping


def render_env_file(values: Mapping[str, str]) -> str:
    """KEY='value' lines that both systemd's EnvironmentFile and `sh`'s `.` read the same way."""
    lines = ["# Written by edd-infra."]
    for key, value in values.items():
        if "\n" in value:
            raise ValueError(f"{key}: a value cannot hold a newline")
        lines.append(f"{key}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


def render_flower_config(
    *,
    address: str,
    port: int,
    url_prefix: str,
    basic_auth_user: str,
    basic_auth_password: str,
    broker_api: str,
    persistent: bool,
    db_path: str,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> str:
    """flowerconfig.py. Python literals (repr) express any character, including the `,`
    that Flower's command-line basic_auth cannot. With `certfile` and `keyfile` Flower serves
    HTTPS only (no client certificates: logins are basic auth)."""
    settings = {
        "address": address,
        "port": port,
        "url_prefix": url_prefix,
        "basic_auth": [f"{basic_auth_user}:{basic_auth_password}"],
        "broker_api": broker_api,
        "persistent": persistent,
        "db": db_path,
        # Workers send events when their own config says (`-E`); Flower's default would broadcast
        # `enable_events` every 5 s, which a keyless Flower sends unsigned and every worker
        # refuses, logging a CRITICAL "Can't decode message body" each time.
        "enable_events": False,
    }
    if certfile or keyfile:
        if not (certfile and keyfile):
            raise ValueError("Flower's TLS needs both certfile and keyfile")
        settings |= {"certfile": certfile, "keyfile": keyfile}
    lines = ["# Written by edd-infra. Holds secrets: root-owned, group-readable by Flower only."]
    lines += [f"{key} = {value!r}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"
