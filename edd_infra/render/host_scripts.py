"""POSIX shell scripts the remote commands run on a host.

Each script is idempotent: a rerun rewrites nothing that is already right and restarts a
service only when one of its files changed. Each is also all-or-nothing: when a script fails
(say a worker that no longer answers ping), the files it replaced are put back and the service
restarted on them, so the host keeps matching the last successful `up` and a rerun converges. Non-secret files are embedded as quoted heredocs
(so `pulumi preview --diff` shows their text); secret files arrive on stdin as a bundle
(`secret_bundle`) and never appear in the command text, argv or output.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Sequence

from ..health_report import MARKER as HEALTH_MARKER
from ..upgrade_path import MAJOR_STEPS
from .broker_migration import MIGRATION_CA_PATH, SHOVEL_NAME

ServiceManager = Literal["systemd", "launchd"]

STATE_DIR = "/var/lib/edd-infra"
# System users that installing rabbitmq-server (and Erlang) creates.
PACKAGE_USERS = ("rabbitmq", "epmd")
q = shlex.quote
# The time in `health` lines (UTC, to the second).
UTC_NOW = "date -u +%Y-%m-%dT%H:%M:%SZ"

# `put TMP MODE OWNER GROUP PATH [keep]`: install TMP at PATH unless identical; sets changed=1 and
# journals the old file (`.edd-infra-old`, same owner and mode) for `finish` to restore, or with
# `keep` (a file holding a broker password the broker already has) to leave the new one in place.
# `on_rollback` is what restarts the service after a restore (`activate` adds to it); it also
# runs when a script that set `pending=1` (a package change) fails with no file to restore.
# `manifest` (set by `with_manifest`): after a success, the digests and modes of every file
# the script manages are recorded there, so a later `up` can tell which files were edited.
# umask 022: apt and the directories made here must stay readable by service users;
# temporary files are 0600 from mktemp and each file gets its own mode from `install`.
# One script at a time per host (flock, where there is one): a script whose SSH session was
# cut goes on running, and a rerun must not interleave with it, or the cut script could roll
# files back or restart a service after the rerun succeeded. How long to wait for it: 15 min,
# or the longest any worker on the host wrote to LOCK_WAIT/<unit> (its restart waits for
# running tasks, up to the hard time limit).
LOCK_WAIT = f"{STATE_DIR}/lock-wait"
PRELUDE = r"""set -eu
umask 022
if command -v flock >/dev/null 2>&1 && [ -w /var/run ]; then
  exec 9>>/var/run/edd-infra.lock
  lock_wait=$(cat LOCK_WAIT/* 2>/dev/null | grep -x '[0-9]\{1,9\}' | sort -n | tail -n 1 || true)
  [ "${lock_wait:-0}" -gt 900 ] || lock_wait=900
  flock -w "$lock_wait" 9 || { echo "another edd-infra script has been running on $(hostname) for $lock_wait s" >&2; exit 1; }
fi
changed=0
journal=$(mktemp)
on_rollback=:
pending=0
managed=$(mktemp)
# shellcheck disable=SC2034 # changed: read by the steps after the prelude (activate, restarts), not in every script
put() {
  echo "$5" >> "$managed"
  mkdir -p "$(dirname "$5")"
  if [ -f "$5" ] && cmp -s "$1" "$5"; then rm -f "$1"; else
    if [ "${6:-}" = keep ]; then echo "keep $5" >> "$journal"
    elif [ -f "$5" ]; then cp -p "$5" "$5.edd-infra-old"; echo "restore $5" >> "$journal"; else echo "remove $5" >> "$journal"; fi
    install -m "$2" -o "$3" -g "$4" "$1" "$5"; rm -f "$1"; changed=1
  fi
  chmod "$2" "$5"; chown "$3:$4" "$5"
}
finish() {
  rc=$?
  trap - EXIT
  while read -r action path; do
    if [ "$rc" -ne 0 ]; then
      case "$action" in restore) mv -f "$path.edd-infra-old" "$path" ;; remove) rm -f "$path" ;; esac
    else
      rm -f "$path.edd-infra-old"
    fi
  done < "$journal"
  if [ "$rc" -ne 0 ] && { [ -s "$journal" ] || [ "$pending" = 1 ]; }; then echo "rolled back to the previous files" >&2; eval "$on_rollback" || true; fi
  if [ "$rc" -eq 0 ] && [ -n "${manifest:-}" ] && [ -s "$managed" ]; then
    mkdir -p "$(dirname "$manifest")"; chmod 0700 "$(dirname "$manifest")"
    sort -u "$managed" | xargs sha256sum > "$manifest.sha256" || true
    sort -u "$managed" | xargs stat -c '%a %U %G %n' > "$manifest.stat" || true
  fi
  rm -f "$journal" "$managed"
  exit "$rc"
}
trap finish EXIT""".replace("LOCK_WAIT", LOCK_WAIT)

READ_SECRET_FILES = r"""while IFS=' ' read -r mode owner group path on_failure data; do
  [ -n "$data" ] || continue  # a repair token line, not a file
  tmp=$(mktemp); printf '%s' "$data" | base64 -d > "$tmp"; put "$tmp" "$mode" "$owner" "$group" "$path" "$on_failure"
done"""


@dataclass(frozen=True)
class FileSpec:
    """A file to place on a host."""

    path: str
    text: str
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"
    # Left in place when the script fails: it holds a broker password the broker already has
    # (putting the old one back would lock the service out).
    keep_on_failure: bool = False


def secret_bundle(files: Iterable[FileSpec]) -> str:
    """stdin for READ_SECRET_FILES: one `MODE OWNER GROUP PATH keep|restore BASE64` line per file."""
    lines = []
    for f in files:
        for word in (f.mode, f.owner, f.group, f.path):
            if not word or any(c.isspace() for c in word):
                raise ValueError(f"file attribute {word!r} must be one word")
        on_failure = "keep" if f.keep_on_failure else "restore"
        lines.append(f"{f.mode} {f.owner} {f.group} {f.path} {on_failure} {base64.b64encode(f.text.encode()).decode()}")
    return "\n".join(lines) + "\n"


def write_file(f: FileSpec) -> str:
    """Shell that writes a non-secret file from a quoted heredoc through `put`."""
    text = f.text if f.text.endswith("\n") else f.text + "\n"
    tag = "EDD_INFRA_EOF_" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return f'tmp=$(mktemp)\ncat > "$tmp" <<\'{tag}\'\n{text}{tag}\nput "$tmp" {f.mode} {f.owner} {f.group} {q(f.path)}'


def remove_file(path: str) -> str:
    """Shell that removes `path` if present, as a change (the service restarts), journaled as
    `put` does: a failed script puts it back."""
    p = q(path)
    return (
        f'if [ -e {p} ]; then mv -f {p} {q(path + ".edd-infra-old")}; echo "restore {path}" >> "$journal"; '
        f"changed=1; fi"
    )


def write_without_restart(files: Sequence[FileSpec], on_change: str = "") -> str:
    """Write `files` without counting them as a change that restarts the service (`changed`
    is kept as it was); `on_change` runs when one of them did change."""
    then = f'if [ "$changed" = 1 ]; then {on_change}; fi\n' if on_change else ""
    return "was=$changed; changed=0\n" + "\n".join(write_file(f) for f in files) + f"\n{then}changed=$was"


MANIFEST_DIR = f"{STATE_DIR}/manifests"

# Prints the name of every manifest whose files changed since the script that wrote it.
CHANGED_MANIFESTS = f"""cd {MANIFEST_DIR} 2>/dev/null || exit 0
for m in *.sha256; do
  [ -e "$m" ] || continue; n=${{m%.sha256}}
  if ! sha256sum --quiet --status -c "$m" 2>/dev/null || ! cut -c67- "$m" | xargs stat -c '%a %U %G %n' 2>/dev/null | cmp -s - "$n.stat"; then echo "$n"; fi
done
"""


def with_manifest(name: str, text: str) -> str:
    """`text` recording the files it manages under `name` (see PRELUDE)."""
    return f"manifest={MANIFEST_DIR}/{name}\n{text}"


def without_manifest(name: str, text: str) -> str:
    """`text` after dropping `name`'s manifest (the delete of `with_manifest`)."""
    return (
        f"rm -f {MANIFEST_DIR}/{name}.sha256 {MANIFEST_DIR}/{name}.stat\n"
        f"rmdir {MANIFEST_DIR} 2>/dev/null || true\n{text}"
    )


@dataclass(frozen=True)
class Step:
    """One step of a script: a shell function `name` under a one-line comment (`what`)."""

    name: str
    what: str
    body: str
    # False: a helper the other steps use, defined but not called from the main block.
    call: bool = True


def step(name: str, what: str, *lines: str, call: bool = True) -> Step:
    """A Step of the non-empty `lines`; one with no lines is left out of the script."""
    if "\n" in what:
        raise ValueError(f"a step's comment is one line: {what!r}")
    return Step(name, what, "\n".join(line for line in lines if line), call)


HEREDOC = re.compile(r"<<-?'?([A-Za-z_][A-Za-z0-9_]*)'?$")


def indent(body: str, pad: str = "  ") -> str:
    """`body` with `pad` before each line that starts outside a quoted string or a heredoc
    (so no file text, message or embedded Python changes)."""
    out, quote, heredoc = [], "", ""
    for line in body.split("\n"):
        if heredoc:
            out.append(line)
            heredoc = "" if line == heredoc else heredoc
            continue
        out.append(pad + line if line and not quote else line)
        i = 0
        while i < len(line):
            c = line[i]
            if quote == "'":
                quote = "" if c == "'" else quote
            elif c == "\\":
                i += 1
            elif quote:
                quote = "" if c == '"' else quote
            elif c in "'\"":
                quote = c
            elif c == "#" and (i == 0 or line[i - 1] in " \t;|&("):
                break
            i += 1
        if not quote and (m := HEREDOC.search(line)):
            heredoc = m[1]
    if quote or heredoc:
        raise ValueError(f"unterminated {'quote' if quote else 'heredoc'} in a step: {body[:80]!r}")
    return "\n".join(out)


def script(*parts: str | Step) -> str:
    """PRELUDE, then each Step as a shell function under its comment, then the main block:
    the plain `parts` (settings) and a call of each step, in order. Empty parts are left out."""
    steps = [p for p in parts if isinstance(p, Step) and p.body]
    if not steps:
        return "\n".join((PRELUDE,) + tuple(p for p in parts if isinstance(p, str))) + "\n"
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"two steps of one script share a name: {names}")
    functions = "\n\n".join(f"# {s.what}\n{s.name}() {{\n{indent(s.body)}\n}}" for s in steps)
    main = [p.name if isinstance(p, Step) else p for p in parts if (p.body and p.call if isinstance(p, Step) else p)]
    return f"{PRELUDE}\n\n{functions}\n\n" + "\n".join(main) + "\n"


# ---- service managers ---------------------------------------------------------------


def unit_path(manager: ServiceManager, name: str) -> str:
    if manager == "systemd":
        return f"/etc/systemd/system/{name}.service"
    return f"/Library/LaunchDaemons/{name}.plist"


def activate_steps(manager: ServiceManager, name: str, timeout: int = 60) -> list[Step]:
    """Enable at boot, (re)start when a file changed or it is down, wait until active."""
    if manager == "systemd":
        restart = step(
            "restart_if_changed",
            f"Enable {name} at boot; restart it when one of its files changed or it is down.",
            # reset-failed: a unit that crash-looped on the bad files hit systemd's start limit,
            # and a plain restart would be refused, leaving it down on the good ones.
            f'on_rollback="$on_rollback; systemctl daemon-reload; systemctl reset-failed {name} 2>/dev/null; '
            f'systemctl restart {name}"',
            f"systemctl daemon-reload\nsystemctl enable -q {q(name)}",
            f'if [ "$changed" = 1 ] || ! systemctl is-active -q {q(name)}; then systemctl restart {q(name)}; fi',
        )
        wait = step(
            "wait_until_active",
            f"Wait up to {timeout} s for systemd to report {name} active.",
            f"i=0; until systemctl is-active -q {q(name)}; do i=$((i+1)); if [ $i -ge {timeout} ]; then "
            f'systemctl status --no-pager {q(name)} || true; echo "{name} did not become active" >&2; exit 1; fi; sleep 1; done',
        )
        return [restart, wait]
    path = q(unit_path(manager, name))
    return [
        step(
            "restart_if_changed",
            f"Load {name} into launchd again when its plist changed or it is not loaded.",
            f'if [ "$changed" = 1 ] || ! launchctl print system/{q(name)} >/dev/null 2>&1; then\n'
            f"  launchctl bootout system/{q(name)} 2>/dev/null || true\n  launchctl bootstrap system {path}\nfi",
        )
    ]


def activate(manager: ServiceManager, name: str, timeout: int = 60) -> str:
    """`activate_steps` as one fragment."""
    return "\n".join(s.body for s in activate_steps(manager, name, timeout))


def remove_files(paths: Sequence[str]) -> str:
    """rm the files, then their directories where that left them empty (what `put` made):
    each file's own directory and its ancestors below the top two levels (never /etc or /var/lib),
    and an `edd-infra` directory above it (/etc/edd-infra, when its last file was in a subdirectory)."""
    dirs = set()
    for path in paths:
        parent = posixpath.dirname(path)
        dirs.add(parent)
        while (above := posixpath.dirname(parent)).count("/") >= 3 or posixpath.basename(above) == "edd-infra":
            parent = posixpath.dirname(parent)
            dirs.add(parent)
    # The name breaks ties: set order changes with each process's hash seed, and a script text
    # that changes from one `pulumi up` to the next is a change to the command.
    deepest_first = sorted(dirs, key=lambda d: (d.count("/"), len(d), d), reverse=True)
    return f"rm -f {' '.join(q(p) for p in paths)}\nrmdir {' '.join(q(d) for d in deepest_first)} 2>/dev/null || true"


def deactivate_steps(
    manager: ServiceManager, name: str, paths: Sequence[str], caches: Sequence[str] = ()
) -> list[Step]:
    """Stop, disable and remove a service and its files (the delete of `activate`), and the
    `caches`: directories others fill in beside them (Python's __pycache__)."""
    stop = (
        f"systemctl disable --now -q {q(name)} 2>/dev/null || true"
        if manager == "systemd"
        else f"launchctl bootout system/{q(name)} 2>/dev/null || true"
    )
    steps = [
        step("stop_service", f"Stop {name} and disable it at boot.", stop),
        step(
            "remove_service_files",
            "Remove its unit and files, then the directories that left empty.",
            f"rm -rf {' '.join(q(c) for c in caches)}" if caches else "",
            remove_files([unit_path(manager, name), *paths]),
        ),
    ]
    if manager == "systemd":
        steps.append(step("reload_systemd", "Make systemd forget the removed unit.", "systemctl daemon-reload"))
    return steps


def deactivate(manager: ServiceManager, name: str, paths: Sequence[str], caches: Sequence[str] = ()) -> str:
    """`deactivate_steps` as one fragment."""
    return "\n".join(s.body for s in deactivate_steps(manager, name, paths, caches))


def retry(command: str, attempts: int, what: str, on_fail: str = "") -> str:
    """Run `command` until it succeeds, at most `attempts` times, 2 s apart."""
    return (
        f"i=0; until {command}; do i=$((i+1)); if [ $i -ge {attempts} ]; then {on_fail}"
        f'echo "{what}" >&2; exit 1; fi; sleep 2; done'
    )


# ---- RabbitMQ -------------------------------------------------------------------------

# Debian's rabbitmq-server.service is ordered after epmd.socket, not epmd.service: at shutdown
# or reboot (and in `systemctl stop rabbitmq-server epmd.service`) epmd stops with the broker,
# `rabbitmqctl stop` can no longer reach the node (exit 78), and systemd kills RabbitMQ 6 s later
# and marks the stop failed. Ordered after epmd.service, the broker stops cleanly, then epmd.
BROKER_ORDER = FileSpec(
    "/etc/systemd/system/rabbitmq-server.service.d/edd-infra-order.conf",
    "# Written by edd-infra.\n[Unit]\nAfter=epmd.service\n",
)

# Over SSH there is no locale: rabbitmqctl 4.0 then stores a non-ASCII password read from
# stdin mangled. C.UTF-8 is built into Debian's libc.
BROKER_LOCALE = "export LC_ALL=C.UTF-8"


def broker_script(*parts: str | Step) -> str:
    """`script` for a broker host: rabbitmqctl gets a UTF-8 locale."""
    return script(BROKER_LOCALE, *parts)


def wait_for_broker(timeout: int) -> str:
    # await_startup exits at once while the node is not yet registered with epmd: loop.
    return retry(
        "rabbitmqctl -q await_startup --timeout 10 </dev/null >/dev/null 2>&1",
        max(1, timeout // 2),
        f"RabbitMQ did not answer within {timeout} s",
        on_fail="journalctl -u rabbitmq-server -n 20 --no-pager >&2 || true; ",
    )


def wait_for_rabbitmq(timeout: int) -> Step:
    return step(
        "wait_for_rabbitmq", f"Wait up to {timeout} s until the RabbitMQ node answers.", wait_for_broker(timeout)
    )


# The cookie arrives in the secret bundle at STAGED_COOKIE (root-only) and is installed
# from there, stopping the node first: rabbitmqctl cannot stop a node whose cookie changed.
ERLANG_COOKIE = "/var/lib/rabbitmq/.erlang.cookie"
STAGED_COOKIE = f"{STATE_DIR}/erlang.cookie"
INSTALL_COOKIE = f"""id -u rabbitmq >/dev/null 2>&1 || useradd --system --gid rabbitmq --home-dir /var/lib/rabbitmq \\
  --no-create-home --shell /usr/sbin/nologin rabbitmq
mkdir -p /var/lib/rabbitmq; chown rabbitmq:rabbitmq /var/lib/rabbitmq
if ! cmp -s {STAGED_COOKIE} {ERLANG_COOKIE}; then
  systemctl stop rabbitmq-server 2>/dev/null || true
  tmp=$(mktemp); cp {STAGED_COOKIE} "$tmp"; put "$tmp" 0400 rabbitmq rabbitmq {ERLANG_COOKIE}
fi"""


# The version to run: the pinned one; unpinned, the one installed, else apt's candidate (lists
# refreshed once). Unpinned never upgrades by itself: an upgrade is a packageVersion change.
CANDIDATE = step(
    "candidate",
    "The version of rabbitmq-server apt would install.",
    "apt-cache policy rabbitmq-server 2>/dev/null | sed -n 's/^ *Candidate: //p'",
    call=False,
)
CHOOSE_VERSION = step(
    "choose_version",
    "Choose the version to run: the pinned one, else the one installed, else apt's candidate.",
    r"""# "hold ok installed" once held: any wanted state, but installed.
installed=$(dpkg-query -W -f='${Status} ${Version}' rabbitmq-server 2>/dev/null | sed -n 's/^[a-z]* ok installed //p')
target=${wanted:-${installed:-$(candidate)}}
if [ -z "$target" ] || [ "$target" = "(none)" ]; then apt-get update -q </dev/null >/dev/null; target=$(candidate); fi
if [ -z "$target" ] || [ "$target" = "(none)" ]; then echo "rabbitmq-server: no version to install (apt has no candidate)" >&2; exit 1; fi""",
)

# RabbitMQ supports an in-place upgrade to the next minor series only, with every feature
# flag enabled first (docs: Upgrading RabbitMQ); never a downgrade.
# The same rule as upgrade_path (which `preview` applies), against the installed package.
_MAJOR_STEPS = " ".join(f'{a}.{b}) echo "{c} {d}" ;;' for (a, b), (c, d) in MAJOR_STEPS.items())
UPGRADE_PATH = (
    step(
        "series",
        "The release series of a package version: MAJOR MINOR.",
        r"""echo "$1" | sed -E 's/^([0-9]+:)?([0-9]+)\.([0-9]+).*/\2 \3/'""",
        call=False,
    ),
    step(
        "next_series",
        "The series RabbitMQ upgrades to in place from this version's.",
        r"""series "$1" | { read -r major minor; case "$major.$minor" in """
        + _MAJOR_STEPS
        + r""" *) echo "$major $((minor + 1))" ;; esac; }""",
        call=False,
    ),
    step(
        "refuse_unsupported_upgrade",
        "Refuse, before anything changes, a downgrade or an upgrade that skips a release series.",
        r"""if [ -n "$installed" ] && [ "$installed" != "$target" ]; then
  if dpkg --compare-versions "$target" lt "$installed"; then
    echo "rabbitmq-server $installed -> $target is a downgrade: RabbitMQ cannot run on data of a newer version. Set broker.packageVersion back to $installed" >&2; exit 1
  fi
  if [ "$(series "$target")" != "$(series "$installed")" ] && [ "$(series "$target")" != "$(next_series "$installed")" ]; then
    echo "rabbitmq-server $installed -> $target skips a release series: RabbitMQ upgrades one minor series at a time ($(series "$installed" | tr ' ' .) -> $(next_series "$installed" | tr ' ' .)), each with every feature flag enabled. Upgrade through each series in turn, or migrate to a new host (README: Upgrades)" >&2; exit 1
  fi
fi""",
    ),
)


