"""The example consumer program (examples/consumer) under the real CLI, for the engine and hosts tiers.

`example_venv()` is the example's own virtualenv, with edd-infra installed from this checkout
the way the example's requirements.txt says (a real `pip install`), cached outside the work
tree (`~/.cache/edd-infra/example-venv`) and reinstalled when the package's files change.
`ExampleStack` is a copy of the example in a temp dir with its own file backend; its
`pulumi` runs with the Python language host on PATH (the program runs through it, as a
consumer's would).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from edd_infra.workspace import CACHE, ROOT, cli_dir, engine_problem
from tests.engine.conftest import PASSPHRASE
from tests.policy.conftest import LANGUAGE_HOST, language_host

EXAMPLE = ROOT / "examples" / "consumer"
VENV = CACHE / "example-venv"
PROJECT = "edd-consumer"


def example_problem() -> Optional[str]:
    """Why the example cannot be previewed here (with the fix), or None."""
    problem = engine_problem()
    if problem:
        return problem
    if language_host() is None:
        return (
            f"Python language host {LANGUAGE_HOST} not found on PATH or beside the pulumi CLI (a Pulumi "
            "program in its own directory runs through it; it ships with the official pulumi install)"
        )
    return None


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def example_venv() -> tuple[Path, float | None]:
    """The example's virtualenv, and how long a fresh install took (None when it was cached).

    Dependencies are installed once (keyed by pyproject.toml and the example's requirements);
    when only the package's code changed, edd-infra alone is reinstalled (--no-deps)."""
    deps = _digest([ROOT / "pyproject.toml", EXAMPLE / "requirements.txt"])
    code = _digest(sorted(p for p in (ROOT / "edd_infra").rglob("*") if p.is_file() and "__pycache__" not in p.parts))
    python = VENV / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "example-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # engine and hosts tests may ask at once (xdist)
        stamps = {name: (VENV / f".{name}.sha256") for name in ("deps", "code")}
        have = {name: p.read_text() if p.exists() else "" for name, p in stamps.items()}
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        if not python.exists() or have["deps"] != deps:
            shutil.rmtree(VENV, ignore_errors=True)
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            subprocess.run([*pip, "-r", "requirements.txt"], cwd=EXAMPLE, check=True, capture_output=True, text=True)
            took = time.monotonic() - started
        elif have["code"] != code:
            subprocess.run(
                [*pip, "--no-deps", "--force-reinstall", "../.."],
                cwd=EXAMPLE,
                check=True,
                capture_output=True,
                text=True,
            )
            took = None
        else:
            return VENV, None
        stamps["deps"].write_text(deps)
        stamps["code"].write_text(code)
        return VENV, took


class ExampleStack:
    """A copy of examples/consumer in `work_dir` with a stack in its own file backend."""

    def __init__(self, work_dir: Path, venv: Path, config: dict[str, str], secrets: dict[str, str]):
        self.dir = work_dir / "consumer"
        shutil.copytree(EXAMPLE, self.dir, ignore=shutil.ignore_patterns("venv", "Pulumi.*.yaml", "__pycache__"))
        shutil.copy(EXAMPLE / "Pulumi.yaml", self.dir / "Pulumi.yaml")
        (self.dir / "venv").symlink_to(venv)
        backend = work_dir / "state"
        backend.mkdir()
        host = language_host()
        self.name = f"t{uuid.uuid4().hex[:8]}"
        self.env = dict(
            os.environ,
            PULUMI_BACKEND_URL=f"file://{backend}",
            PULUMI_CONFIG_PASSPHRASE=PASSPHRASE,
            PULUMI_SKIP_UPDATE_CHECK="true",
            PATH=os.pathsep.join([str(host.parent) if host else "", str(cli_dir()), os.environ["PATH"]]),
        )
        self.run("stack", "init", self.name, "--secrets-provider", "passphrase")
        for key, value in config.items():
            self.run("config", "set", f"{PROJECT}:{key}", value)
        for key, value in secrets.items():
            self.run("config", "set", "--secret", f"{PROJECT}:{key}", stdin=value)

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(cli_dir() / "pulumi"), *args, "--non-interactive"],
            cwd=self.dir,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pulumi {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def preview(self) -> list[tuple[str, str, str]]:
        """`pulumi preview --json`: (operation, type, name) of every step planned."""
        out = self.run("preview", "--json").stdout
        steps = json.loads(out).get("steps", [])
        return [(s["op"], s["urn"].split("::")[-2].split("$")[-1], s["urn"].split("::")[-1]) for s in steps]

    def outputs(self) -> dict:
        return json.loads(self.run("stack", "output", "--json").stdout)
