"""The real program's stacks pass the policy pack, previewed the way the PR workflow does.

prod and dev (the committed stacks) run `make preview-pr STACK=...`, the exact command of
.github/workflows/preview.yml; the sandbox stack's config (what `make sandbox` writes, for a
host at a private address) runs the same CLI preview in a project copy. Each preview runs in
a network namespace holding only loopback: preview must reach no SSH host and no broker.
Advisory findings are allowed (they are printed, not failures); mandatory ones are not.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edd_infra.workspace import ROOT, ProjectStack
from tests.policy.conftest import POLICY_PACK, cli_preview, isolation_problem, preview_inline, run_env, run_isolated

pytestmark = pytest.mark.policy
PASSPHRASE = "edd-infra-example"  # the committed stacks' example passphrase (README)


@pytest.fixture(scope="module")
def isolated(policy_ready):
    problem = isolation_problem()
    if problem:
        pytest.skip(problem)


def cli_env(tmp_path: Path) -> dict[str, str]:
    """A throw-away backend and Pulumi home (stack selection lands there, not in the
    developer's ~/.pulumi), sharing the installed plugins."""
    home = tmp_path / "pulumi-home"
    home.mkdir()
    (home / "plugins").symlink_to(Path(os.environ.get("PULUMI_HOME", Path.home() / ".pulumi")) / "plugins")
    backend = tmp_path / "state"
    backend.mkdir()
    return {
        **run_env(),
        "PULUMI_HOME": str(home),
        "PULUMI_BACKEND_URL": f"file://{backend}",
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
    }


SANDBOX_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPolicyTestPolicyTestPolicyTestPolicyTest00"
SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----\n"


def sandbox_host():
    from sandbox.hosts import SandboxHost

    return SandboxHost(
        name="edd-sandbox",
        address="10.57.250.2",
        user="root",
        port=22,
        private_key_path="/nonexistent",
        host_key=SANDBOX_HOST_KEY,
        pid=0,
        leader_pid=0,
    )


def sandbox_like(**overrides) -> dict:
    """The sandbox's plain config (no TLS, no signing) with `overrides` merged in."""
    from sandbox.deploy import sandbox_config

    config = sandbox_config(sandbox_host())
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def without_host_key(config: dict) -> dict:
    config["hosts"] = {
        name: {k: v for k, v in host.items() if k != "hostKey"} for name, host in config["hosts"].items()
    }
    return config


def assert_passes(preview, what: str) -> None:
    assert preview.succeeded, f"{what}: {preview.text[-3000:]}"
    for level in ("advisory", "mandatory"):  # every finding the CLI printed was parsed
        assert preview.text.count(f"[{level}]") == len([v for v in preview.violations if v[1] == level])
    mandatory = [v for v in preview.violations if v[1] == "mandatory"]
    assert mandatory == [], f"{what}: {mandatory}"
    assert "Policy Packs run" in preview.text and "edd-infra-guardrails" in preview.text
    for policy, level, resource, _ in preview.violations:
        print(f"{what}: [{level}] {policy} ({resource})")


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_committed_stack_passes_make_preview_pr(isolated, tmp_path, stack):
    committed = (ROOT / f"Pulumi.{stack}.yaml").read_text()
    result = run_isolated(["make", "--no-print-directory", "preview-pr", f"STACK={stack}"], cli_env(tmp_path))
    preview = cli_preview(result)
    assert_passes(preview, stack)
    assert "Previewing update" in preview.text and "to create" in preview.text
    assert (ROOT / f"Pulumi.{stack}.yaml").read_text() == committed  # stack init kept the file


def test_sandbox_config_passes(isolated, tmp_path):
    from sandbox.deploy import configure

    # What `make sandbox` writes (TLS and message signing on, its own CA and keys), for a host
    # on its private veth address; the host is never contacted.
    project = tmp_path / "project"
    project.mkdir()
    env = cli_env(tmp_path)
    stack = ProjectStack("sandbox", project, env["PULUMI_BACKEND_URL"], PASSPHRASE)
    configure(stack, sandbox_host(), hardened=True)
    secrets = {
        key: json.loads(stack.cli_run("config", "get", f"edd-infra:{key}", "--json").stdout)["value"]
        for key in ("adminPassword", "appPassword", "flowerBrokerPassword", "flowerUiPassword")
    }
    assert all(secrets.values())
    # The CLI path (the language host runs __main__.py), as the PR workflow's preview.
    shutil.copy(ROOT / "__main__.py", project / "__main__.py")
    (project / "edd_infra").symlink_to(ROOT / "edd_infra")
    result = run_isolated(
        [
            str(ROOT / "scripts" / "pulumi"),
            "preview",
            "--diff",
            "--policy-pack",
            str(POLICY_PACK),
            "--non-interactive",
            "--color",
            "never",
            "-s",
            "sandbox",
        ],
        env,
        cwd=project,
    )
    preview = cli_preview(result)
    assert_passes(preview, "sandbox")
    # Flower listens on the host's private address: the pack found its basic_auth on stdin.
    assert "flower-not-public-without-auth" not in {v[0] for v in preview.violations}
    assert "https://10.57.250.2:5555/" in preview.text
    for value in secrets.values():
        assert value not in preview.text and json.dumps(value)[1:-1] not in preview.text


# Config the program accepts but the pack refuses: (stack, config, policy, resources it flags).
REFUSED = {
    "flower-user-administrator": (
        "sandbox",
        lambda: sandbox_like(flowerBrokerUser={"profile": "administrator"}),
        "administrator-only-broker-admin",
        {"edd-flower-user"},
    ),
    # Plain AMQP on the host's own (private) address, besides loopback.
    "plain-amqp-off-loopback": (
        "sandbox",
        lambda: sandbox_like(broker={"amqpListeners": ["127.0.0.1", "10.57.250.2"]}),
        "broker-listeners-loopback-or-tls",
        {"broker-server"},
    ),
    # The management API on loopback, so only the host-key policy speaks.
    "prod-without-host-keys": (
        "prod",
        lambda: without_host_key(sandbox_like(requireHostKeys=False, broker={"managementAddress": "127.0.0.1"})),
        "prod-host-key-checking",
        "every remote command",
    ),
    # The sandbox's plain config (no broker.tls) as a prod stack: the management API is plain HTTP on
    # the host's private address, in rabbitmq.conf and in the provider's endpoint.
    "prod-plain-management-api": (
        "prod",
        sandbox_like,
        "management-listener-tls",
        {"broker-server", "broker-provider"},
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_real_program_config_the_pack_refuses(policy_ready, tmp_path, case):
    from edd_infra.program import inline_program
    from sandbox.deploy import random_secrets

    stack, config, policy, flagged = REFUSED[case]
    secrets = {**random_secrets(), "sshPrivateKey": SSH_KEY}
    preview = preview_inline(tmp_path, stack, inline_program, secrets, project="edd-infra", config=config())
    assert not preview.succeeded
    if flagged == "every remote command":
        flagged = {name for name, kind in preview.resources.items() if kind == "command:remote:Command"}
        assert {"broker-server", "broker-admin", "edd-worker-1-service", "flower-service"} <= flagged
    assert preview.flagged(policy) == flagged
    assert {v[0] for v in preview.violations if v[1] == "mandatory"} == {policy}
    for value in secrets.values():
        assert value not in preview.text
