"""systemd units for the Celery worker and Flower, and the broker's drop-in.

One process per unit (Type=exec): the `celery multi` + Type=forking pattern of the upstream
example loses track of its children under systemd. `%` is doubled because systemd treats
`%h` as a specifier (the home directory) while Celery's `-n name@%h` means the host name.
"""

from __future__ import annotations

import shlex
from typing import Iterable, Mapping, Sequence

HARDENING = (
    "NoNewPrivileges=yes",
    "PrivateTmp=yes",
    "ProtectSystem=full",
    "ProtectHome=read-only",
    "ProtectKernelTunables=yes",
    "ProtectControlGroups=yes",
    "RestrictSUIDSGID=yes",
)


# Ordering only: on the broker's host a worker or Flower starts once RabbitMQ is up (instead of
# into connection retries with a growing backoff) and, at shutdown or reboot, stops before it,
# so a worker finishing a task can still ack it. No Wants=: on a host without RabbitMQ, or with
# a broker someone else runs, this orders nothing and starts nothing.
BROKER_UNIT = "rabbitmq-server.service"


def exec_line(argv: Sequence[str]) -> str:
    """argv as an ExecStart= value: shell-quoted words, `%` escaped for systemd."""
    return " ".join(shlex.quote(word) for word in argv).replace("%", "%%")


def render_service_unit(
    *,
    description: str,
    argv: Sequence[str],
    user: str,
    group: str,
    working_directory: str,
    environment_file: str,
    supplementary_groups: Iterable[str] = (),
    state_directory: str | None = None,
    private_state: bool = False,
    after: Iterable[str] = ("network-online.target",),
    stop_timeout: int = 60,
    graceful_children: bool = False,
) -> str:
    """A hardened long-running service unit that reads its secrets from an EnvironmentFile;
    ordered after `after` (wanted too) and after the broker (see BROKER_UNIT).

    `graceful_children` (a Celery worker): on stop only the main process gets SIGTERM and waits
    for its children to finish their tasks (within `stop_timeout`); what is left then is killed.
    `private_state` (Flower, whose database holds task arguments and results): the state
    directory 0700 and every file the service creates 0600 (UMask=0077)."""
    after = tuple(after)
    lines = [
        "# Written by edd-infra.",
        "[Unit]",
        f"Description={description}",
        f"After={' '.join(dict.fromkeys((*after, BROKER_UNIT)))}",
        f"Wants={' '.join(after)}",
        "",
        "[Service]",
        "Type=exec",
        f"User={user}",
        f"Group={group}",
    ]
    groups = " ".join(supplementary_groups)
    if groups:
        lines.append(f"SupplementaryGroups={groups}")
    lines += [
        f"WorkingDirectory={working_directory}",
        f"EnvironmentFile={environment_file}",
        f"ExecStart={exec_line(argv)}",
        "Restart=always",
        "RestartSec=2",
        # Celery finishes the task at hand on SIGTERM (warm shutdown).
        "KillSignal=SIGTERM",
    ]
    if graceful_children:
        # Sent to every process (the default), SIGTERM kills prefork children mid-task.
        lines.append("KillMode=mixed")
    lines += [
        f"TimeoutStopSec={stop_timeout}",
    ]
    if state_directory:
        lines.append(f"StateDirectory={state_directory}")
    if private_state:
        lines += ["StateDirectoryMode=0700"] if state_directory else []
        lines.append("UMask=0077")
    lines += list(HARDENING)
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def render_dropin(section: str, settings: Sequence[tuple[str, str]]) -> str:
    """A drop-in for an existing unit: `[Section]` then `Key=value` lines, in order
    (an empty value resets a list setting such as ListenStream=)."""
    lines = ["# Written by edd-infra.", f"[{section}]"]
    lines += [f"{key}={value}" for key, value in settings]
    return "\n".join(lines) + "\n"


def environment_settings(values: Mapping[str, str]) -> list[tuple[str, str]]:
    return [("Environment", shlex.quote(f"{k}={v}")) for k, v in values.items()]
