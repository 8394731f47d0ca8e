"""Host scripts run for real with stand-in tools, and their cases as data (in the manner of
pyinfra's operation fixtures): one JSON file per case in fixtures/<script>/, so adding a case
is adding a file.

A case holds `description`, `args` (the renderer's keyword arguments; `files` as FileSpec
fields), optionally `secret_files` (the stdin bundle) or `stdin`, `facts` (`files`: path ->
text before; `state`: the stand-ins' state, name -> text) and `expect`: `exit`, `files`
(path -> text after, null for absent), `modes`, `calls` (the changing tool calls, in order),
`stderr`/`stdout` (substrings), `gone` (paths, directories too), `state` (name -> text, null for absent), `no_leftovers`.
`{root}` in a case is the host's root in the temp dir.

The script's absolute paths under /etc, /var/lib and /var/run are moved under that root. The
stand-ins keep their state in $FAKE (`active.<unit>`, `user.<name>`, `group.<name>`,
`installed`: dpkg's `<selection> ok installed <version>`, `candidate`, `broken`: a version
apt-get fails to install, `fail.<systemctl verb>`, `users`: the broker's) and log what they
change to $FAKE/calls; reads (is-active aside) are not logged. Every tool that changes a host
is stood in, so a case never touches the machine running it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Callable, Mapping

FIXTURES = Path(__file__).parent / "fixtures"

LAST = "for a; do last=$a; done; "
STAND_INS = {
    "systemctl": LAST + 'echo "systemctl $*" >> "$FAKE/calls"\n'
    '[ ! -e "$FAKE/fail.$1" ] || exit 1\n'
    'case "$1" in\n'
    '  is-active) [ -e "$FAKE/active.$last" ] ;;\n'
    '  restart|reload-or-restart) touch "$FAKE/active.$last" ;;\n'
    '  stop) shift; for u; do rm -f "$FAKE/active.$u"; done ;;\n'
    '  disable) rm -f "$FAKE/active.$last" ;;\n'
    "esac",
    # install -m MODE -o OWNER -g GROUP SRC DST: the copy and the mode (the owners may not exist here).
    "install": 'while [ $# -gt 2 ]; do case "$1" in -m) mode=$2; shift 2 ;; -o|-g) shift 2 ;; *) break ;; esac; done\n'
    'cp "$1" "$2" && chmod "$mode" "$2"',
    "chown": "exit 0",
    "launchctl": 'echo "launchctl $*" >> "$FAKE/calls"',
    "journalctl": "exit 0",
    "getent": '[ "$1" = group ] && [ -e "$FAKE/group.$2" ] && echo "$2:x:999:"',
    "id": '[ "$1" = -u ] && [ -e "$FAKE/user.$2" ] && echo 999',
    "groupadd": LAST + 'echo "groupadd $*" >> "$FAKE/calls"; touch "$FAKE/group.$last"',
    "useradd": LAST + 'echo "useradd $*" >> "$FAKE/calls"; touch "$FAKE/user.$last"',
    "usermod": 'echo "usermod $*" >> "$FAKE/calls"',
    "userdel": LAST + 'echo "userdel $*" >> "$FAKE/calls"; rm -f "$FAKE/user.$last"',
    "groupdel": LAST + 'echo "groupdel $*" >> "$FAKE/calls"; rm -f "$FAKE/group.$last"',
    "dpkg-query": 'cat "$FAKE/installed" 2>/dev/null || true',
    "dpkg": '[ "$1" = --compare-versions ] || exit 99; exec /usr/bin/dpkg "$@"',
    "apt-cache": 'echo "  Candidate: $(cat "$FAKE/candidate" 2>/dev/null || echo "(none)")"',
    # apt-get install rabbitmq-server=V: V installed (its hold kept) unless V is the broken build.
    "apt-get": 'echo "apt-get $*" >> "$FAKE/calls"\n'
    'case "$*" in *rabbitmq-server=*)\n'
    '  v=${*##*rabbitmq-server=}; [ "$v" != "$(cat "$FAKE/broken" 2>/dev/null)" ] || exit 100\n'
    '  sel=$(cut -d" " -f1 "$FAKE/installed" 2>/dev/null); echo "${sel:-install} ok installed $v" > "$FAKE/installed"\n'
    # The package's postinst starts the broker unless policy-rc.d says 101 (deb-systemd-invoke).
    '  if [ -x "$POLICY_RC" ] && { "$POLICY_RC" rabbitmq-server.service start; [ $? -eq 101 ]; }; then :; else\n'
    '    echo "postinst: deb-systemd-invoke start rabbitmq-server.service" >> "$FAKE/calls"; touch "$FAKE/active.rabbitmq-server"\n'
    "  fi ;;\n"
    "esac",
    "apt-mark": 'echo "apt-mark $*" >> "$FAKE/calls"\n'
    'v=$(cut -d" " -f4 "$FAKE/installed" 2>/dev/null) || exit 0\n'
    'case "$1" in hold) echo "hold ok installed $v" > "$FAKE/installed" ;; '
    'unhold) echo "install ok installed $v" > "$FAKE/installed" ;; esac',
    # rabbitmqctl as RabbitMQ 4.0's wrapper: add_user/change_password read stdin only with
    # exactly two arguments; the password read is kept in password.<user>, never logged.
    "rabbitmqctl": 'case "$*" in\n'
    '  *await_startup*) [ ! -e "$FAKE/node-down" ] ;;\n'
    '  *list_users*) cat "$FAKE/users" 2>/dev/null || true ;;\n'
    '  *add_user*|*change_password*) echo "rabbitmqctl $1 $2" >> "$FAKE/calls"\n'
    '    [ "$#" -eq 2 ] && IFS= read -r pw && printf "%s\\n" "$pw" > "$FAKE/password.$2"\n'
    '    grep -qxF -- "$2" "$FAKE/users" 2>/dev/null || echo "$2" >> "$FAKE/users" ;;\n'
    '  *) echo "rabbitmqctl $*" >> "$FAKE/calls" ;;\n'
    "esac",
    "rabbitmq-upgrade": 'echo "rabbitmq-upgrade $*" >> "$FAKE/calls"',
    "rabbitmq-plugins": 'echo "rabbitmq-plugins $*" >> "$FAKE/calls"',
    "rabbitmq-queues": 'echo "rabbitmq-queues $*" >> "$FAKE/calls"',
}

# The host's absolute paths a script names itself (its arguments already carry {root}).
MOVED = ("/etc/", "/var/lib/", "/var/run", "/usr/sbin/policy-rc.d")


def stand_in(bin_dir: Path, tools: Mapping[str, str]) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool, body in tools.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)


def run_script(
    text: str, tmp_path: Path, *, stdin: str = "", tools: Mapping[str, str] | None = None, **env: str
) -> subprocess.CompletedProcess:
    """Run `text` under sh with `tools` (default: all STAND_INS) first on PATH, in tmp_path/bin."""
    bin_dir = tmp_path / "bin"
    stand_in(bin_dir, STAND_INS if tools is None else tools)
    return subprocess.run(
        ["sh", "-c", text],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", **env),
    )


def cases(script: str) -> list[Path]:
    return sorted((FIXTURES / script).glob("*.json"))


def move_under(text: str, root: Path) -> str:
    moved = "|".join(re.escape(p) for p in MOVED)
    return re.sub(f"(?<![\\w/.])({moved})", lambda m: f"{root}{m[1]}", text)


def run_case(case_file: Path, tmp_path: Path, render: Callable[[dict], str]) -> None:
    from edd_infra.render.host_scripts import FileSpec, secret_bundle

    root, fake = tmp_path / "host", tmp_path / "fake"
    for d in (root / "var" / "run", root / "usr" / "sbin", fake):
        d.mkdir(parents=True)
    case = json.loads(case_file.read_text().replace("{root}", str(root)))
    facts = case.get("facts", {})
    for path, text in facts.get("files", {}).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        if text.startswith("#!"):
            Path(path).chmod(0o755)
    for name, text in facts.get("state", {}).items():
        (fake / name).write_text(text)
    stdin = case.get("stdin", "")
    if "secret_files" in case:
        stdin = secret_bundle([FileSpec(**f) for f in case["secret_files"]])
    result = run_script(
        move_under(render(case["args"]), root),
        tmp_path,
        stdin=stdin,
        FAKE=str(fake),
        POLICY_RC=f"{root}/usr/sbin/policy-rc.d",
    )

    expect, said = case["expect"], f"{case['description']}\nstderr: {result.stderr}"
    assert result.returncode == expect["exit"], said
    for text in expect.get("stderr", []):
        assert text in result.stderr, said
    for text in expect.get("stdout", []):
        assert text in result.stdout, result.stdout
    for path, wanted in expect.get("files", {}).items():
        assert (Path(path).read_text() if Path(path).exists() else None) == wanted, path
    for path in expect.get("gone", []):
        assert not Path(path).exists(), f"{path} is left"
    for path, mode in expect.get("modes", {}).items():
        assert oct(Path(path).stat().st_mode & 0o777)[2:] == mode, path
    for name, wanted in expect.get("state", {}).items():
        assert ((fake / name).read_text() if (fake / name).exists() else None) == wanted, name
    calls = (fake / "calls").read_text().splitlines() if (fake / "calls").exists() else []
    assert calls == expect["calls"], f"{said}\ncalls: {calls}"
    if expect.get("no_leftovers"):
        assert not list(root.rglob("*.edd-infra-old")), "a backup was left behind"
