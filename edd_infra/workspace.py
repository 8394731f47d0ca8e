"""Run the program through the Automation API as an inline program.

The same `deploy` as `__main__.py`, driven by the pulumi CLI alone (no language host), in a
project directory holding this project's Pulumi.yaml, so the engine applies its config
declarations. Secrets are set through `pulumi config set --secret` with the value on stdin:
the Automation API's own set_config puts it on the CLI's argv.
"""

from __future__ import annotations

import functools

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Mapping, Optional

import yaml
from pulumi import automation as auto

from .program import inline_program
from .settings import PROJECT

ROOT = Path(__file__).resolve().parents[1]
CLI_VERSION = "v3.274.1"
CACHE = Path(os.environ.get("EDD_INFRA_CACHE", Path.home() / ".cache" / "edd-infra"))


def cli_dir() -> Optional[Path]:
    """Directory of the pinned pulumi CLI: PATH if it is that version, else the toolchain cache."""
    on_path = shutil.which("pulumi")
    candidates = ([Path(on_path).parent] if on_path else []) + [CACHE / f"pulumi-{CLI_VERSION}" / "bin"]
    for directory in candidates:
        binary = directory / "pulumi"
        if binary.exists():
            out = subprocess.run([str(binary), "version"], capture_output=True, text=True, env=_env())
            if out.stdout.strip() == CLI_VERSION:
                return directory
    return None


PLUGINS = (("command", "1.2.1"), ("rabbitmq", "3.5.3"))
PLUGIN_INSTALL_HINT = "pulumi plugin install resource command 1.2.1; pulumi plugin install resource rabbitmq 3.5.3"


def missing_plugins(directory: Path) -> list[str]:
    """The pinned provider plugins that `pulumi plugin ls` does not list."""
    out = subprocess.run([str(directory / "pulumi"), "plugin", "ls"], capture_output=True, text=True, env=_env()).stdout
    have = {tuple(line.split()[:3]) for line in out.splitlines() if line.strip()}
    return [f"resource {n} {v}" for n, v in PLUGINS if (n, "resource", v) not in have]


def engine_problem() -> Optional[str]:
    """Why the engine cannot deploy here (CLI or a provider plugin missing, with the fix); None if it can."""
    directory = cli_dir()
    if directory is None:
        return f"pulumi CLI {CLI_VERSION} not found (make toolchain)"
    missing = missing_plugins(directory)
    if missing:
        return f"provider plugins missing: {', '.join(missing)} ({PLUGIN_INSTALL_HINT})"
    return None


def _install_root(directory: Path) -> Path:
    """PulumiCommand wants ROOT/bin/pulumi: link one up when the CLI lives elsewhere."""
    if directory.name == "bin":
        return directory.parent
    root = CACHE / "cli-root"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    link = root / "bin" / "pulumi"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(directory / "pulumi")
    return root


def _env(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    env = dict(os.environ, PULUMI_SKIP_UPDATE_CHECK="true")
    env.update(extra or {})
    return env


class ProjectStack:
    """One stack of this project in `work_dir`, with its own backend and passphrase."""

    def __init__(
        self,
        name: str,
        work_dir: Path,
        backend_url: str,
        passphrase: str,
        program: Optional[Callable[[], None]] = None,
        project: str = PROJECT,
    ):
        directory = cli_dir()
        if directory is None:
            raise RuntimeError(f"pulumi CLI {CLI_VERSION} not found: run `make toolchain`")
        self.cli = directory / "pulumi"
        self.name, self.work_dir, self.project = name, Path(work_dir), project
        self.env = {
            "PULUMI_BACKEND_URL": backend_url,
            "PULUMI_CONFIG_PASSPHRASE": passphrase,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
        }
        if project != PROJECT:
            (self.work_dir / "Pulumi.yaml").write_text(f"name: {project}\nruntime: python\n")
        elif (self.work_dir / "Pulumi.yaml").resolve() != (ROOT / "Pulumi.yaml").resolve():
            shutil.copy(ROOT / "Pulumi.yaml", self.work_dir / "Pulumi.yaml")
        self.stack = auto.create_or_select_stack(
            stack_name=name,
            project_name=project,
            program=program or functools.partial(inline_program, str(self.work_dir)),
            opts=auto.LocalWorkspaceOptions(
                work_dir=str(self.work_dir),
                pulumi_command=auto.PulumiCommand(str(_install_root(directory)), skip_version_check=True),
                env_vars=self.env,
                secrets_provider="passphrase",
            ),
        )

    def cli_run(self, *args: str, stdin: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
        """The plain CLI on this stack (for what the Automation API does unsafely or not at all)."""
        return subprocess.run(
            [str(self.cli), *args, "--stack", self.name, "--non-interactive"],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.work_dir,
            env=_env(self.env),
            check=check,
        )

    def set_secret(self, key: str, value: str) -> None:
        """`config set --secret KEY` with the value on stdin, never on argv."""
        self.cli_run("config", "set", "--secret", "--raw", f"{self.project}:{key}", stdin=value)

    def set_plain(self, values: Mapping[str, object]) -> None:
        """Plain keys (objects and lists too) written into the stack's config file."""
        path = self.work_dir / f"Pulumi.{self.name}.yaml"
        document = yaml.safe_load(path.read_text()) if path.exists() else {}
        document = document or {}
        document.setdefault("config", {}).update({f"{self.project}:{k}": v for k, v in values.items()})
        path.write_text(yaml.safe_dump(document, sort_keys=False))

    def export(self) -> str:
        """`pulumi stack export` without --show-secrets (the Automation API's shows them)."""
        return self.cli_run("stack", "export").stdout
