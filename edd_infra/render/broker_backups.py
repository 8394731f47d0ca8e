"""Backups of the broker's definitions: a systemd timer, the export it runs, and the restore.

RabbitMQ's definitions are everything but messages: users with their password hashes,
vhosts, permissions, policies, queues, exchanges and bindings. The timer's service exports
them (`rabbitmqctl export_definitions -`, read by root from the CLI's stdout: the node never
writes into the backup directory) to a root-only directory and keeps the newest `keep`.
Each file's name carries the UTC time and a digest of what edd-infra deployed on the host
(its manifests: the digest of every file it wrote, config and secrets alike, as a digest of
digests), so a restore can be matched to the deployment that took it. It is computed on the
host when the backup runs, so no config change has to rewrite the backup's own files. `edd-infra-restore` imports one (the newest by default)
into a running node and deletes `guest`, which a node with fresh data has again.
"""

from __future__ import annotations

from .host_scripts import (
    BROKER_LOCALE,
    IMPORT_DEFINITIONS,
    MANIFEST_DIR,
    FileSpec,
    activate_steps,
    q,
    queue_exists,
    retry,
    script,
    step,
    write_file,
)

BACKUP_DIR = "/var/backups/edd-infra"
UNIT = "edd-infra-backup"
BACKUP_SCRIPT = "/usr/local/sbin/edd-infra-backup"
RESTORE_SCRIPT = "/usr/local/sbin/edd-infra-restore"
SYSTEMD_DIR = "/etc/systemd/system"
# 12 hex digits over every manifest edd-infra keeps on the host (see host_scripts.with_manifest).
DEPLOYMENT_DIGEST = f"cat {MANIFEST_DIR}/*.sha256 2>/dev/null | sha256sum | cut -c1-12"


# Inside the node (`rabbitmqctl eval`): drop the bindings whose queue or exchange is not in the
# export. Celery's pidbox and event queues (and pidbox exchanges) are transient, so the export
# leaves them out but keeps their bindings, and an import of such a file fails
# (`resources_missing`). Prints how many went. Reads and writes NODE_COPY (rabbitmq's).
NODE_COPY = "/var/lib/rabbitmq/edd-infra-backup.json"
KEEP_RESOLVABLE_BINDINGS = """F = "NODE_COPY",
{ok, B} = file:read_file(F),
D = rabbit_json:decode(B),
Key = fun(O, K) -> {maps:get(<<"vhost">>, O), maps:get(K, O)} end,
Qs = [Key(Q, <<"name">>) || Q <- maps:get(<<"queues">>, D, [])],
Xs = [Key(X, <<"name">>) || X <- maps:get(<<"exchanges">>, D, [])],
Builtin = fun({_, <<>>}) -> true; ({_, <<"amq.", _/binary>>}) -> true; (_) -> false end,
Exchange = fun(E) -> Builtin(E) orelse lists:member(E, Xs) end,
To = fun(Bd) -> case maps:get(<<"destination_type">>, Bd) of
                    <<"queue">> -> lists:member(Key(Bd, <<"destination">>), Qs);
                    _ -> Exchange(Key(Bd, <<"destination">>)) end end,
All = maps:get(<<"bindings">>, D, []),
Kept = [Bd || Bd <- All, Exchange(Key(Bd, <<"source">>)), To(Bd)],
ok = file:write_file(F, rabbit_json:encode(D#{<<"bindings">> => Kept})),
length(All) - length(Kept).""".replace("NODE_COPY", NODE_COPY)


def backup_script(*, keep: int) -> str:
    """Export the definitions to BACKUP_DIR (bindings of transient queues left out, so the
    file imports as it is), then delete all but the newest `keep`."""
    return f"""#!/bin/sh
# Written by edd-infra: the broker's definitions (users with password hashes, vhosts,
# permissions, policies, queues, exchanges, bindings) to {BACKUP_DIR}, newest {keep} kept.
set -eu
umask 077
{BROKER_LOCALE}
dir={BACKUP_DIR}
mkdir -p "$dir"
chmod 0700 "$dir"
tmp=$(mktemp "$dir/.export.XXXXXX")
trap 'rm -f "$tmp" {NODE_COPY}' EXIT
rabbitmqctl -q export_definitions - </dev/null > "$tmp"
grep -q '"users"' "$tmp" || {{ echo "the export has no users: not kept" >&2; exit 1; }}
install -m 0600 -o rabbitmq -g rabbitmq "$tmp" {NODE_COPY}
keep_resolvable_bindings=$(cat <<'EDD_INFRA_ERL'
{KEEP_RESOLVABLE_BINDINGS}
EDD_INFRA_ERL
)
dropped=$(rabbitmqctl -q eval "$keep_resolvable_bindings" </dev/null)
cat {NODE_COPY} > "$tmp"
name="definitions-$(date -u +%Y%m%dT%H%M%SZ)-$({DEPLOYMENT_DIGEST}).json"
mv "$tmp" "$dir/$name"
echo "exported $(wc -c < "$dir/$name") bytes to $dir/$name ($dropped bindings of transient queues left out)"
find "$dir" -maxdepth 1 -name 'definitions-*.json' | sort -r | tail -n +{keep + 1} | xargs -r rm -f
"""


