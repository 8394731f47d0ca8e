"""launchd property lists for macOS developer machines (the dev stack).

launchd has no EnvironmentFile, and a plist's EnvironmentVariables would put the broker
password in a world-readable file, so the job runs `/bin/sh -c '. ENVFILE; exec celery ...'`:
argv carries only the file's path. Paths are absolute, and `-A` comes before the subcommand.
"""

from __future__ import annotations

import plistlib
import shlex
from typing import Sequence


def render_daemon_plist(
    *,
    label: str,
    argv: Sequence[str],
    user: str,
    group: str,
    working_directory: str,
    environment_file: str | None,
    log_path: str,
    exit_timeout: int | None = None,
    umask: int | None = None,
) -> str:
    """A LaunchDaemon plist that starts at boot and is restarted when it exits; `exit_timeout`:
    seconds from SIGTERM to SIGKILL when it is stopped (launchd's default is 20); `umask`: the
    mode bits files it creates lack (0o077: 0600 files, for Flower's database)."""
    command = "exec " + " ".join(shlex.quote(word) for word in argv)
    if environment_file:
        command = f"set -a; . {shlex.quote(environment_file)}; set +a; {command}"
    job = {
        "Label": label,
        "ProgramArguments": ["/bin/sh", "-c", command],
        "UserName": user,
        "GroupName": group,
        "WorkingDirectory": working_directory,
        "RunAtLoad": True,
        "KeepAlive": True,
        "StandardOutPath": log_path,
        "StandardErrorPath": log_path,
    }
    if exit_timeout is not None:
        job["ExitTimeOut"] = exit_timeout
    if umask is not None:
        job["Umask"] = umask
    return plistlib.dumps(job, sort_keys=True).decode()
