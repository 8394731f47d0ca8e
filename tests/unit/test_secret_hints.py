"""No message, help text or document tells anyone to put a secret on a command line.

A secret on argv shows in `ps`, /proc/PID/cmdline and shell history (field facts: the Automation
API's set_config does it; rabbitmqctl as root re-runs itself with every argument). Every hint the
project gives sets a secret from stdin: `pulumi config set --secret KEY < file`, a pipe into it, or
the interactive prompt (`pulumi config set --secret KEY` with no value), and `rabbitmqctl add_user
NAME` without the password. This scans the messages the program makes (config_errors) and every
text the project ships (sources, Pulumi.yaml, stacks, README, Makefile, scripts, workflows).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from edd_infra.config_errors import file_problems, secret_problems
from edd_infra.settings import OPTIONAL_SECRETS, REQUIRED_SECRETS, StackSettings
from tests.unit.samples import sample_raw

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEYS = set(REQUIRED_SECRETS + OPTIONAL_SECRETS)
# `pulumi config set` options that take a value; every other option is a flag.
VALUE_OPTIONS = {"-s", "--stack", "-C", "--cwd", "--config-file", "--type"}
STOP = {"<", "|", ";", "&&", "||", ")", "(", "&", ">", "`"}


def _words(rest: str) -> list[str]:
    """Shell words of `rest` up to the first redirection, pipe or end of command."""
    lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    try:
        for word in lexer:
            if word in STOP or word.startswith("#"):
                break
            words.append(word)
    except ValueError:  # an unclosed quote: what was read so far
        pass
    return words


def argv_secrets(text: str) -> list[str]:
    """Each place in `text` that puts a secret value on a command line."""
    found = []
    for match in re.finditer(r"\bconfig\s+set\b([^\n`]*)", text):
        words = _words(match.group(1).replace("\\n", " "))
        secret, positional, i = False, [], 0
        while i < len(words):
            word = words[i]
            if word == "--secret":
                secret = True
            elif word in VALUE_OPTIONS:
                i += 1
            elif not word.startswith("-"):
                positional.append(word)
            i += 1
        key = positional[0].split(":")[-1] if positional else ""
        if len(positional) >= 2 and (secret or key in SECRET_KEYS):
            found.append(match.group(0).strip())
    for match in re.finditer(r"\b(add_user|change_password|authenticate_user)\b([^\n`]*)", text):
        words = _words(match.group(2))
        if len([w for w in words if not w.startswith("-")]) >= 2:
            found.append(match.group(0).strip())
    return found


@pytest.mark.parametrize(
    "hint",
    [
        'pulumi config set --secret erlangCookie "$(openssl rand -hex 32)"',
        "scripts/pulumi config set --secret -s prod appPassword hunter2",
        "pulumi config set appPassword hunter2",
        "pulumi config set --secret --path edd-infra:adminPassword 's3cret'",
        "rabbitmqctl add_user edd_user hunter2",
        "rabbitmqctl change_password -n rabbit@x edd_user hunter2",
    ],
)
def test_the_scanner_finds_a_secret_on_argv(hint):
    assert argv_secrets(f"set it: `{hint}` then up") != []


@pytest.mark.parametrize(
    "hint",
    [
        "openssl rand -hex 32 | pulumi config set --secret erlangCookie",
        'printf %s "$PW" | scripts/pulumi config set --secret -s prod appPassword',
        "scripts/pulumi config set --secret -s prod brokerTlsKey < server.key",
        "(pulumi config set --secret {key})",
        "pulumi config set --path -s prod celerySigning.previousCertFile signing-old.pem",
        "rabbitmqctl add_user edd-infra-admin",
        'head -n 1 | rabbitmqctl -q add_user "$user" >/dev/null',
    ],
)
def test_the_scanner_passes_stdin_and_prompt_forms(hint):
    assert argv_secrets(hint) == []


def shipped_texts() -> dict[str, str]:
    patterns = [
        "edd_infra/**/*.py",
        "policy/*.py",
        "policy/*.yaml",
        "sandbox/*.py",
        "scripts/*",
        "Makefile",
        "Pulumi*.yaml",
        "README.md",
        "docs/*.md",
        ".github/workflows/*.yml",
        ".ci/*",
    ]
    files = {p for pattern in patterns for p in ROOT.glob(pattern) if p.is_file()}
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted(files)}


# Texts that name the unsafe form to say it is refused (the policy table), not to suggest it.
REFUSED_FORMS = {("README.md", "add_user NAME PASSWORD")}


def test_no_shipped_text_suggests_a_secret_on_argv():
    texts = shipped_texts()
    assert {"README.md", "Pulumi.yaml", "edd_infra/config_errors.py", "Makefile"} <= set(texts)
    offenders = {
        name: found
        for name, text in texts.items()
        if (found := [f for f in argv_secrets(text) if (name, f) not in REFUSED_FORMS])
    }
    assert offenders == {}


def every_secret_message() -> list[str]:
    """What config_errors says about each secret: missing, in plaintext, malformed, and required by a feature."""
    messages = secret_problems({}, {})
    messages += secret_problems(dict.fromkeys(SECRET_KEYS, "x"), {})
    messages += secret_problems(
        dict.fromkeys(SECRET_KEYS, "AAAAAAAAAAAAAAAAAAAAAAAA"), dict.fromkeys(SECRET_KEYS, True)
    )
    settings = StackSettings.model_validate(
        sample_raw(
            broker={
                "host": "queue",
                "tls": {"caFile": "ca.pem", "certFile": "server.pem"},
                "amqpListeners": ["127.0.0.1", "192.0.2.10"],
                "nodeAddress": "192.0.2.10",
                "nodeName": "rabbit@192.0.2.10",
                "clusterNodes": [{"host": "node2", "address": "192.0.2.12"}],
            },
            celerySigning={"certFile": "signing.pem"},
        )
    )
    messages += file_problems(settings, {}, ROOT)
    return messages


def test_no_message_about_a_secret_suggests_it_on_argv():
    messages = every_secret_message()
    for key in ("erlangCookie", "brokerTlsKey", "celerySigningKey", "adminPassword", "sshPrivateKey"):
        assert any(key in m and "config set --secret" in m for m in messages), key
    assert [m for m in messages if argv_secrets(m)] == []