def restore_script(*, vhost: str, queue: str, start_timeout: int) -> str:
    """Import a backup (argument, or the newest in BACKUP_DIR) into the running node, and
    wait until the (asynchronous) import made the app's `queue`."""
    has_queue = queue_exists(vhost, queue)
    return f"""#!/bin/sh
# Written by edd-infra: import a definitions backup into this node (default: the newest in
# {BACKUP_DIR}), then delete guest, which a node with fresh data has again.
# Usage: edd-infra-restore [FILE]
set -eu
{BROKER_LOCALE}
file=${{1:-$(find {BACKUP_DIR} -maxdepth 1 -name 'definitions-*.json' 2>/dev/null | sort -r | head -n 1)}}
if [ -z "$file" ] || [ ! -f "$file" ]; then
  echo "no backup to restore (none in {BACKUP_DIR}, or no such file)" >&2
  exit 1
fi
digest=$({DEPLOYMENT_DIGEST})
case $file in
  *-"$digest".json) ;;
  *) echo "note: $file was taken when edd-infra's files on this host differed (now $digest): the next up puts the config's state back" >&2 ;;
esac
systemctl is-active -q rabbitmq-server || systemctl start rabbitmq-server
rabbitmqctl -q await_startup --timeout {start_timeout} </dev/null >/dev/null
import_definitions() {{
{IMPORT_DEFINITIONS}
}}
import_definitions < "$file"
{retry(has_queue, 30, f"the import made no queue {queue} in {vhost} within 60 s")}
if rabbitmqctl -q list_users --no-table-headers </dev/null | cut -f1 | grep -qxF guest; then
  rabbitmqctl -q delete_user guest </dev/null >/dev/null
fi
echo "restored $file"
"""


def backup_service() -> str:
    return f"""[Unit]
Description=edd-infra: back up the RabbitMQ definitions to {BACKUP_DIR}
After=rabbitmq-server.service
Requires=rabbitmq-server.service

[Service]
Type=oneshot
ExecStart={BACKUP_SCRIPT}
"""


def backup_timer(schedule: str) -> str:
    """`Persistent`: a run missed while the host was down happens at the next boot."""
    return f"""[Unit]
Description=edd-infra: back up the RabbitMQ definitions ({schedule})

[Timer]
OnCalendar={schedule}
Persistent=true
RandomizedDelaySec=300

[Install]
WantedBy=timers.target
"""


def backup_files(*, schedule: str, keep: int, vhost: str, queue: str, start_timeout: int) -> list[FileSpec]:
    """The scripts (root only: they run as root) and the service and timer units."""
    return [
        FileSpec(BACKUP_SCRIPT, backup_script(keep=keep), "0700"),
        FileSpec(RESTORE_SCRIPT, restore_script(vhost=vhost, queue=queue, start_timeout=start_timeout), "0700"),
        FileSpec(f"{SYSTEMD_DIR}/{UNIT}.service", backup_service(), "0644"),
        FileSpec(f"{SYSTEMD_DIR}/{UNIT}.timer", backup_timer(schedule), "0644"),
    ]


def backups_install(files: list[FileSpec]) -> str:
    """Write the scripts and units; the timer enabled and started (its service runs on its own)."""
    return script(
        step(
            "write_backup_files",
            "Write the backup and restore scripts and their units.",
            *(write_file(f) for f in files),
        ),
        *activate_steps("systemd", f"{UNIT}.timer"),
    )


def backups_remove(files: list[FileSpec]) -> str:
    """Stop the timer and remove what `backups_install` wrote; the backups themselves stay
    (data, like the broker's own with purgeOnDestroy off)."""
    # rm only: /usr/local/sbin and /etc/systemd/system stay, empty or not.
    return script(
        step(
            "stop_timer",
            "Stop the backup timer and disable it at boot.",
            f"systemctl disable --now {UNIT}.timer >/dev/null 2>&1 || true",
        ),
        step(
            "remove_backup_files",
            "Remove the scripts and units (the backups stay).",
            f"rm -f {' '.join(q(f.path) for f in files)}",
        ),
        step("reload_systemd", "Make systemd forget the removed units.", "systemctl daemon-reload"),
    )
