"""The example passphrase through the real engine: a stack keyed with `edd-infra-example` runs
only as a committed example stack (holding its published secrets) or as the sandbox; any other
fails `preview` (so `up` too) with how to re-key, before any resource is registered.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path

import pytest
from pulumi import automation as auto

from edd_infra.example_passphrase import EXAMPLE_PASSPHRASE, EXAMPLE_SECRETS
from edd_infra.workspace import ProjectStack
from tests.unit.samples import sample_raw

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "adminPassword": "adm1n r3al",
    "appPassword": "app r3al",
    "flowerBrokerPassword": "flw r3al",
    "flowerUiPassword": "ui r3al",
}
REFUSAL = "its secrets are encrypted with the published example passphrase 'edd-infra-example'"


def project_copy(tmp_path: Path) -> Path:
    """The project's stacks and example files in a throw-away directory (the committed ones stay untouched)."""
    work = tmp_path / "project"
    work.mkdir()
    for name in ("Pulumi.yaml", "Pulumi.prod.yaml", "Pulumi.dev.yaml"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "examples", work / "examples")
    (work / "state").mkdir()
    return work


def stack_in(work: Path, name: str, passphrase: str = EXAMPLE_PASSPHRASE) -> ProjectStack:
    return ProjectStack(name, work, f"file://{work / 'state'}", passphrase)


def preview(stack: ProjectStack) -> tuple[str | None, list[str]]:
    events = []
    try:
        stack.stack.preview(on_event=events.append)
        error = None
    except auto.CommandError as err:
        error = str(err)
    urns = [e.resource_pre_event.metadata.urn for e in events if e.resource_pre_event]
    return error, [u for u in urns if "pulumi:pulumi:Stack" not in u]


def assert_refused(stack: ProjectStack, why: str) -> None:
    error, registered = preview(stack)
    assert error is not None, "preview ran with the example passphrase"
    text = " ".join(error.split())
    assert f"stack '{stack.name}': {REFUSAL}" in text and why in text, text[-3000:]
    assert f"scripts/pulumi stack change-secrets-provider -s {stack.name} passphrase < new-passphrase" in text
    assert registered == [], registered  # nothing reached a host: no resource at all
    for value in SECRETS.values():
        assert value not in error


def test_a_new_stack_keyed_with_the_example_passphrase_is_refused(pulumi_cli, tmp_path):
    stack = stack_in(project_copy(tmp_path), f"t{uuid.uuid4().hex[:8]}")
    stack.set_plain(sample_raw())
    for key, value in SECRETS.items():
        stack.set_secret(key, value)
    assert_refused(stack, "is not one of the committed example stacks (prod, dev) nor the sandbox")


def test_the_committed_prod_stack_with_a_real_secret_set_is_refused(pulumi_cli, tmp_path):
    """The case of issue 20: a team keeps `prod`, sets its own password, forgets to re-key."""
    stack = stack_in(project_copy(tmp_path), "prod")
    stack.set_secret("appPassword", SECRETS["appPassword"])
    assert_refused(stack, "holds secrets other than the committed example's")


@pytest.mark.parametrize("name", ["prod", "dev"])
def test_the_committed_example_stacks_preview(pulumi_cli, tmp_path, name):
    work = project_copy(tmp_path)
    committed = (work / f"Pulumi.{name}.yaml").read_text()
    error, registered = preview(stack_in(work, name))
    assert error is None, error[-3000:]
    assert len(registered) >= 5
    assert (work / f"Pulumi.{name}.yaml").read_text() == committed


def test_the_sandbox_previews_with_the_example_passphrase(pulumi_cli, tmp_path):
    stack = stack_in(project_copy(tmp_path), f"e2e{uuid.uuid4().hex[:6]}")
    host = {"address": "10.57.250.2", "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"}
    stack.set_plain(sample_raw(hosts={"queue": host}))
    for key, value in SECRETS.items():
        stack.set_secret(key, value)
    error, registered = preview(stack)
    assert error is None, error[-3000:]
    assert len(registered) >= 5


def test_a_stack_re_keyed_as_the_message_says_runs(pulumi_cli, tmp_path):
    work = project_copy(tmp_path)
    stack = stack_in(work, f"t{uuid.uuid4().hex[:8]}")
    stack.set_plain(sample_raw())
    for key, value in SECRETS.items():
        stack.set_secret(key, value)
    # The message's command, the new passphrase on stdin (never on argv).
    rekey = stack.cli_run("stack", "change-secrets-provider", "passphrase", stdin="a n3w passphrase\n")
    assert rekey.returncode == 0, rekey.stderr
    error, registered = preview(stack_in(work, stack.name, passphrase="a n3w passphrase"))
    assert error is None, error[-3000:]
    assert len(registered) >= 5


def test_the_published_digests_are_the_committed_stacks_secrets(pulumi_cli, tmp_path):
    work = project_copy(tmp_path)
    for name, published in EXAMPLE_SECRETS.items():
        values = json.loads(stack_in(work, name).cli_run("config", "--show-secrets", "--json").stdout)
        held = {
            key.split(":", 1)[1]: hashlib.sha256(entry["value"].encode()).hexdigest()[:16]
            for key, entry in values.items()
            if entry.get("secret")
        }
        assert held == published, f"Pulumi.{name}.yaml's secrets changed: update EXAMPLE_SECRETS"
