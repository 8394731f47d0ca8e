"""Every shell script the program renders, for the committed stacks and the sandbox configs.

`rendered_scripts()` runs the program under Pulumi mocks (tests/unit/test_program_mocks.run)
for prod, dev and what `make sandbox` writes for a single host (plain and hardened: TLS and
signing), a fleet (two worker hosts) and a cluster (three broker nodes, two worker hosts), and
returns each distinct create/update/delete text with where it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.test_program_mocks import SECRETS, plain, run, stack_config

COMMAND_TYPES = ("command:remote:Command", "command:local:Command")
SIGNING_KEY = "-----BEGIN PRIVATE KEY-----\nsigning key\n-----END PRIVATE KEY-----\n"


def _host(name: str, address: str):
    from sandbox.hosts import SandboxHost

    return SandboxHost(
        name=name,
        address=address,
        user="root",
        port=22,
        private_key_path="/dev/null",
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0gZ0NsSUjXXVSjXQ0ha4k0Tq9kUdQTvFT1kUTgLQRg",
        pid=0,
        leader_pid=0,
    )


def sandbox_configs(tls_dir: Path) -> dict[str, tuple[dict, list[str]]]:
    """name -> (stack config, secret keys) of each sandbox topology, as `make sandbox` writes it."""
    from sandbox.deploy import sandbox_config
    from sandbox.tls import make_broker_certificates, make_signing_certificate

    host = _host("edd-sandbox", "10.57.250.2")
    workers = (_host("edd-sbw1", "10.57.251.2"), _host("edd-sbw2", "10.57.252.2"))
    nodes = (_host("edd-sbn2", "10.57.253.2"), _host("edd-sbn3", "10.57.254.2"))
    make_broker_certificates(tls_dir, host.address, *(n.address for n in nodes))
    make_signing_certificate(tls_dir)
    topologies = {
        "sandbox-single-plain": dict(),
        "sandbox-single": dict(tls=str(tls_dir), signing=True),
        "sandbox-fleet": dict(tls=str(tls_dir), signing=True, worker_hosts=workers),
        "sandbox-cluster": dict(tls=str(tls_dir), signing=True, worker_hosts=workers, broker_nodes=nodes),
    }
    configs = {}
    for name, options in topologies.items():
        values = sandbox_config(host, **options)
        config = {f"edd-infra:{k}": (v if isinstance(v, str) else json.dumps(v)) for k, v in values.items()}
        config.update({f"edd-infra:{k}": v for k, v in SECRETS.items()})
        keys = [f"edd-infra:{k}" for k in SECRETS]
        if options.get("signing"):
            config["edd-infra:celerySigningKey"] = SIGNING_KEY
            keys.append("edd-infra:celerySigningKey")
        if options.get("broker_nodes"):
            config["edd-infra:erlangCookie"] = "c00kie" * 6
            keys.append("edd-infra:erlangCookie")
        configs[name] = (config, keys)
    return configs


def rendered_scripts(tls_dir: Path) -> dict[str, list[str]]:
    """script text -> where it was rendered (`<config>:<resource>.<create|update|delete>`)."""
    configs = {"prod": (stack_config("prod"), None), "dev": (stack_config("dev"), None), **sandbox_configs(tls_dir)}
    scripts: dict[str, list[str]] = {}
    for config_name, (config, keys) in configs.items():
        _, resources, loop = run(config, secret_keys=keys)
        for type_, name, props, *_ in resources:
            if type_ not in COMMAND_TYPES:
                continue
            for field in ("create", "update", "delete"):
                text = plain(loop, props.get(field))
                if text:
                    scripts.setdefault(text, []).append(f"{config_name}:{name}.{field}")
    return scripts
