"""shellcheck over every host script the program renders (tests/unit/rendered_scripts.py): the
committed stacks (prod, dev) and the sandbox configs (single host plain and hardened, fleet,
cluster). The scripts run as root on production hosts under /bin/sh (dash on Debian), so they are
checked as POSIX sh at every severity; a finding that stays is disabled in the rendered script
itself with its reason beside it (`# shellcheck disable=SCxxxx # why`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.unit.rendered_scripts import rendered_scripts
from tests.unit.test_habits import tool

DIRECTIVE = re.compile(r"#\s*shellcheck\s+(\S+)(.*)")


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found (the sandbox configs' certificates are made with it: apt-get install openssl)")
    return rendered_scripts(tmp_path_factory.mktemp("tls"))


def test_every_rendered_script_passes_shellcheck(scripts, tmp_path):
    shellcheck = tool("shellcheck")
    files = {}
    for i, (text, where) in enumerate(sorted(scripts.items(), key=lambda item: item[1][0])):
        path = tmp_path / f"{i:03d}-{where[0].replace(':', '-')}.sh"
        path.write_text(text)
        files[str(path)] = where
    result = subprocess.run(
        [shellcheck, "--shell=sh", "--severity=style", "--format=json1", *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    findings = json.loads(result.stdout)["comments"]
    print(
        f"\nshellcheck {subprocess.run([shellcheck, '--version'], capture_output=True, text=True).stdout.split()[4]}: "
        f"{len(files)} distinct scripts ({sum(len(w) for w in files.values())} renderings), {len(findings)} findings"
    )
    assert len(files) >= 40, "fewer scripts than the program renders: is the collection broken?"
    report = [f"{files[f['file']][0]} line {f['line']}: SC{f['code']} ({f['level']}) {f['message']}" for f in findings]
    assert not report, "\n".join(report)


def test_every_shellcheck_directive_in_a_rendered_script_says_why(scripts):
    for text, where in scripts.items():
        for line in text.splitlines():
            match = DIRECTIVE.search(line)
            if match and not line.lstrip().startswith(("echo", "printf")):
                # `disable=SC2034 # reason` or `source=/dev/null # reason`
                assert re.search(r"#\s*\S.{9,}", match[2]), (
                    f"{where[0]}: a shellcheck directive without its reason: {line}"
                )
