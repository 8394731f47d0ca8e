"""The published example passphrase keys only the committed examples and the sandbox (pure checks;
the engine tier runs them through a real preview)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edd_infra.example_passphrase import (
    EXAMPLE_PASSPHRASE,
    EXAMPLE_SECRETS,
    digest,
    example_passphrase_problem,
    is_example_stack,
    is_sandbox,
    keyed_with,
)
from edd_infra.settings import Host

ROOT = Path(__file__).resolve().parents[2]


def salt(stack: str) -> str:
    return yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["encryptionsalt"]


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_the_committed_stacks_are_keyed_with_the_example_passphrase_and_nothing_else(stack):
    assert keyed_with(salt(stack), EXAMPLE_PASSPHRASE)
    assert not keyed_with(salt(stack), "edd-infra-example ")
    assert not keyed_with(salt(stack), "")


@pytest.mark.parametrize("state", [None, "", "v1:abc", "v1:!!!:v1:x:y", "awskms://alias/x"])
def test_other_providers_and_no_state_are_not_the_example(state):
    assert not keyed_with(state, EXAMPLE_PASSPHRASE)


SANDBOX = {"edd-sandbox": Host(address="10.57.3.2", host_key="ssh-ed25519 AAAA")}
REAL = {"edd-queue": Host(address="192.0.2.10", host_key="ssh-ed25519 AAAA")}


def example_values(stack):
    """Stand-ins whose digests are the published ones (the values themselves are tested in the engine tier)."""
    return {key: f"<{key}>" for key in EXAMPLE_SECRETS[stack]}


def test_a_stack_keyed_with_the_example_passphrase_is_refused_unless_example_or_sandbox(monkeypatch):
    monkeypatch.setitem(EXAMPLE_SECRETS, "prod", {k: digest(f"<{k}>") for k in EXAMPLE_SECRETS["prod"]})
    prod = salt("prod")
    assert example_passphrase_problem("prod", prod, example_values("prod"), REAL) is None
    assert example_passphrase_problem("sandbox", prod, {"appPassword": "random"}, SANDBOX) is None
    assert example_passphrase_problem("e2e1a2b3c", prod, {"appPassword": "random"}, SANDBOX) is None
    # A real team's stack, a renamed copy of prod, prod with one real secret set, and one more secret.
    for stack, secrets in [
        ("production", {"appPassword": "r3al-s3cret"}),
        ("prod-eu", example_values("prod")),
        ("prod", {**example_values("prod"), "appPassword": "r3al-s3cret"}),
        ("prod", {**example_values("prod"), "resultBackend": "db+postgresql://u:p@h/d"}),
    ]:
        problem = example_passphrase_problem(stack, prod, secrets, REAL)
        assert problem and f"stack {stack!r}" in problem and "edd-infra-example" in problem
        assert "stack change-secrets-provider" in problem and "rotate every secret" in problem
        assert "r3al-s3cret" not in problem
    # Another passphrase: never a problem.
    assert example_passphrase_problem("production", None, {"appPassword": "r3al-s3cret"}, REAL) is None


def test_the_sandbox_is_only_ssh_hosts_on_its_host_only_links():
    assert is_sandbox(SANDBOX)
    assert not is_sandbox({**SANDBOX, **REAL})
    assert not is_sandbox({"laptop": Host(connection="local")})
    assert not is_sandbox({})


def test_unset_secrets_do_not_count_and_a_missing_one_is_not_the_example():
    values = {k: f"<{k}>" for k in EXAMPLE_SECRETS["dev"]}
    published = {k: digest(v) for k, v in values.items()}
    saved = EXAMPLE_SECRETS["dev"]
    try:
        EXAMPLE_SECRETS["dev"] = published
        assert is_example_stack("dev", {**values, "sshPrivateKey": None, "erlangCookie": ""})
        assert not is_example_stack("dev", {k: v for k, v in values.items() if k != "appPassword"})
        assert not is_example_stack("prod", values)
    finally:
        EXAMPLE_SECRETS["dev"] = saved