# While apt installs or upgrades the package, its postinst must not start the broker: the
# script starts it once, after the install, on the config it wrote (a package start is then
# stopped and started again: seconds of a fresh `up`). A host's own policy-rc.d is left alone
# (one of ours, left by a script killed mid-install, is replaced).
POLICY_RC = "/usr/sbin/policy-rc.d"
NO_START_POLICY = r"""#!/bin/sh
# Written by edd-infra for one apt-get run; removed after it. Lets the script start RabbitMQ itself.
case "$1" in rabbitmq-server|rabbitmq-server.service) ;; *) exit 0 ;; esac
case "$2" in *start*|*reload*) exit 101 ;; esac
exit 0"""
INSTALL_WITHOUT_START = f"""if [ -e {POLICY_RC} ] && ! grep -qF 'Written by edd-infra' {POLICY_RC}; then install_version "$1"; return; fi
cat > {POLICY_RC} <<'EDD_INFRA_POLICY'
{NO_START_POLICY}
EDD_INFRA_POLICY
chmod 0755 {POLICY_RC}
rc=0; install_version "$1" || rc=$?
rm -f {POLICY_RC}
return "$rc\""""


def disk_check(memory_high_watermark: float) -> str:
    """Refuse, before anything changes, a host whose free disk is already below the free-disk
    limit the broker will get (that share of its memory): the broker would block every publisher."""
    return (
        f"need=$(awk '/^MemTotal:/ {{ printf \"%.0f\", $2 * 1024 * {memory_high_watermark} }}' /proc/meminfo)\n"
        'data=/var/lib/rabbitmq; [ -d "$data" ] || data=/var/lib\n'
        "have=$(df -P -B1 \"$data\" | awk 'NR == 2 { print $4 }')\n"
        'if [ "$have" -le "$need" ]; then\n'
        "  echo \"$((have / 1048576)) MiB free on $data on $(hostname), below the broker's free-disk limit of "
        "$((need / 1048576)) MiB (edd-infra:broker.memoryHighWatermark x memory): RabbitMQ would block every "
        f'publisher; free some disk or lower broker.memoryHighWatermark (now {memory_high_watermark})" >&2\n'
        "  exit 1\nfi"
    )


