"""The GitHub workflows: they parse, run only what `make` runs locally, and name real files,
targets and stacks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from edd_infra.workspace import CLI_VERSION

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"


def load(name: str) -> dict:
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    document["on"] = document.pop(True, document.get("on"))  # YAML 1.1 reads `on:` as true
    return document


def steps(document: dict) -> list[dict]:
    return [step for job in document["jobs"].values() for step in job["steps"]]


def make_targets() -> dict[str, str]:
    """Makefile target -> its recipe text."""
    targets, current = {}, None
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+):(?!=)", line)
        if match:
            current = match.group(1)
            targets[current] = ""
        elif line.startswith("\t") and current:
            targets[current] += line[1:] + "\n"
        elif line.strip() == "":
            current = None
    return targets


def committed_stacks() -> set[str]:
    ignored = set((ROOT / ".gitignore").read_text().split())
    return {p.name[len("Pulumi.") : -len(".yaml")] for p in ROOT.glob("Pulumi.*.yaml") if p.name not in ignored}


@pytest.mark.parametrize("name", ["preview.yml", "test.yml"])
def test_workflow_runs_only_make_targets_and_existing_files(name):
    document = load(name)
    targets = make_targets()
    runs = [step["run"] for step in steps(document) if "run" in step]
    assert runs
    for run in runs:
        for target in re.findall(r"\bmake\s+(?:-\S+\s+)*([A-Za-z][\w-]*)", run):
            assert target in targets, f"{name}: make {target} is not a Makefile target"
        # The engine is reached only through make (or the CI script that runs make).
        assert not re.search(r"(^|[\s;&|(])(scripts/)?pulumi\s", run), f"{name}: calls pulumi directly"
        for path in re.findall(r"(?<![\w$/.-])(\.?[\w-]+(?:/[\w.-]+)+)", run):
            assert (ROOT / path).exists(), f"{name}: {path} does not exist"
    for step in steps(document):
        uses = step.get("uses", "")
        if uses.startswith("pulumi/actions"):
            assert "v" + str(step["with"]["pulumi-version"]) == CLI_VERSION  # the pinned CLI, as make toolchain
        for key, value in (step.get("with") or {}).items():
            if key.endswith("-file"):
                assert (ROOT / value).exists()


def test_preview_workflow_previews_every_committed_stack_with_the_policy_pack():
    document = load("preview.yml")
    assert list(document["on"]) == ["pull_request"]  # never pull_request_target: fork code gets no secrets
    assert document["jobs"]["comment"]["strategy"]["matrix"] == document["jobs"]["preview"]["strategy"]["matrix"]
    job = document["jobs"]["preview"]
    assert set(job["strategy"]["matrix"]["stack"]) == committed_stacks() == {"prod", "dev"}
    preview = [s for s in job["steps"] if re.search(r"^make preview-pr\b", s.get("run", ""), re.M)]
    assert len(preview) == 1 and 'STACK="$STACK"' in preview[0]["run"]
    assert job["env"]["STACK"] == "${{ matrix.stack }}"
    recipe = make_targets()["preview-pr"]
    assert "preview --diff --policy-pack policy" in recipe and "-s $(STACK)" in recipe
    assert (ROOT / "policy" / "PulumiPolicy.yaml").exists() and (ROOT / "policy" / "__main__.py").exists()
    assert "toolchain" in (ROOT / "Makefile").read_text().split("preview-pr:", 1)[1].splitlines()[0]


PROTECTED_ENVIRONMENT = "preview"
SAME_REPOSITORY = "github.event.pull_request.head.repo.full_name == github.repository"
# Triggers whose run has the base repository's secrets and token while it can check out a pull
# request's (or a fork's) code.
PRIVILEGED_TRIGGERS = {"pull_request_target", "workflow_run", "issue_comment"}


def _secrets(value) -> set[str]:
    return set(re.findall(r"(?<![\w.])secrets\.([A-Za-z_]\w*)", str(value))) - {"GITHUB_TOKEN"}


def _environment(job: dict) -> str | None:
    environment = job.get("environment")
    return environment.get("name") if isinstance(environment, dict) else environment


def door_problems(document: dict) -> list[str]:
    """Ways a pull request's code could run with the stacks' secrets without a reviewer (issue 20).
    Empty for a workflow that keeps the door shut."""
    problems = []
    triggers = document["on"] if isinstance(document["on"], (list, dict)) else [document["on"]]
    for trigger in PRIVILEGED_TRIGGERS & set(triggers):
        problems.append(f"triggered by {trigger}: runs with the base repository's secrets and token")
    if _secrets(document.get("env")):
        problems.append(
            f"workflow-level env holds secrets {sorted(_secrets(document.get('env')))}: every job gets them"
        )
    if document.get("permissions") != {}:
        problems.append("workflow-level permissions are not {}: every job inherits them")
    for name, job in document["jobs"].items():
        used = _secrets({k: v for k, v in job.items() if k != "if"})
        runs_code = any(
            "run" in step or step.get("uses", "").startswith("actions/checkout") for step in job.get("steps", [])
        )
        for step in job.get("steps", []):
            ref = str((step.get("with") or {}).get("ref", ""))
            if step.get("uses", "").startswith("actions/checkout") and "head" in ref:
                problems.append(f"{name}: checks out the pull request's head ({ref})")
            if (
                step.get("uses", "").startswith("actions/checkout")
                and used
                and (step.get("with") or {}).get("persist-credentials") is not False
            ):
                problems.append(f"{name}: checkout leaves the token in .git/config for the code it runs")
        if not used:
            continue
        if _environment(job) != PROTECTED_ENVIRONMENT:
            problems.append(
                f"{name}: uses secrets {sorted(used)} outside the protected environment "
                f"{PROTECTED_ENVIRONMENT!r} (environment: {_environment(job)!r})"
            )
        if SAME_REPOSITORY not in str(job.get("if", "")):
            problems.append(f"{name}: uses secrets and runs for forks too (no `if: {SAME_REPOSITORY}`)")
        writes = {k: v for k, v in (job.get("permissions") or {"*": "inherited"}).items() if v != "read"}
        if writes:
            problems.append(f"{name}: uses secrets with write permissions {writes}")
        if runs_code and job.get("permissions") is None:
            problems.append(f"{name}: runs code with secrets and the default token permissions")
    return problems


def test_preview_workflow_keeps_pull_request_code_away_from_unreviewed_secrets():
    document = load("preview.yml")
    assert door_problems(document) == []
    jobs = document["jobs"]
    preview = jobs["preview"]
    assert _secrets(preview) == {"PULUMI_CONFIG_PASSPHRASE", "PULUMI_BACKEND_URL", "PULUMI_ACCESS_TOKEN"}
    assert _environment(preview) == PROTECTED_ENVIRONMENT and preview["if"] == SAME_REPOSITORY
    assert preview["permissions"] == {"contents": "read"}
    # The job that may write to the pull request runs none of its code and holds no secret.
    comment = jobs["comment"]
    assert _secrets(comment) == set() and comment["permissions"] == {"pull-requests": "write"}
    assert not any("run" in s or s.get("uses", "").startswith("actions/checkout") for s in comment["steps"])
    assert [s for s in comment["steps"] if "createComment" in str(s)] and comment["needs"] == "preview"
    # Forks: a notice, no secrets, no checkout, no permissions.
    fork = jobs["fork"]
    assert fork["if"] == SAME_REPOSITORY.replace("==", "!=") and _secrets(fork) == set()
    assert fork["permissions"] == {} and "skipped" in fork["steps"][0]["run"]
    assert not any(s.get("uses", "").startswith("actions/checkout") for s in fork["steps"])


REOPENED = {
    "pull_request_target with the head checked out": lambda d: (
        d.__setitem__("on", {"pull_request_target": None}),
        d["jobs"]["preview"]["steps"][0]
        .setdefault("with", {})
        .__setitem__("ref", "${{ github.event.pull_request.head.sha }}"),
    ),
    "secrets in a job without the environment": lambda d: d["jobs"]["preview"].pop("environment"),
    "another environment": lambda d: d["jobs"]["preview"].__setitem__("environment", "ci"),
    "forks allowed": lambda d: d["jobs"]["preview"].pop("if"),
    "secrets in the comment job": lambda d: d["jobs"]["comment"].__setitem__(
        "env", {"PULUMI_CONFIG_PASSPHRASE": "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"}
    ),
    "secrets at workflow level": lambda d: d.__setitem__(
        "env", {"PULUMI_ACCESS_TOKEN": "${{ secrets.PULUMI_ACCESS_TOKEN }}"}
    ),
    "write token beside the secrets": lambda d: d["jobs"]["preview"]["permissions"].__setitem__(
        "pull-requests", "write"
    ),
    "token left in .git/config": lambda d: d["jobs"]["preview"]["steps"][0].pop("with"),
    "default permissions": lambda d: d.pop("permissions"),
}


@pytest.mark.parametrize("door", sorted(REOPENED))
def test_reopening_a_door_is_caught(door):
    document = load("preview.yml")
    REOPENED[door](document)
    assert door_problems(document) != []


def test_test_workflow_runs_the_ci_script_on_push():
    document = load("test.yml")
    assert list(document["on"]) == ["push"]
    runs = " ".join(s["run"] for s in steps(document) if "run" in s)
    assert "bash .ci/run" in runs
    assert "make test" in (ROOT / ".ci" / "run").read_text()
