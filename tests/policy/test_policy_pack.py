"""The policy pack through the real engine: `preview --policy-pack policy` with the real
command and rabbitmq providers.

Two small inline programs, each previewed once in a stack named prod: GOOD holds a passing
case of every policy (the preview succeeds with no violation at all), BAD a violating case
of every policy, each on resources of its own, so every policy is shown to flag exactly its
resources with its own enforcement level. The same BAD program in a stack named staging shows
the host-key policy is prod-only. Nothing runs on a host: preview runs no command.
"""

from __future__ import annotations

import ast
import json

import pulumi
import pulumi_rabbitmq as rabbitmq
import pytest
from pulumi_command import local, remote

from edd_infra.render.host_scripts import FileSpec, secret_bundle
from tests.policy.conftest import POLICY_PACK, preview_inline

pytestmark = pytest.mark.policy

ADMIN = "edd-infra-admin"
# Secrets with the characters that break quoting; none may appear in any preview text.
PASSWORD = "p0l1cy;pw@:/#% 'q\" \\x"
UI_PASSWORD = "fl0wer-ui;pw@:/ 'u'"
SECRETS = {"password": PASSWORD, "uiPassword": UI_PASSWORD}
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPolicyTestPolicyTestPolicyTestPolicyTest00"
QUIET = dict(logging="none")
SECRET_OUTPUTS = ["stdout", "stderr"]
FLOWER_CONF = "/etc/edd-infra/flowerconfig.py"