def broker_install(
    *,
    files: Sequence[FileSpec],
    package_version: str | None,
    start_timeout: int,
    secret_files: bool = False,
    erlang_cookie: bool = False,
    rabbitmq4_conf: FileSpec | None = None,
    apt_files: Sequence[FileSpec] = (),
    memory_high_watermark: float | None = None,
    clustered: bool = False,
    site_files: Sequence[FileSpec] = (),
    mode_guard: str = "",
) -> str:
    """Write the broker's config first (so it never starts listening everywhere), install the
    package offline-first, restart when anything changed, wait until it answers, enable
    every feature flag (the next upgrade needs them) and hold the package (an unattended
    upgrade never restarts the broker behind the program's back).

    A version change is an upgrade: refused before anything changes unless RabbitMQ supports
    it (UPGRADE_PATH), made with every feature flag enabled, and rolled back to the old
    package, started again, if the new one does not install or start.

    `apt_files` (render.apt_source: key, source, pin) go first; when they change, apt refreshes
    that source's lists only (the host may not reach the others).

    `rabbitmq4_conf` is written when the version installed is 4.0 or newer (its keys are
    unknown to 3.x, which refuses to boot on them); an older one gets the same file empty.

    `site_files` (for other programs on the host: the alert rules) are written without
    counting as a change: the broker does not read them, so they never restart it.

    With `secret_files`, stdin carries a `secret_bundle` (the TLS key, group rabbitmq; with
    `erlang_cookie` the cookie at STAGED_COOKIE too): the rabbitmq group (and for the cookie
    the user) is made first, as the package would, so the node reads them at its first start.

    `clustered`: a running node about to stop is drained first (`drain_before_stop`).
    `mode_guard` (`distribution_mode_guard`) runs before anything is written."""
    wanted = package_version or ""
    # The package makes these system users; note which ones are not there yet.
    mark_users = (
        f"mkdir -p {STATE_DIR}/created\n"
        f'for u in {" ".join(PACKAGE_USERS)}; do id -u "$u" >/dev/null 2>&1 || '
        f"touch {STATE_DIR}/created/package-user-$u; done"
    )
    secrets = (
        step(
            "install_secret_files",
            "Write the TLS key (and the staged Erlang cookie) from stdin, readable by the rabbitmq group.",
            mark_users,
            "getent group rabbitmq >/dev/null || groupadd --system rabbitmq",
            READ_SECRET_FILES,
        )
        if secret_files
        else None
    )
    cookie = step(
        "install_erlang_cookie",
        "Install the Erlang cookie, stopping the node first when it changes.",
        INSTALL_COOKIE if secret_files and erlang_cookie else "",
    )
    version_conf = ""
    if rabbitmq4_conf:
        empty = FileSpec(rabbitmq4_conf.path, "# Written by edd-infra: RabbitMQ 3.x takes none of these keys.\n")
        version_conf = (
            f'if dpkg --compare-versions "$target" ge 4~; then\n{write_file(rabbitmq4_conf)}\n'
            f"else\n{write_file(empty)}\nfi"
        )
    install = 'apt-get install -y -q --allow-change-held-packages --allow-downgrades "rabbitmq-server=$1" </dev/null'
    refresh = ""
    if apt_files:
        sources = next(f.path for f in apt_files if f.path.endswith(".sources"))
        refresh = write_without_restart(
            apt_files,
            on_change=f"apt-get update -q -o Dir::Etc::sourcelist={q(sources)} "
            "-o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 </dev/null >/dev/null",
        )
    return broker_script(
        step(
            "refuse_distribution_mode_switch",
            "Refuse to switch a running node between plain and TLS distribution.",
            mode_guard,
        ),
        step(
            "refuse_low_disk",
            "Refuse a host whose free disk is already below the broker's free-disk limit.",
            disk_check(memory_high_watermark) if memory_high_watermark is not None else "",
        ),
        f"wanted={q(wanted)}",
        CANDIDATE,
        CHOOSE_VERSION,
        *UPGRADE_PATH,
        step(
            "write_apt_source",
            "Write the apt source, its key and pin; refresh that source's lists when they changed.",
            refresh,
        ),
        step(
            "write_broker_config",
            "Write the broker's config files (a change restarts it).",
            *(write_file(f) for f in files),
            version_conf,
        ),
        # Ordering only: the daemon-reload in `activate` applies it, no restart needed.
        step(
            "write_side_files",
            "Write the files the broker does not read (unit ordering, alert rules): no restart.",
            write_without_restart([BROKER_ORDER, *site_files]),
        ),
        *((secrets,) if secrets else ()),
        cookie,
        step(
            "drain_node",
            "A cluster node about to restart hands its queues to the others first.",
            drain_before_stop(start_timeout) if clustered else "",
        ),
        step(
            "install_version",
            "apt-get install rabbitmq-server=VERSION, offline first (apt's lists refreshed once when that fails).",
            f"{install} >/dev/null || {{ apt-get update -q </dev/null >/dev/null && {install}; }}",
            call=False,
        ),
        step(
            "install_without_start",
            "install_version VERSION, the package's own start of the broker held back (started once, below).",
            INSTALL_WITHOUT_START,
            call=False,
        ),
        step(
            "install_rabbitmq",
            "Install the chosen version unless it is installed; an upgrade enables every feature flag first.",
            f'if [ "$installed" != "$target" ]; then\n'
            f"  export DEBIAN_FRONTEND=noninteractive\n"
            f"  {mark_users}\n"
            f'  if [ -n "$installed" ]; then\n'
            f"    if systemctl is-active -q rabbitmq-server; then\n"
            f'      rabbitmqctl -q enable_feature_flag all </dev/null >/dev/null || {{ echo "cannot enable every feature flag on $installed before the upgrade" >&2; exit 1; }}\n'
            f"    fi\n"
            # Put the old package back (the data is still the old version's: no new flag was enabled) and start it.
            f"    on_rollback=\"echo 'putting rabbitmq-server $installed back' >&2; install_version '$installed' && systemctl daemon-reload && systemctl restart rabbitmq-server\"\n"
            f"  fi\n"
            # The package may start epmd (and, under a host's own policy-rc.d, the node): epmd must
            # already listen where the drop-ins say (a rerun after a failed install finds
            # epmd.socket running with the old binding).
            f"  systemctl daemon-reload; systemctl stop rabbitmq-server epmd.service 2>/dev/null || true\n"
            f"  systemctl restart epmd.socket 2>/dev/null || true\n"
            f"  pending=1\n"
            f'  install_without_start "$target"\n'
            f"  changed=1\nfi",
        ),
        step(
            "hold_rabbitmq",
            "Hold the package: an unattended upgrade never restarts the broker behind the program's back.",
            "apt-mark hold rabbitmq-server >/dev/null",
        ),
        # A changed epmd binding needs epmd itself restarted, with the broker stopped first.
        step(
            "restart_epmd_if_changed",
            "When anything changed, stop the broker and restart epmd (it may listen elsewhere now).",
            'if [ "$changed" = 1 ]; then systemctl daemon-reload; systemctl stop rabbitmq-server epmd.service 2>/dev/null || true; '
            "systemctl restart epmd.socket 2>/dev/null || true; fi",
        ),
        *activate_steps("systemd", "rabbitmq-server", timeout=start_timeout),
        wait_for_rabbitmq(start_timeout),
        step(
            "enable_feature_flags",
            "Enable every feature flag: the next upgrade needs them.",
            enable_feature_flags(clustered),
        ),
    )


