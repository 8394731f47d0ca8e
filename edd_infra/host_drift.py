"""Files on the hosts edited behind Pulumi's back, found at `up` time.

pulumi_command cannot read a host, so `refresh` never sees a hand-edited unit or env file.
Every host script records the digests, modes and owners of the files it manages in a
root-only manifest (`host_scripts.with_manifest`); before registering resources, `observe`
asks each host once which manifests no longer match (a read-only script over SSH, the same
key and pinned host key the commands use, nothing secret on argv) and returns the commands
to rerun. Components give those commands a repair token, as for broker accounts.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from typing import Mapping, Optional

from .render.host_scripts import CHANGED_MANIFESTS
from .settings import Host


def _ssh_argv(host: Host, key_file: Optional[str], known_hosts: Optional[str]) -> list[str]:
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(host.port)]
    if known_hosts:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    else:
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    if key_file:
        argv += ["-i", key_file, "-o", "IdentitiesOnly=yes"]
    return argv + [f"{host.user}@{host.address}", "sh -s"]


def changed_commands(host: Host, private_key: Optional[str], timeout: float = 20) -> Optional[set[str]]:
    """Names of the commands whose files changed on `host`; None when it cannot be asked."""
    script = ("sudo -n sh -c " + shlex.quote(CHANGED_MANIFESTS)) if host.sudo else CHANGED_MANIFESTS
    with tempfile.TemporaryDirectory(prefix="edd-infra-drift-") as tmp:
        if host.connection == "local":
            argv = ["sh", "-s"]
        else:
            key_file = known_hosts = None
            if private_key:
                key_file = os.path.join(tmp, "key")
                with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                    f.write(private_key if private_key.endswith("\n") else private_key + "\n")
            if host.host_key:
                known_hosts = os.path.join(tmp, "known_hosts")
                name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
                with open(known_hosts, "w") as f:
                    f.write(f"{name} {host.host_key}\n")
            argv = _ssh_argv(host, key_file, known_hosts)
        try:
            result = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            return None
    if result.returncode != 0:
        return None
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def observe(hosts: Mapping[str, Host], private_key: Optional[str]) -> dict[str, set[str]]:
    """Host name -> names of commands to rerun; hosts that cannot be asked are left out."""
    found = {}
    for name, host in hosts.items():
        changed = changed_commands(host, private_key)
        if changed:
            found[name] = changed
    return found