def pack_policies() -> dict[str, str]:
    """Policy name -> enforcement level, read from policy/__main__.py without running it."""
    tree = ast.parse((POLICY_PACK / "__main__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "POLICIES":
            return {item.elts[0].value: item.elts[3].id.lower() for item in node.value.elts}
    raise AssertionError("POLICIES not found in policy/__main__.py")


def conf_script(lines: list[str]) -> str:
    """A script that writes rabbitmq.conf from a quoted heredoc, as the program's do."""
    body = "\n".join(lines)
    return (
        f"tmp=$(mktemp)\ncat > \"$tmp\" <<'EOF_CONF'\n{body}\nEOF_CONF\n"
        'install -m 0644 "$tmp" /etc/rabbitmq/rabbitmq.conf\n'
    )


def flower_unit(*extra: str) -> str:
    argv = " ".join(["/opt/edd/venv/bin/celery", "-A", "edd", "flower", *extra])
    return (
        "tmp=$(mktemp)\ncat > \"$tmp\" <<'EOF_UNIT'\n[Service]\nUser=celery\n"
        f'ExecStart={argv}\nEOF_UNIT\ninstall -m 0644 "$tmp" /etc/systemd/system/flower.service\n'
        "while IFS=' ' read -r mode owner group path on_failure data; do printf '%s' \"$data\" | base64 -d > \"$path\"; "
        "done\n"
    )


def flower_bundle(address: str, password: str | None) -> str:
    """stdin for flower_unit: flowerconfig.py in the project's secret bundle format."""
    lines = [f"address = {address!r}", "port = 5555"]
    if password is not None:
        lines.append(f"basic_auth = [{('admin:' + password)!r}]")
    return secret_bundle([FileSpec(FLOWER_CONF, "\n".join(lines) + "\n", "0640", "root", "celery")])


def provider(password) -> rabbitmq.Provider:
    # The management API is never dialled during preview.
    return rabbitmq.Provider("broker", endpoint="http://127.0.0.1:15672", username=ADMIN, password=password)


def good_program() -> None:
    config = pulumi.Config()
    password, ui = config.require_secret("password"), config.require_secret("uiPassword")
    on_broker = pulumi.ResourceOptions(provider=provider(password))
    quiet = pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)
    dbr = pulumi.ResourceOptions(delete_before_replace=True)
    # no-guest-user, administrator-only-broker-admin: the admin itself may be administrator.
    rabbitmq.User("admin-user", name=ADMIN, password=password, tags=["administrator"], opts=on_broker)
    rabbitmq.User("monitor-user", name="bunny", password=password, tags=["monitoring"], opts=on_broker)
    # broker-listeners-loopback-or-tls, management-listener-tls.
    local.Command(
        "conf-loopback",
        create=conf_script(
            [
                "listeners.tcp.1 = 127.0.0.1:5672",
                "listeners.tcp.2 = ::1:5672",
                "management.tcp.ip = 127.0.0.1",
                "management.tcp.port = 15672",
                "loopback_users.guest = true",
            ]
        ),
    )
    local.Command(
        "conf-tls",
        create=conf_script(
            [
                "listeners.tcp = none",
                "listeners.ssl.1 = 0.0.0.0:5671",
                "management.tcp.ip = 127.0.0.1",
                "management.tcp.port = 15672",
                "management.ssl.ip = 0.0.0.0",
                "management.ssl.port = 15671",
            ]
        ),
    )
    # flower-not-public-without-auth: public with basic auth (config on stdin); loopback without.
    local.Command(
        "flower-public-with-auth",
        create=flower_unit(f"--conf={FLOWER_CONF}"),
        stdin=ui.apply(lambda pw: flower_bundle("0.0.0.0", pw)),
        **QUIET,
        opts=quiet,
    )
    local.Command("flower-loopback", create=flower_unit("--address=127.0.0.1"))
    # stdin-commands-log-nothing, no-credentials-in-command-text.
    local.Command(
        "password-on-stdin",
        create="head -n 1 | rabbitmqctl -q add_user app >/dev/null",
        stdin=password,
        **QUIET,
        opts=quiet,
    )
    # command-delete-before-replace(-manual): set where the delete undoes the create; not
    # needed where it does not.
    local.Command(
        "file-with-triggers",
        create="install -m 0644 /dev/null /etc/edd-policy-test.conf",
        delete="rm -f /etc/edd-policy-test.conf",
        triggers=["1"],
        opts=dbr,
    )
    local.Command(
        "user-without-triggers", create="useradd --system edd-policy-test", delete="userdel edd-policy-test", opts=dbr
    )
    local.Command(
        "delete-unrelated",
        create="touch /tmp/edd-policy-created",
        delete="logger edd-policy-test deleted",
        triggers=["1"],
    )
    # prod-host-key-checking (preview never dials the host).
    remote.Command(
        "remote-pinned", connection=remote.ConnectionArgs(host="127.0.0.1", port=1, host_key=HOST_KEY), create="true"
    )
    # queues-and-exchanges-protected.
    protected = pulumi.ResourceOptions.merge(on_broker, pulumi.ResourceOptions(protect=True))
    rabbitmq.Queue(
        "edd-queue", name="edd", vhost="/edd", settings=rabbitmq.QueueSettingsArgs(durable=True), opts=protected
    )
    rabbitmq.Exchange(
        "edd-exchange",
        name="edd",
        vhost="/edd",
        settings=rabbitmq.ExchangeSettingsArgs(type="fanout", durable=True),
        opts=protected,
    )


def bad_program() -> None:
    config = pulumi.Config()
    password = config.require_secret("password")
    on_broker = pulumi.ResourceOptions(provider=provider(password))
    quiet = pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)
    rabbitmq.User("guest-user", name="guest", password=password, tags=[], opts=on_broker)
    local.Command(
        "guest-by-command",
        create="head -n 1 | rabbitmqctl -q add_user guest >/dev/null",
        stdin=password,
        **QUIET,
        opts=quiet,
    )
    rabbitmq.User("flower-admin", name="bunny", password=password, tags=["monitoring", "administrator"], opts=on_broker)
    local.Command(
        "conf-public",
        create=conf_script(
            ["listeners.tcp.1 = 0.0.0.0:5672", "management.tcp.ip = 0.0.0.0", "management.tcp.port = 15672"]
        ),
    )
    local.Command("conf-defaults", create=conf_script(["loopback_users.guest = true"]))
    local.Command(
        "conf-private-management",
        create=conf_script(
            ["listeners.tcp.1 = 127.0.0.1:5672", "management.tcp.ip = 10.20.30.40", "management.tcp.port = 15672"]
        ),
    )
    rabbitmq.Provider("plain-remote-api", endpoint="http://10.20.30.40:15672", username=ADMIN, password=password)
    local.Command(
        "flower-public-no-auth",
        create=flower_unit(f"--conf={FLOWER_CONF}"),
        stdin=flower_bundle("0.0.0.0", None),
        **QUIET,
        opts=quiet,
    )
    local.Command("flower-no-address", create=flower_unit())
    local.Command("loud-stdin", create="head -n 1 | rabbitmqctl -q add_user app >/dev/null", stdin=password)
    local.Command(
        "password-in-text",
        create="rabbitmqctl add_user app2 hunter2-on-argv\n"
        "curl -fsS http://app2:hunter2-on-argv@127.0.0.1:15672/api/whoami",
    )
    local.Command(
        "file-with-triggers",
        create="install -m 0644 /dev/null /etc/edd-policy-test.conf",
        delete="rm -f /etc/edd-policy-test.conf",
        triggers=["1"],
    )
    local.Command("user-without-triggers", create="useradd --system edd-policy-test", delete="userdel edd-policy-test")
    remote.Command("remote-unpinned", connection=remote.ConnectionArgs(host="127.0.0.1", port=1), create="true")
    rabbitmq.Queue(
        "edd-queue", name="edd", vhost="/edd", settings=rabbitmq.QueueSettingsArgs(durable=True), opts=on_broker
    )
    rabbitmq.Exchange(
        "edd-exchange",
        name="edd",
        vhost="/edd",
        settings=rabbitmq.ExchangeSettingsArgs(type="fanout", durable=True),
        opts=on_broker,
    )