def enable_feature_flags(clustered: bool) -> str:
    """Enable every feature flag (the next upgrade needs them). A cluster node that starts while
    other nodes are still stopped (every node stopped for a change that cannot roll, the broker
    host's first back) cannot: RabbitMQ enables a flag only with every node running
    (`missing_clustered_nodes`). That one refusal passes; the last node to start enables them."""
    enable = "rabbitmqctl -q enable_feature_flag all </dev/null"
    if not clustered:
        return f"{enable} >/dev/null"
    return (
        f"if ! flags=$({enable} 2>&1); then\n"
        '  case "$flags" in\n'
        "    *missing_clustered_nodes*) echo 'feature flags: not every cluster node runs yet; the last node to "
        "start enables them' >&2 ;;\n"
        "    *) printf '%s\\n' \"$flags\" >&2; exit 1 ;;\n"
        "  esac\nfi"
    )


def distribution_mode_guard(*, env_path: str, mark: str, inter_node_tls: bool) -> str:
    """Refuse, before anything changes, to switch a running cluster node's Erlang distribution
    between plain and TLS (broker.interNodeTls): it cannot roll. A node with TLS distribution
    cannot talk to one without (it would leave the cluster and pause), and the CLI tools, which
    read the same rabbitmq-env.conf, could no longer drain or even reach the node still running
    the other way. With every node stopped first the switch goes through (README: Runbooks)."""
    test = f"grep -qF -- {q(mark)} {q(env_path)}"
    # True when the installed rabbitmq-env.conf already runs distribution the wanted way.
    same = test if inter_node_tls else f"! {test}"
    turns, runs = ("on", "without") if inter_node_tls else ("off", "with")
    message = (
        f"broker.interNodeTls turns {turns} while this node runs {runs} TLS distribution: this cannot roll "
        "(a node with TLS distribution cannot talk to one without, and the CLI tools could no longer reach "
        "the running node). Stop rabbitmq-server on every cluster node, the broker host's node last, then "
        "run up again (README: Runbooks). Nothing was changed on"
    )
    return (
        f"if [ -f {q(env_path)} ] && systemctl is-active -q rabbitmq-server && ! {{ {same}; }}; then\n"
        f'  echo {q(message)} "$(hostname)" >&2\n  exit 1\nfi'
    )


