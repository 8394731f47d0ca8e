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
    return {p.name[len("Pulumi."):-len(".yaml")] for p in ROOT.glob("Pulumi.*.yaml") if p.name not in ignored}


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
    job = document["jobs"]["preview"]
    assert set(job["strategy"]["matrix"]["stack"]) == committed_stacks() == {"prod", "dev"}
    preview = [s for s in job["steps"] if re.search(r"^make preview-pr\b", s.get("run", ""), re.M)]
    assert len(preview) == 1 and 'STACK="$STACK"' in preview[0]["run"]
    assert job["env"]["STACK"] == "${{ matrix.stack }}"
    recipe = make_targets()["preview-pr"]
    assert "preview --diff --policy-pack policy" in recipe and "-s $(STACK)" in recipe
    assert (ROOT / "policy" / "PulumiPolicy.yaml").exists() and (ROOT / "policy" / "__main__.py").exists()
    assert "toolchain" in (ROOT / "Makefile").read_text().split("preview-pr:", 1)[1].splitlines()[0]


def test_preview_workflow_skips_without_secrets_and_comments_otherwise():
    job = load("preview.yml")["jobs"]["preview"]
    secrets = set(re.findall(r"\bsecrets\.([A-Z]\w+)", str(job)))
    assert secrets == {"PULUMI_CONFIG_PASSPHRASE", "PULUMI_BACKEND_URL", "PULUMI_ACCESS_TOKEN"}
    check = job["steps"][1]
    assert check["id"] == "secrets" and "PULUMI_CONFIG_PASSPHRASE" in check["run"] and "skipped" in check["run"]
    gated = [s for s in job["steps"][2:] if s.get("if") != "steps.preview.outcome == 'failure'"]
    assert gated and all(s.get("if") == "steps.secrets.outputs.available == 'true'" for s in gated)
    comment = [s for s in job["steps"] if s.get("uses", "").startswith("actions/github-script")]
    assert len(comment) == 1 and "createComment" in comment[0]["with"]["script"]
    # The preview's own failure is reported after the comment is posted.
    preview = next(s for s in job["steps"] if s.get("id") == "preview")
    assert preview["continue-on-error"] is True and preview["shell"] == "bash"  # bash: pipefail through tee
    assert job["steps"][-1]["if"] == "steps.preview.outcome == 'failure'"


def test_test_workflow_runs_the_ci_script_on_push():
    document = load("test.yml")
    assert list(document["on"]) == ["push"]
    runs = " ".join(s["run"] for s in steps(document) if "run" in s)
    assert "bash .ci/run" in runs
    assert "make test" in (ROOT / ".ci" / "run").read_text()