# What BAD must make each policy flag, and words its message must hold.
VIOLATIONS = {
    "no-guest-user": ({"guest-user", "guest-by-command"}, ["guest"]),
    "administrator-only-broker-admin": ({"flower-admin"}, ["'bunny'", f"'{ADMIN}'", "administrator"]),
    "broker-listeners-loopback-or-tls": ({"conf-public", "conf-defaults"}, ["0.0.0.0", "every interface"]),
    "management-listener-tls": (
        {"conf-private-management", "plain-remote-api"},
        ["10.20.30.40", "http://10.20.30.40:15672", "'prod'", "broker.tls"],
    ),
    # Checked in the staging preview (below): the same resources, advisory outside prod.
    "management-listener-tls-outside-prod": (
        {"conf-private-management", "plain-remote-api"},
        ["10.20.30.40", "mandatory in prod stacks", "broker.tls"],
    ),
    "flower-not-public-without-auth": (
        {"flower-public-no-auth", "flower-no-address"},
        [f"address in {FLOWER_CONF}", "every interface", "basic_auth"],
    ),
    "stdin-commands-log-nothing": ({"loud-stdin"}, ['not "none"', "lacks stdout and stderr"]),
    "no-credentials-in-command-text": ({"password-in-text"}, ["user:password@", "rabbitmqctl add_user"]),
    "command-delete-before-replace": ({"file-with-triggers"}, ["file /etc/edd-policy-test.conf", "triggers"]),
    "command-delete-before-replace-manual": ({"user-without-triggers"}, ["system user edd-policy-test", "--replace"]),
    "prod-host-key-checking": ({"remote-unpinned"}, ["127.0.0.1", "'prod'", "hostKey"]),
    "queues-and-exchanges-protected": ({"edd-queue", "edd-exchange"}, ["protect=True", "queue edd", "exchange edd"]),
}


@pytest.fixture(scope="module")
def previews(policy_ready, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    return {
        "good": preview_inline(tmp, "prod", good_program, SECRETS),
        "bad": preview_inline(tmp, "prod", bad_program, SECRETS),
        "staging": preview_inline(tmp, "staging", bad_program, SECRETS),
    }


def test_every_policy_of_the_pack_has_a_violating_case():
    assert set(pack_policies()) == set(VIOLATIONS)


def test_passing_cases_preview_cleanly(previews):
    good = previews["good"]
    assert good.succeeded, good.text[-2000:]
    assert good.violations == []


# Policies that apply outside prod only: BAD shows their violations in the staging preview.
OUTSIDE_PROD = {"management-listener-tls-outside-prod"}
# Policies that apply in prod stacks only.
PROD_ONLY = {"prod-host-key-checking", "management-listener-tls"}


@pytest.mark.parametrize("policy", sorted(VIOLATIONS))
def test_policy_flags_exactly_its_violating_cases(previews, policy):
    expected, words = VIOLATIONS[policy]
    bad = previews["staging" if policy in OUTSIDE_PROD else "bad"]
    assert bad.flagged(policy) == expected
    level = pack_policies()[policy]
    assert bad.levels(policy) == {level}
    text = "\n".join(bad.messages(policy))
    for word in words:
        assert word in text
    for message in bad.messages(policy):
        assert any(resource in message for resource in expected)  # each message names its resource


def test_mandatory_violations_fail_the_preview(previews):
    assert not previews["bad"].succeeded
    assert "preview failed" in previews["bad"].text


def test_advisory_violations_alone_do_not_fail_a_preview(previews):
    # staging: the prod-only policies are silent, the outside-prod ones speak, everything else is as in prod.
    staging, bad = previews["staging"], previews["bad"]
    for policy in PROD_ONLY:
        assert staging.flagged(policy) == set() and bad.flagged(policy)
    for policy in OUTSIDE_PROD:
        assert bad.flagged(policy) == set() and staging.flagged(policy)
    for policy in set(VIOLATIONS) - PROD_ONLY - OUTSIDE_PROD:
        assert staging.flagged(policy) == bad.flagged(policy)


def test_plain_http_management_off_loopback_is_mandatory_in_prod_only(previews):
    """The door of issue 20: in prod the management API leaves loopback only over TLS."""
    assert pack_policies()["management-listener-tls"] == "mandatory"
    assert previews["bad"].levels("management-listener-tls") == {"mandatory"}
    assert previews["staging"].levels("management-listener-tls-outside-prod") == {"advisory"}


def test_no_secret_reaches_any_preview_text(previews):
    forms = [flower_bundle("0.0.0.0", UI_PASSWORD).split()[-1]]  # the good Flower's stdin, encoded
    for secret in SECRETS.values():
        forms += [secret, json.dumps(secret)[1:-1]]
    for name, preview in previews.items():
        assert preview.text
        for form in forms:
            assert form not in preview.text, f"a secret in the {name} preview's text"