def firewall_install(*, rules: FileSpec, unit: FileSpec, unit_name: str, nft: str) -> str:
    """A cluster node's nftables table (render.cluster_firewall): nftables installed as the
    broker's package is (apt, offline first), the rules checked by `nft -c` before they are
    used, the unit enabled, and the table loaded, or replaced in one transaction when the
    rules changed (a reload: no moment without it). A failure puts the previous rules back."""
    install = "apt-get install -y -q nftables </dev/null >/dev/null"
    return script(
        step(
            "install_nftables",
            "Install nftables unless it is there, offline first.",
            f"if ! [ -x {q(nft)} ]; then\n"
            f"  export DEBIAN_FRONTEND=noninteractive\n"
            f"  {install} || {{ apt-get update -q </dev/null >/dev/null && {install}; }}\nfi",
        ),
        step("write_firewall", "Write the rules and the unit that loads them.", write_file(rules), write_file(unit)),
        step("check_rules", "Check the rules with nft before they are used.", f"{q(nft)} -c -f {q(rules.path)}"),
        step(
            "load_rules",
            f"Enable {unit_name}; load the table, or replace it in one transaction when the rules changed.",
            f'on_rollback="$on_rollback; systemctl daemon-reload; systemctl reload-or-restart {unit_name}"',
            f"systemctl daemon-reload\nsystemctl enable -q {q(unit_name)}",
            f'if [ "$changed" = 1 ] || ! systemctl is-active -q {q(unit_name)}; then systemctl reload-or-restart {q(unit_name)}; fi',
        ),
    )


def firewall_remove(*, paths: Sequence[str], unit_name: str) -> str:
    """The delete of `firewall_install`: the unit stopped (which deletes the table) and removed
    with the rules. nftables itself stays (a site may use it)."""
    return script(*deactivate_steps("systemd", unit_name, paths))


def drain_before_stop(timeout: int) -> str:
    """A cluster node that is about to restart (a changed file or package) first waits until
    every quorum queue keeps a majority without it (`await_online_quorum_plus_one`: the node
    restarted before it is back in every queue), then hands its queue leaders and clients to
    the other nodes (maintenance mode, `drain`). The restart ends maintenance mode; a failure
    before it ends it by hand. Nodes restart one at a time because each node's command waits
    for the one before it (RabbitBroker)."""
    return (
        'if { [ "$changed" = 1 ] || [ "$installed" != "$target" ]; } && systemctl is-active -q rabbitmq-server; then\n'
        f"  if ! rabbitmq-upgrade -q -t {timeout} await_online_quorum_plus_one </dev/null >/dev/null; then\n"
        f'    echo "not restarting this node: a quorum queue would lose its majority without it (another node has '
        f'not been back in every quorum queue for {timeout} s; rabbitmq-upgrade await_online_quorum_plus_one)" >&2\n'
        "    exit 1\n  fi\n"
        '  on_rollback="$on_rollback; rabbitmq-upgrade -q revive </dev/null >/dev/null 2>&1"\n'
        "  rabbitmq-upgrade -q drain </dev/null >/dev/null\n"
        "  echo 'drained (maintenance mode) before the restart' >&2\n"
        "fi"
    )


def cluster_join(*, seed: str, node: str, start_timeout: int) -> str:
    """Join this node to the seed's cluster unless it is a member already; a node that joins
    takes a replica of every quorum queue. Only a node that says it is not yet a member is
    reset (its own data goes: the cluster's replaces it); one that does not answer is left alone."""
    return broker_script(
        wait_for_rabbitmq(start_timeout),
        step(
            "list_cluster_members",
            "Ask the node which cluster it is in; one that does not say is left alone.",
            f"members=$(rabbitmqctl -q eval 'rabbit_nodes:all().' </dev/null) || "
            f'{{ echo "{node} did not say which cluster it is in: not resetting it" >&2; exit 1; }}',
        ),
        step(
            "join_cluster",
            f"Unless it is a member already, reset the node, join {seed}'s cluster and take quorum replicas.",
            f"if ! printf '%s\\n' \"$members\" | grep -qF {q(repr(seed))}; then\n"
            f"  rabbitmqctl -q stop_app </dev/null\n  rabbitmqctl -q reset </dev/null\n"
            f"  {retry(f'rabbitmqctl -q join_cluster {q(seed)} </dev/null', max(1, start_timeout // 2), f'{node} could not join {seed}')}\n"
            f"  rabbitmqctl -q start_app </dev/null\n"
            f"  rabbitmq-queues -q grow {q(node)} all </dev/null >/dev/null\nfi",
        ),
    )


