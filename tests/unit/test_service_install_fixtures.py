"""`host_scripts.service_install` case by case, from data: one JSON file per case in
fixtures/service_install/ (in the manner of pyinfra's operation fixtures), so adding a case is
adding a file. Each holds the arguments, the host's facts before (files, whether the service
is active, whether its health check passes) and what must follow: the exit code, the files
after (text and mode), the service manager calls in order, and what stderr says.

The script runs for real in a temp dir: its absolute paths are moved under it, and
`systemctl`, `install` and `chown` are stand-ins (the stand-in systemctl logs each call and
keeps the service's state; `install` copies and sets the mode, as root's would without the
owner), so any user can run it. Cases: fresh host, no-op, a changed file, a stopped service,
a failing health check rolled back.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from edd_infra.render import host_scripts
from edd_infra.render.host_scripts import FileSpec

CASES = sorted((Path(__file__).parent / "fixtures" / "service_install").glob("*.json"))

STAND_INS = {
    "systemctl": """echo "$*" >> "$FAKE/calls"
case "$1" in
  is-active) [ -e "$FAKE/active" ] ;;
  restart) touch "$FAKE/active" ;;
  *) exit 0 ;;
esac""",
    # install -m MODE -o OWNER -g GROUP SRC DST: the copy and the mode (owners need root).
    "install": '''while [ $# -gt 2 ]; do case "$1" in -m) mode=$2; shift 2 ;; -o|-g) shift 2 ;; *) break ;; esac; done
cp "$1" "$2" && chmod "$mode" "$2"''',
    "chown": "exit 0",
}


def load(path: Path, root: Path) -> dict:
    return json.loads(path.read_text().replace("{root}", str(root)))


@pytest.mark.parametrize("case_file", CASES, ids=[c.stem for c in CASES])
def test_service_install_case(case_file, tmp_path):
    root, fake, bin_dir = tmp_path / "host", tmp_path / "fake", tmp_path / "bin"
    for d in (root, fake, bin_dir):
        d.mkdir()
    case = load(case_file, root)
    for tool, body in STAND_INS.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    facts = case["facts"]
    for path, text in facts["files"].items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    if facts["active"]:
        (fake / "active").touch()
    if facts["healthy"]:
        (fake / "healthy").touch()

    args = case["args"]
    text = host_scripts.service_install(
        manager="systemd", name=args["name"], definition=args["definition"], health=args.get("health", "")
    )
    # The host's absolute paths, under the temp dir.
    moved = "|".join(re.escape(p) for p in ("/etc/systemd/system/", host_scripts.LOCK_WAIT, "/var/run"))
    text = re.sub(f"(?<![\\w/])({moved})", lambda m: f"{root}{m[1]}", text)
    (root / "var" / "run").mkdir(parents=True)
    bundle = host_scripts.secret_bundle(
        [FileSpec(f["path"], f["text"], f.get("mode", "0640")) for f in case["secret_files"]]
    )
    result = subprocess.run(
        ["sh", "-c", text],
        input=bundle,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE=str(fake)),
    )

    expect = case["expect"]
    assert result.returncode == expect["exit"], f"{case['description']}\n{result.stderr}"
    for said in expect.get("stderr", []):
        assert said in result.stderr, result.stderr
    for path, wanted in expect["files"].items():
        assert Path(path).read_text() == wanted, path
    for path, mode in expect.get("modes", {}).items():
        assert oct(Path(path).stat().st_mode & 0o777)[2:] == mode, path
    calls = (fake / "calls").read_text().splitlines() if (fake / "calls").exists() else []
    assert calls == expect["calls"], case["description"]
    if expect.get("no_leftovers"):
        assert not list(root.rglob("*.edd-infra-old")), "a backup was left behind"


def test_the_cases_cover_what_the_issue_names():
    names = {c.stem for c in CASES}
    assert {"fresh_host", "no_op", "changed_file", "failed_health_check_rolls_back"} <= names
