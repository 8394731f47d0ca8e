"""The real CLI on this project's config: validation, secrets, the committed stacks."""

import json
import shutil
import subprocess

import pytest
from pulumi import automation as auto

from tests.unit.samples import HOSTILE_PASSWORDS, sample_raw

pytestmark = pytest.mark.engine
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_bad_config_fails_preview_with_every_message_and_registers_nothing(new_stack):
    stack = new_stack(
        {
            "hosts": {"q": {"address": "bad host!", "port": 0}},
            "broker": {"host": "nowhere"},
            "workers": [{"name": "w", "host": "q", "concurrency": 0}],
            "flower": {"host": "q", "workingDirectory": "/x", "virtualenv": "/y"},
        }
    )
    for key in ("adminPassword", "appPassword", "flowerBrokerPassword"):
        stack.set_secret(key, "s3cret value")
    stack.set_secret("flowerUiPassword", "")
    events = []
    with pytest.raises(auto.CommandError) as err:
        stack.stack.preview(on_event=events.append)
    text = str(err.value)
    for expected in (
        "edd-infra:hosts.q.address: must be a DNS host name or an IP address",
        "edd-infra:hosts.q.port: Input should be greater than or equal to 1",
        "edd-infra:workers[0].concurrency: Input should be greater than or equal to 1",
        "edd-infra:workers[0].workingDirectory: required, not set",
        "edd-infra:flowerUiPassword: must not be empty",
    ):
        assert expected in text
    registered = [e.resource_pre_event.metadata.urn for e in events if e.resource_pre_event]
    assert [u for u in registered if not u.endswith("pulumi:pulumi:Stack::edd-infra-" + stack.name)] == []
    assert "s3cret value" not in text


def test_plaintext_value_for_a_secret_key_is_refused_by_the_engine(new_stack):
    stack = new_stack(sample_raw())
    for key in ("adminPassword", "flowerBrokerPassword", "flowerUiPassword"):
        stack.set_secret(key, "x")
    stack.set_plain({"appPassword": "not-encrypted"})
    with pytest.raises(auto.CommandError) as err:
        stack.stack.preview()
    assert "configuration key 'edd-infra:appPassword' must be encrypted as it's secret" in str(err.value)


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS[1:5])
def test_config_set_secret_keeps_value_out_of_stack_files_and_state(new_stack, password):
    stack = new_stack()
    stack.set_secret("appPassword", password)
    config_file = (stack.work_dir / f"Pulumi.{stack.name}.yaml").read_text()
    assert "secure: v1:" in config_file and password not in config_file
    # The value decrypts back exactly (no quoting lost on the way through stdin).
    shown = json.loads(stack.cli_run("config", "--show-secrets", "--json").stdout)
    assert shown["edd-infra:appPassword"] == {"value": password, "secret": True}
    exported = stack.export()
    assert password not in exported and json.dumps(password)[1:-1] not in exported


def test_committed_stacks_decrypt_with_the_documented_passphrase(pulumi_cli, tmp_path):
    # A copy of the project in a throw-away backend: a fresh clone has no state, and the
    # committed files must not be touched by `stack init`.
    for name in ("Pulumi.yaml", "Pulumi.prod.yaml", "Pulumi.dev.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PULUMI_BACKEND_URL": f"file://{tmp_path}",
        "PULUMI_CONFIG_PASSPHRASE": "edd-infra-example",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
    }
    for name in ("prod", "dev"):

        def cli(*args, name=name):  # bound now: called in this iteration only
            return subprocess.run(
                [str(pulumi_cli / "pulumi"), *args, "--stack", name, "--non-interactive"],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                env=env,
            )

        init = subprocess.run(
            [str(pulumi_cli / "pulumi"), "stack", "init", name, "--non-interactive"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
        )
        assert init.returncode == 0, init.stderr
        out = cli("config", "--show-secrets", "--json")
        assert out.returncode == 0, out.stderr
        assert (tmp_path / f"Pulumi.{name}.yaml").read_text() == (ROOT / f"Pulumi.{name}.yaml").read_text()
        values = json.loads(out.stdout)
        for key in ("adminPassword", "appPassword", "flowerBrokerPassword", "flowerUiPassword"):
            entry = values[f"edd-infra:{key}"]
            assert entry["secret"] is True and entry["value"]