def cluster_leave(*, node: str) -> str:
    """The delete of `cluster_join`: hand this node's quorum replicas back, then leave the
    cluster (reset tells the other nodes); a stopped node is left as it is."""
    return broker_script(
        step(
            "leave_cluster",
            "On a running node: hand its quorum replicas back, then reset it out of the cluster.",
            "if systemctl is-active -q rabbitmq-server; then\n"
            f"  rabbitmq-queues -q shrink {q(node)} </dev/null >/dev/null || true\n"
            "  rabbitmqctl -q stop_app </dev/null && rabbitmqctl -q reset </dev/null && rabbitmqctl -q start_app </dev/null\nfi",
        )
    )


def broker_remove(*, files: Sequence[str], purge_package: bool) -> str:
    marks = f"{STATE_DIR}/created"
    purge = (
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q --autoremove rabbitmq-server </dev/null >/dev/null\n"
        "rm -rf /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq\n"
        f"for u in {' '.join(PACKAGE_USERS)}; do if [ -e {marks}/package-user-$u ]; then "
        f'userdel "$u" 2>/dev/null || true; groupdel "$u" 2>/dev/null || true; rm -f {marks}/package-user-$u; fi; done\n'
        f"rmdir {marks} {STATE_DIR} 2>/dev/null || true"
        if purge_package
        else ""
    )
    # The hold is the program's: a host it no longer manages takes upgrades again.
    unhold = "apt-mark unhold rabbitmq-server >/dev/null 2>&1 || true"
    return broker_script(
        *deactivate_steps("systemd", "rabbitmq-server", [*files, BROKER_ORDER.path]),
        step("unhold_rabbitmq", "Let the package take upgrades again.", unhold),
        step("purge_rabbitmq", "Purge the package and its data; remove the users it made here.", purge),
    )


def read_password(command: str, user: str) -> str:
    """`rabbitmqctl add_user|change_password USER` with the password from stdin's first line.

    Exactly two arguments, no `-q`: RabbitMQ 4's rabbitmqctl lets a command read stdin only
    when its argument count says the password is not on argv (3.10 reads it either way)."""
    return f"head -n 1 | rabbitmqctl {command} {q(user)} >/dev/null"


def broker_admin(*, user: str, start_timeout: int) -> str:
    """Create or re-password the admin Pulumi uses (password: stdin's first line), tag it,
    drop guest. Lines after the first carry drift repair tokens and are ignored."""
    has = 'printf "%s\\n" "$users" | grep -qxF --'
    return broker_script(
        wait_for_rabbitmq(start_timeout),
        step(
            "list_users",
            "List the broker's users once (each rabbitmqctl call starts an Erlang VM: about a second).",
            "users=$(rabbitmqctl -q list_users --no-table-headers </dev/null | cut -f1)",
        ),
        step(
            "set_admin_password",
            f"Create {user}, or set its password, from stdin's first line.",
            f"if {has} {q(user)}; then {read_password('change_password', user)}; else {read_password('add_user', user)}; fi",
        ),
        step(
            "tag_administrator",
            f"Tag {user} administrator.",
            f"rabbitmqctl -q set_user_tags {q(user)} administrator </dev/null >/dev/null",
        ),
        step(
            "delete_guest",
            "Delete RabbitMQ's default guest user.",
            f"if {has} guest; then rabbitmqctl -q delete_user guest </dev/null >/dev/null; fi",
        ),
    )


def password_restore(*, user: str, start_timeout: int) -> str:
    """Set a broker user's password back to stdin's first line (the user must exist)."""
    return broker_script(
        wait_for_rabbitmq(start_timeout),
        step(
            "restore_password",
            f"Set {user}'s password back from stdin's first line.",
            read_password("change_password", user),
        ),
    )


def delete_user(user: str) -> Step:
    """On a running broker, delete `user` if it is there."""
    return step(
        "delete_broker_user",
        f"Delete the broker user {user} if the broker runs and has it.",
        f"if systemctl is-active -q rabbitmq-server && rabbitmqctl -q list_users --no-table-headers </dev/null "
        f"| cut -f1 | grep -qxF -- {q(user)}; then rabbitmqctl -q delete_user {q(user)} </dev/null >/dev/null; fi",
    )


def broker_admin_remove(*, user: str) -> str:
    return broker_script(delete_user(user))


# ---- blue/green migration (broker.migrateFrom) ----------------------------------------

# Definitions from stdin into the node. The node reads the file itself (rabbitmqctl's stdin
# is not read on RabbitMQ 4), so it goes in a directory only rabbitmq can read, gone after.
IMPORT_DEFINITIONS = """defs=$(mktemp -d)
(umask 077; cat > "$defs/definitions.json")
chown -R rabbitmq "$defs"
if ! rabbitmqctl -q import_definitions "$defs/definitions.json" </dev/null >/dev/null; then rm -rf "$defs"; exit 1; fi
rm -rf "$defs\""""


def queue_exists(vhost: str, queue: str) -> str:
    """A shell test: `queue` exists in `vhost` (after an asynchronous definitions import)."""
    return f"rabbitmqctl -q list_queues -p {q(vhost)} name --no-table-headers </dev/null | grep -qxF -- {q(queue)}"


def queue_messages(vhost: str, queue: str) -> Step:
    """Shell function `left`: messages (ready and unacked) in `queue`, empty if there is no
    such queue, `unknown` if the broker does not answer."""
    return step(
        "left",
        f"Messages left in {queue}: empty without the queue, unknown when the broker does not answer.",
        f"out=$(rabbitmqctl -q list_queues -p {q(vhost)} name messages --no-table-headers </dev/null) "
        f"|| {{ echo unknown; return 0; }}; printf '%s\\n' \"$out\" | awk -v q={q(queue)} '$1 == q {{ print $2 }}'",
        call=False,
    )


def definitions_export(*, start_timeout: int) -> str:
    """The old broker's definitions on stdout (users with their password hashes)."""
    return broker_script(
        wait_for_rabbitmq(start_timeout),
        step("export_definitions", "Print the broker's definitions.", "rabbitmqctl -q export_definitions - </dev/null"),
    )


def definitions_import(*, user: str, vhost: str, queue: str, exchange: str, start_timeout: int) -> str:
    """Import the old broker's definitions (stdin after the first line), wait until the
    import (asynchronous) made `queue`, then give the shovel its account: `user` with the
    password on stdin's first line, allowed to publish to `exchange` only."""
    exists = f"rabbitmqctl -q list_users --no-table-headers </dev/null | cut -f1 | grep -qxF -- {q(user)}"
    has_queue = queue_exists(vhost, queue)
    password = "printf '%s\\n' \"$password\" | rabbitmqctl"
    return broker_script(
        wait_for_rabbitmq(start_timeout),
        step("read_password", "Read the shovel account's password: stdin's first line.", "IFS= read -r password"),
        step("import_definitions", "Import the old broker's definitions: the rest of stdin.", IMPORT_DEFINITIONS),
        step(
            "wait_for_queue",
            f"Wait until the import (asynchronous) made {queue} in {vhost}.",
            retry(has_queue, 30, f"the imported definitions made no queue {queue} in {vhost} within 60 s"),
        ),
        step(
            "set_shovel_password",
            f"Create {user}, or set its password.",
            f"if {exists}; then {password} change_password {q(user)} >/dev/null; "
            f"else {password} add_user {q(user)} >/dev/null; fi",
        ),
        step(
            "set_shovel_permissions",
            f"Allow {user} to publish to {exchange} only.",
            f"rabbitmqctl -q set_permissions -p {q(vhost)} {q(user)} '^$' {q('^' + exchange + '$')} '^$' </dev/null >/dev/null",
        ),
    )


