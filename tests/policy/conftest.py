"""Policy tier: previews through the real engine with the policy pack in policy/.

Needs the CLI and the provider plugins (as the plugins tier) plus the Python language host
`pulumi-language-python` (policy packs run through it) and pulumi-policy in the virtualenv.
Each missing piece skips the tier with one line naming it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
from pulumi import automation as auto

from edd_infra.workspace import ROOT, ProjectStack, cli_dir, engine_problem

POLICY_PACK = ROOT / "policy"
PACK_NAME = "edd-infra-guardrails"
LANGUAGE_HOST = "pulumi-language-python"


def language_host() -> Optional[Path]:
    """The Python language host the CLI would use: on PATH or beside the pinned CLI."""
    on_path = shutil.which(LANGUAGE_HOST)
    if on_path:
        return Path(on_path)
    directory = cli_dir()
    if directory is not None and (directory / LANGUAGE_HOST).exists():
        return directory / LANGUAGE_HOST
    return None


def policy_problem() -> Optional[str]:
    problem = engine_problem()
    if problem:
        return problem
    if language_host() is None:
        return (
            f"Python language host {LANGUAGE_HOST} not found on PATH or beside the pulumi CLI "
            "(policy packs run through it; it ships with the official pulumi install)"
        )
    if importlib.util.find_spec("pulumi_policy") is None:
        return "pulumi-policy not installed in the virtualenv (make toolchain)"
    return None


@pytest.fixture(scope="session")
def policy_ready():
    problem = policy_problem()
    if problem:
        pytest.skip(problem)
    return language_host()


def run_env() -> dict[str, str]:
    """PATH for the CLI: this virtualenv's python3 first (the pack imports pulumi_policy from
    it), then the language host's directory."""
    host = language_host()
    parts = [os.path.dirname(sys.executable)] + ([str(host.parent)] if host else []) + [os.environ.get("PATH", "")]
    return {"PATH": os.pathsep.join(parts)}


@dataclass
class Preview:
    """A preview's outcome: succeeded or not, the policy violations, and all text it printed."""

    succeeded: bool
    violations: list[tuple[str, str, str, str]] = field(default_factory=list)  # (policy, level, resource, message)
    text: str = ""
    resources: dict[str, str] = field(default_factory=dict)  # name -> type, as the engine registered them

    def flagged(self, policy: str) -> set[str]:
        return {resource for p, _, resource, _ in self.violations if p == policy}

    def levels(self, policy: str) -> set[str]:
        return {level for p, level, _, _ in self.violations if p == policy}

    def messages(self, policy: str) -> list[str]:
        return [message for p, _, _, message in self.violations if p == policy]


def preview_inline(
    tmp_path: Path,
    stack_name: str,
    program: Callable[[], None],
    secrets: dict[str, str],
    project: str = "edd-infra-policy-test",
    config: Optional[dict] = None,
) -> Preview:
    """`preview --policy-pack policy` of an inline program in a throw-away backend."""
    work = tmp_path / f"{stack_name}-{uuid.uuid4().hex[:6]}"
    work.mkdir()
    stack = ProjectStack(stack_name, work, f"file://{work}", "edd-infra-policy-test", program=program, project=project)
    stack.stack.workspace.env_vars.update(run_env())
    stack.set_plain(config or {})
    for key, value in secrets.items():
        stack.set_secret(key, value)
    events, output = [], []
    try:
        stack.stack.preview(
            policy_packs=[str(POLICY_PACK)], on_event=events.append, on_output=output.append, color="never"
        )
        succeeded = True
    except auto.CommandError as err:
        succeeded, output = False, output + [str(err)]
    violations = [
        (
            e.policy_event.policy_name,
            e.policy_event.enforcement_level,
            e.policy_event.resource_urn.rsplit("::", 1)[-1],
            e.policy_event.message,
        )
        for e in events
        if e.policy_event
    ]
    texts = output + [repr(e.diagnostic_event.message) for e in events if e.diagnostic_event]
    resources = {
        e.resource_pre_event.metadata.urn.rsplit("::", 1)[-1]: e.resource_pre_event.metadata.type
        for e in events
        if e.resource_pre_event
    }
    return Preview(succeeded, violations, "\n".join(output + texts + [v[3] for v in violations]), resources)


# `edd-infra-guardrails@v0.1.0 [advisory]  policy-name  (type: resource)description...`
CLI_VIOLATION = re.compile(re.escape(PACK_NAME) + r"@v\S+ \[(\w+)\]\s+(\S+)\s+\(\S+: ([^)]+)\)")


ISOLATE = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def isolation_problem() -> Optional[str]:
    """Why a loopback-only network namespace cannot be made here; None when it can."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return "unshare or ip not installed (util-linux, iproute2)"
    probe = subprocess.run(ISOLATE + ["true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return (
            f"no network namespace for a loopback-only preview (unshare --net needs root): {probe.stderr.strip()[:120]}"
        )
    return None


def run_isolated(
    argv: list[str], env: dict[str, str], cwd: Path = ROOT, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run `argv` in a fresh network namespace holding only loopback: a preview that dialled
    an SSH host or a broker there would fail instead of reaching it."""
    return subprocess.run(
        ISOLATE + argv, cwd=cwd, env=dict(os.environ, **env), capture_output=True, text=True, timeout=timeout
    )


def cli_preview(result: subprocess.CompletedProcess) -> Preview:
    text = result.stdout + result.stderr
    violations = [(policy, level, resource, "") for level, policy, resource in CLI_VIOLATION.findall(text)]
    return Preview(result.returncode == 0, violations, text)