def definitions_import_remove(*, user: str) -> str:
    """Retire the shovel's account on the new broker."""
    return broker_script(delete_user(user))


def shovel_start(*, ca: FileSpec, vhost: str, queue: str, drain_timeout: int, start_timeout: int) -> str:
    """On the old broker: the shovel plugin (enabled online, no restart), the new broker's CA,
    the shovel (definitions on stdin), then wait until `queue` is empty."""
    return broker_script(
        wait_for_rabbitmq(start_timeout),
        step(
            "enable_shovel_plugin",
            "Enable the shovel plugin (online, no restart).",
            "rabbitmq-plugins -q enable rabbitmq_shovel </dev/null >/dev/null",
        ),
        step("write_ca", "Write the new broker's CA, which the shovel verifies it against.", write_file(ca)),
        step("import_definitions", "Import the shovel's definition from stdin.", IMPORT_DEFINITIONS),
        queue_messages(vhost, queue),
        step(
            "wait_until_drained",
            f"Wait up to {drain_timeout} s until the shovel has moved every message out of {queue}.",
            f"""waited=0
while n=$(left); [ "${{n:-0}}" != 0 ]; do
  if [ "$waited" -ge {drain_timeout} ]; then
    echo "$n messages still in {queue} on the old broker after {drain_timeout} s (broker.migrateFrom.drainTimeout); \\
the shovel goes on moving them: rerun up to wait again" >&2
    rabbitmqctl -q shovel_status </dev/null >&2 || true
    exit 1
  fi
  sleep 2; waited=$((waited + 2))
done
echo "the old {queue} queue was empty after $waited s\"""",
        ),
    )


def shovel_retire(*, vhost: str, queue: str, units: Sequence[str]) -> str:
    """Retire the old broker host: refuse while its queue still holds messages (the shovel is
    moving them), then drop the shovel and stop the old services for good (their files and
    the broker's data stay, for a look back)."""
    stop = " ".join(q(u) for u in [*units, "rabbitmq-server"])
    return broker_script(
        queue_messages(vhost, queue),
        step(
            "drop_shovel",
            f"On a running broker: refuse while {queue} still holds messages, then drop the shovel.",
            f"""if systemctl is-active -q rabbitmq-server; then
  n=$(left)
  if [ "${{n:-0}}" != 0 ]; then
    echo "$n messages still in {queue} on the old broker: the shovel is moving them; retire it once that is 0" >&2
    exit 1
  fi
  rabbitmqctl -q clear_parameter -p {q(vhost)} shovel {SHOVEL_NAME} </dev/null >/dev/null 2>&1 || true
fi""",
        ),
        step(
            "stop_old_services",
            "Stop and disable the old services and broker for good (files and data stay).",
            f"""for unit in {stop}; do systemctl disable --now "$unit" >/dev/null 2>&1 || true; done""",
        ),
        step("remove_ca", "Remove the new broker's CA.", remove_files([MIGRATION_CA_PATH])),
    )


# ---- service accounts -----------------------------------------------------------------


def account_create(*, user: str, group: str, extra_groups: Sequence[str]) -> str:
    """System user and group, created once; markers record what this stack created."""
    marks = f"{STATE_DIR}/created"
    return script(
        step(
            "create_group",
            f"Create the system group {group} unless it exists, noting that this stack made it.",
            f"mkdir -p {marks}",
            f"getent group {q(group)} >/dev/null || {{ groupadd --system {q(group)}; touch {marks}/group-{group}; }}",
        ),
        step(
            "create_user",
            f"Create the system user {user} (no home, no login) unless it exists, noting that this stack made it.",
            f"id -u {q(user)} >/dev/null 2>&1 || {{ useradd --system --gid {q(group)} --home-dir /nonexistent "
            f"--no-create-home --shell /usr/sbin/nologin {q(user)}; touch {marks}/user-{user}; }}",
        ),
        step(
            "add_to_groups",
            f"Add {user} to the groups it needs, which must exist already.",
            *(
                f'getent group {q(extra)} >/dev/null || {{ echo "group {extra} does not exist on $(hostname)" >&2; exit 1; }}\n'
                f"usermod -a -G {q(extra)} {q(user)}"
                for extra in extra_groups
            ),
        ),
    )


def account_remove(*, user: str, group: str) -> str:
    marks = f"{STATE_DIR}/created"
    return script(
        step(
            "remove_user",
            f"Remove {user} if this stack created it.",
            f"if [ -e {marks}/user-{user} ]; then userdel {q(user)} 2>/dev/null || true; rm -f {marks}/user-{user}; fi",
        ),
        step(
            "remove_group",
            f"Remove {group} if this stack created it.",
            f"if [ -e {marks}/group-{group} ]; then groupdel {q(group)} 2>/dev/null || true; rm -f {marks}/group-{group}; fi",
        ),
        step(
            "remove_state_dir",
            "Remove edd-infra's state directory once it is empty.",
            f"rmdir {marks} {STATE_DIR} 2>/dev/null || true",
        ),
    )


# ---- Celery worker and Flower ---------------------------------------------------------


def service_install(
    *,
    manager: ServiceManager,
    name: str,
    definition: str,
    health: str = "",
    absent: Sequence[str] = (),
    lock_wait: int | None = None,
) -> str:
    """Secret files from stdin, the unit or plist from a heredoc, the `absent` files removed,
    then (re)start and check. `lock_wait`: how long this service's script may hold the host
    lock (see PRELUDE)."""
    unit = FileSpec(unit_path(manager, name), definition, "0644", "root", "root" if manager == "systemd" else "wheel")
    hold = f"mkdir -p {LOCK_WAIT}; echo {int(lock_wait)} > {LOCK_WAIT}/{q(name)}" if lock_wait else ""
    return script(
        step("install_secret_files", "Write the service's files from stdin (never on argv).", READ_SECRET_FILES),
        step("record_lock_wait", "Let other scripts wait for the host lock as long as this restart may take.", hold),
        step("remove_stale_files", "Remove the files it must no longer have.", *(remove_file(p) for p in absent)),
        step("write_unit", f"Write {name}'s {'unit' if manager == 'systemd' else 'plist'}.", write_file(unit)),
        *activate_steps(manager, name),
        step("check_health", f"Check that {name} works, not only runs.", health),
    )


def secret_files_install(restart_units: Sequence[str] = ()) -> str:
    """Files from a `secret_bundle` on stdin; when one changed, the running ones of
    `restart_units` restart (services that read them only at start)."""
    restart = (
        f'if [ "$changed" = 1 ]; then systemctl try-restart {" ".join(q(u) for u in restart_units)}; fi'
        if restart_units
        else ""
    )
    return script(
        step("install_secret_files", "Write the files from stdin (never on argv).", READ_SECRET_FILES),
        step(
            "restart_if_changed",
            "When a file changed, restart the running services that read it only at start.",
            restart,
        ),
    )


def files_remove(paths: Sequence[str]) -> str:
    """The delete of `secret_files_install`: the files, then the directories that left empty."""
    return script(step("remove_files", "Remove the files, then the directories that left empty.", remove_files(paths)))


def service_remove(*, manager: ServiceManager, name: str, files: Sequence[str], caches: Sequence[str] = ()) -> str:
    return script(
        *deactivate_steps(manager, name, files, caches),
        step(
            "forget_lock_wait",
            "Drop its lock wait, and edd-infra's state directory once it is empty.",
            f"rm -f {LOCK_WAIT}/{q(name)}; rmdir {LOCK_WAIT} {STATE_DIR} 2>/dev/null || true",
        ),
    )


# argv: the app (`-A`), the node, seconds to wait, the required settings (JSON). Asks the node
# for its config (`inspect conf`) every 0.25 s with one Python and one Celery import, until it
# answers: exit 3 if the app does not import, 2 if the node never answered, 1 naming the
# settings that differ (stdout), 0 otherwise.
# The reply holds the broker URL: it stays in this process.
WORKER_CONF_CHECK = """import json, sys, time
try:
    from celery.app.utils import find_app
    app = find_app(sys.argv[1])
except Exception:
    sys.exit(3)
node, wait, required = sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
deadline, conf = time.monotonic() + wait, None
while conf is None:
    try:
        conf = (app.control.inspect(destination=[node], timeout=0.5).conf() or {}).get(node)
    except Exception:
        conf = None  # the broker does not answer yet either
    if conf is None:
        if time.monotonic() > deadline:
            sys.exit(2)
        time.sleep(0.25)
def value(name):
    head, _, key = name.partition(".")
    return (conf.get(head) or {}).get(key) if key else conf.get(head)
off = [name for name, want in required.items() if value(name) != want]
print(" ".join(off))
sys.exit(1 if off else 0)"""


def worker_ping(
    *,
    env_file: str,
    user: str,
    working_directory: str,
    virtualenv: str,
    app: str,
    node: str,
    required: Mapping[str, object],
    wait_seconds: int = 180,
) -> str:
    """Wait until the worker answers through the broker (the broker URL comes from its env
    file), asking for its config: a worker whose app ignored or overrode the program's Celery
    config module (render.celery_config) would run without publisher confirms or late acks,
    and `up` says so, naming the settings (`required`). One `inspect conf` serves as both the
    ping and the check (WORKER_CONF_CHECK: one process asks until the worker answers, so a
    worker that has just started is seen within a quarter second)."""
    check = (
        f"(set -a; . {q(env_file)}; set +a; cd {q(working_directory)} && runuser -u {q(user)} -- "
        f'{q(virtualenv + "/bin/python")} -c {q(WORKER_CONF_CHECK)} {q(app)} {q(node)}@"$(hostname)" '
        f"{wait_seconds} {q(json.dumps(dict(required), sort_keys=True))}) 2>/dev/null"
    )
    return (
        "start=$(date +%s); rc=0\n"
        # shellcheck cannot read the env file: it exists only on the host, root-only (it holds the broker URL).
        "# shellcheck source=/dev/null # the env file exists only on the host (it holds secrets)\n"
        f"off=$( {check} ) || rc=$?\n"
        f'if [ "$rc" -eq 3 ]; then echo "worker {node}: its app {app} does not import in {working_directory} '
        f'as {user} with its env file" >&2; exit 1; fi\n'
        f'if [ "$rc" -ge 2 ]; then echo "worker {node} did not answer ping (inspect conf) within {wait_seconds} s" '
        ">&2; exit 1; fi\n"
        f'case " $off " in *\' broker_transport_options.confirm_publish \'*) echo "worker {node} runs without '
        f"publisher confirms: its app does not load CELERY_CONFIG_MODULE or overrides broker_transport_options "
        f'(README: Publisher confirms)" >&2; exit 1 ;; esac\n'
        f'[ "$rc" -eq 0 ] || {{ echo "worker {node} runs without the program\'s Celery settings $off: its app '
        f'overrides them (README: Publisher confirms)" >&2; exit 1; }}\n'
        # What the `health` output reports (health_report.worker_report).
        f'printf \'%s{{"node": "%s@%s", "waitedSeconds": %s, "checkedAt": "%s"}}\\n\' {q(HEALTH_MARKER)} '
        f'{q(node)} "$(hostname)" "$(( $(date +%s) - start ))" "$({UTC_NOW})"'
    )


def http_report(*, virtualenv: str, url: str, ca_file: str | None = None) -> str:
    """GET `url` once more (an https one verified against `ca_file`) and print its status and
    the start of its body as a `health` line (health_report.flower_report)."""
    code = (
        "import json, ssl, sys, time, urllib.request\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[3]) if len(sys.argv) > 3 else None\n"
        "r = urllib.request.urlopen(sys.argv[1], timeout=3, context=ctx)\n"
        "body = r.read(64).decode(errors='replace').strip()\n"
        "now = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())\n"
        "print(sys.argv[2] + json.dumps({'status': r.status, 'body': body, 'checkedAt': now}))"
    )
    return (
        f"{q(virtualenv + '/bin/python')} -c {q(code)} {q(url)} {q(HEALTH_MARKER)}{' ' + q(ca_file) if ca_file else ''}"
    )


def health_probe(*, vhost: str) -> str:
    """On the broker host, after every service `up` touched: the cluster's running nodes and
    their versions, `vhost`'s queues (messages, consumers), one `<section> <text>` line each
    (health_report.broker_report). Reads only; its stdin (what it follows, as a digest) is unused."""
    one_line = "tr -d '\\n'"
    return script(
        step(
            "discard_stdin",
            "Read stdin away: a digest that only tells Pulumi when to run this again.",
            "cat >/dev/null",
        ),
        step(
            "report_broker",
            f"Print the time, the cluster's running nodes and their versions, and {vhost}'s queues.",
            f'echo "checkedAt $({UTC_NOW})"',
            f'echo "cluster $(rabbitmqctl -q cluster_status --formatter json | {one_line})"',
            f'echo "queues $(rabbitmqctl -q list_queues -p {q(vhost)} name messages consumers --formatter json '
            f'| {one_line})"',
        ),
    )


# argv[1]: the URL; argv[2], if given: the CA file an https URL's certificate must chain to.
HTTP_PROBE = (
    "import ssl, sys, urllib.request; "
    "ctx = ssl.create_default_context(cafile=sys.argv[2]) if len(sys.argv) > 2 else None; "
    "urllib.request.urlopen(sys.argv[1], timeout=3, context=ctx)"
)


def http_ok(*, virtualenv: str, url: str, attempts: int = 30, ca_file: str | None = None) -> str:
    """Wait until `url` answers 2xx, using the service's own Python (no curl needed); an https
    `url` is verified against `ca_file` (certificate chain and host name). On failure the last
    error is printed (a refused certificate says why)."""
    probe = f"{q(virtualenv + '/bin/python')} -c {q(HTTP_PROBE)} {q(url)}{' ' + q(ca_file) if ca_file else ''}"
    return retry(
        f"probe_out=$({probe} 2>&1)",
        attempts,
        f"{url} did not answer",
        on_fail="printf '%s\\n' \"$probe_out\" | tail -n 1 >&2; ",
    )


def private_files(pattern: str) -> str:
    """Shell that makes files matching `pattern` (a glob; none is fine) 0600 if they are not:
    what a service wrote before its unit set UMask=0077. Not a change (no restart)."""
    return f'for f in {pattern}; do [ -f "$f" ] && chmod go= "$f"; done; true'
