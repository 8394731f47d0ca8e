"""Sandbox hosts: the image booted with systemd-nspawn, each on a throw-away overlay, reached over SSH.

Each host gets a veth link of its own: the machine's side ``ve-NAME`` has
10.57.<i>.1/30, the host has 10.57.<i>.2/30 on ``host0`` and no other route. So
the machine reaches every host, a host reaches only the machine's end of its own
link, and nothing reaches any other address.

Each host's systemd also gets a cgroup tree of its own (``edd-sandbox/NAME``):
without one, nspawn --keep-unit on a machine without systemd puts all hosts in
one tree, and units of the same name on two hosts collide.

``boot()`` starts hosts detached (they outlive the caller) and records them in
``<cache>/sandbox/hosts.json``, so a later process (``python -m sandbox down``)
can stop them. Processes are only ever signalled by the PIDs recorded there, and
only links recorded there are deleted.

``reboot()`` reboots a host from inside and starts it again on the same root, link
and address: what the host wrote survives its reboot, as on a disk, and goes at shutdown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from .image import cache_dir, client_key, ensure_image, file_lock, host_public_key, log, prune_images, release

SUBNET = "10.57"
# "ve-" + name must fit in an interface name (15 characters) or nspawn hashes it.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,11}$")
BOOT_TIMEOUT = 120.0
# Every host runs on an overlay of the read-only image whose writes go to a directory of its
# own (<cache>/sandbox/run/NAME/upper), mounted before nspawn starts and removed at shutdown,
# so they survive the host's reboots. (nspawn's --volatile=overlay keeps them in a tmpfs that
# goes when nspawn exits, and with --keep-unit nspawn exits, status 133, when its host reboots.)
# `-x` (a full copy per boot) works too, but its copy of the image took 17-29 s per boot on a
# loaded 2-core machine; the overlay boots to ssh in ~1.5 s.
ROOT_LAYERS = ("upper", "work", "root")

# Popen objects of hosts this process started, so their exit is reaped (no zombies).
_children: dict[int, subprocess.Popen] = {}
_state_mutex = threading.Lock()


@dataclass(frozen=True)
class SandboxHost:
    """A running sandbox host: where to reach it, how to log in, and which processes it is.

    ``host_key`` is the ``ssh-ed25519 AAAA...`` public host key to pin (pulumi_command's
    ``connection.host_key``). ``pid`` is the systemd-nspawn process, ``leader_pid``
    the host's PID 1 (systemd) as seen from the machine.
    """

    name: str
    address: str
    user: str
    port: int
    private_key_path: str
    host_key: str
    pid: int
    leader_pid: int

    @property
    def known_hosts_path(self) -> Path:
        """A known_hosts file that pins ``host_key`` for ``address``."""
        return _run_dir(self.name) / "known_hosts"

    def ssh_command(self, known_hosts: Path | None = None) -> list[str]:
        """The ssh argv (up to and including ``user@address``) with the host key pinned."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            self.private_key_path,
            "-p",
            str(self.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts or self.known_hosts_path}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "HostKeyAlgorithms=ssh-ed25519",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            f"{self.user}@{self.address}",
        ]


def run(
    host: SandboxHost, command: str | list[str], input: str | None = None, timeout: float = 300, check: bool = False
) -> subprocess.CompletedProcess:
    """Run ``command`` on ``host`` over SSH (a list is shell-quoted); text in, text out."""
    if not isinstance(command, str):
        command = shlex.join(command)
    return subprocess.run(
        [*host.ssh_command(), command],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def inside(host: SandboxHost, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``command`` in the host's namespaces (nsenter on its PID 1), not over SSH: works
    while its sshd or its link is down."""
    return subprocess.run(
        ["nsenter", "-t", str(host.leader_pid), "-a", "/bin/sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def cut_off(host: SandboxHost):
    """Take the host's link down for the block (a network partition: it reaches nothing and
    nothing reaches it, its processes keep running), then up again."""
    _ip("link", "set", f"ve-{host.name}", "down")
    try:
        yield
    finally:
        _ip("link", "set", f"ve-{host.name}", "up")


def boot(names: list[str], timeout: float = BOOT_TIMEOUT, debian: int | None = None) -> list[SandboxHost]:
    """Boot hosts ``names`` of Debian release ``debian`` in parallel (reusing any already running
    and healthy on the same image); return them.

    ``debian`` None means ``$SANDBOX_DEBIAN`` or the default (``image.release``).
    Builds the image first if needed. If any host fails to come up, the hosts this
    call started are stopped again and RuntimeError says why (with the nspawn log tail).
    """
    for name in names:
        if not NAME_RE.match(name):
            raise ValueError(f"host name {name!r} must match {NAME_RE.pattern}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate host names in {names}")
    rel = release(debian)
    rootfs = ensure_image(rel.number)
    host_key = host_public_key(rootfs)
    with file_lock(_state_dir() / "hosts.lock"):
        state = _load_state()
        ready: dict[str, SandboxHost] = {}
        for name in names:
            entry = state.get(name)
            if entry and entry["rootfs"] == str(rootfs) and _healthy(entry):
                ready[name] = _host(entry)
            elif entry:
                log(f"{name}: recorded but unhealthy or from an older image, stopping it")
                _stop(entry)
                _record(name, None)
        todo = [n for n in names if n not in ready]
        for name in todo:
            if _link_exists(f"ve-{name}"):
                raise RuntimeError(f"link ve-{name} exists but is not a sandbox host of ours")
        started = time.monotonic()
        indexes = _free_indexes(_load_state(), len(todo))
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            futures = {
                n: pool.submit(_boot_one, n, i, rootfs, host_key, timeout, rel.number) for n, i in zip(todo, indexes)
            }
        errors = {n: f.exception() for n, f in futures.items() if f.exception()}
        if errors:
            for name, future in futures.items():
                if name not in errors:
                    _stop(future.result())
                    _record(name, None)
            raise RuntimeError("; ".join(f"{n}: {e}" for n, e in errors.items()))
        if todo:
            log(f"booted {', '.join(todo)} in {time.monotonic() - started:.1f} s")
        return [ready.get(n) or _host(futures[n].result()) for n in names]


def reboot(host: SandboxHost, timeout: float = BOOT_TIMEOUT) -> SandboxHost:
    """Reboot ``host`` as its admin would (`systemctl reboot` over SSH), wait until sshd answers
    again, and return the host with its new PIDs.

    nspawn --keep-unit exits with status 133 when its host reboots (systemd's
    systemd-nspawn@.service restarts it on that status); this function is that restart:
    nspawn again on the same root (writes kept), link name and address.
    """
    with file_lock(_state_dir() / "hosts.lock"):
        entry = _load_state().get(host.name)
        if not entry or (entry["pid"], entry["leader_pid"]) != (host.pid, host.leader_pid) or not _healthy(entry):
            raise RuntimeError(f"{host.name} is not a running sandbox host of ours (booted again since?)")
        if not entry.get("root"):
            raise RuntimeError(
                f"{host.name} runs on a throw-away root (booted by an older sandbox.hosts): "
                "its writes would not survive a reboot"
            )
        started = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            run(host, "systemctl reboot", timeout=15)  # the connection may drop before it answers
        proc = _children.get(entry["pid"])
        if not _wait_gone(entry["pid"], entry["pid_start"], timeout):
            raise RuntimeError(
                f"{host.name}: still running {timeout:.0f} s after `systemctl reboot`:\n{_log_tail(entry)}"
            )
        status = f" (nspawn exit status {proc.returncode})" if proc else ""
        log(f"{host.name}: down {time.monotonic() - started:.1f} s after `systemctl reboot`{status}")
        if _link_exists(entry["link"]):  # the veth goes with the host's network namespace
            _ip("link", "del", entry["link"])
        try:
            entry = _start(entry, started + timeout, "reboot")
        except BaseException:
            _stop(entry)
            _record(host.name, None)
            raise
        log(f"{host.name}: rebooted, ssh after {time.monotonic() - started:.1f} s")
        return _host(entry)


def shutdown(hosts: Iterable[SandboxHost | str] | None = None) -> None:
    """Power off ``hosts`` (names or SandboxHost; all recorded hosts if None) and remove their links."""
    with file_lock(_state_dir() / "hosts.lock"):
        state = _load_state()
        names = list(state) if hosts is None else [h if isinstance(h, str) else h.name for h in hosts]
        entries = [state[n] for n in names if n in state]
        with ThreadPoolExecutor(max_workers=max(1, len(entries))) as pool:
            futures = {e["name"]: pool.submit(_stop, e) for e in entries}
        errors = {n: f.exception() for n, f in futures.items() if f.exception()}
        for name in futures:
            if name not in errors:
                _record(name, None)
        if errors:
            raise RuntimeError("; ".join(f"stopping {n}: {e}" for n, e in errors.items()))


def prune() -> list[Path]:
    """Delete cached images that are neither current nor under a recorded host; return them."""
    with file_lock(_state_dir() / "hosts.lock"):
        return prune_images({Path(e["rootfs"]).parent for e in _load_state().values()})


def status() -> list[dict]:
    """The recorded hosts, each with ``alive`` and (when alive) its memory use."""
    with file_lock(_state_dir() / "hosts.lock"):
        rows = []
        for entry in _load_state().values():
            alive = _alive(entry["pid"], entry["pid_start"])
            row = {**asdict(_host(entry)), "alive": alive}
            if alive:
                row.update(memory_usage(_host(entry)))
            rows.append(row)
        return rows


def memory_usage(host: SandboxHost) -> dict[str, int]:
    """Summed RSS and PSS (bytes) of the processes in the host's PID namespace."""
    ns = os.readlink(f"/proc/{host.leader_pid}/ns/pid")
    rss = pss = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != ns:
                continue
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                field, value = line.split(":", 1) if ":" in line else ("", "")
                if field == "Rss":
                    rss += int(value.split()[0]) * 1024
                elif field == "Pss":
                    pss += int(value.split()[0]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return {"rss_bytes": rss, "pss_bytes": pss}


# --- one host ---------------------------------------------------------------------------


def _boot_one(name: str, index: int, rootfs: Path, host_key: str, timeout: float, debian: int) -> dict:
    """Make the host's root and link config, start it; return its state entry."""
    run_dir = _run_dir(name)
    _unmount_root(name)  # left mounted by a process that died before stopping its host
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    address = f"{SUBNET}.{index}.2"
    network = run_dir / "10-host0.network"
    # Sorts before the image's 80-container-host0.network (DHCP). No default route: only the
    # other sandbox hosts, through this machine (workers on one host, the broker on another).
    network.write_text(
        f"[Match]\nName=host0\n\n[Network]\nAddress={address}/30\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n\n"
        f"[Route]\nDestination={SUBNET}.0.0/16\nGateway={SUBNET}.{index}.1\n"
    )
    (run_dir / "known_hosts").write_text(f"{address} {host_key}\n")
    entry = {
        "name": name,
        "address": address,
        "user": "root",
        "port": 22,
        "private_key_path": str(client_key()),
        "host_key": host_key,
        "pid": 0,
        "pid_start": None,
        "leader_pid": 0,
        "leader_start": None,
        "index": index,
        "link": f"ve-{name}",
        "rootfs": str(rootfs),
        "root": None,
        "debian": debian,
    }
    try:
        entry["root"] = str(_mount_root(name, rootfs))
        return _start(entry, time.monotonic() + timeout, "boot")
    except BaseException:
        _stop(entry)
        _record(name, None)
        raise


def _start(entry: dict, deadline: float, what: str) -> dict:
    """Start nspawn on the host's root, address its link, wait for sshd; return the updated entry."""
    name, link, address = entry["name"], entry["link"], entry["address"]
    gateway = address.rsplit(".", 1)[0] + ".1"
    network = _run_dir(name) / "10-host0.network"
    _log_path(name).parent.mkdir(parents=True, exist_ok=True)
    log_path = _log_path(name)
    if log_path.exists() and log_path.stat().st_size > 2_000_000:
        log_path.unlink()
    nspawn = [
        "systemd-nspawn",
        "-D",
        entry["root"],
        "-b",
        "-M",
        name,
        "--network-veth",
        "--register=no",
        "--keep-unit",
        "--console=passive",
        f"--bind-ro={network}:/etc/systemd/network/10-host0.network",
    ]
    # nspawn --keep-unit puts the host's systemd under its own cgroup (+ "/payload"): move it
    # into a cgroup of this host's first, or all hosts share one tree (same-named units collide).
    join = "".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))} && " for d in _cgroups(name, create=True))
    with open(log_path, "a") as out:  # kept across boots, for post-mortems
        out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {what} {name} at {address}\n")
        out.flush()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", join + 'exec "$@"', "sh", *nspawn],  # exec: same PID
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **release(entry.get("debian", 12)).nspawn_env},
        )
    _children[proc.pid] = proc
    entry.update(pid=proc.pid, pid_start=_start_time(proc.pid), leader_pid=0, leader_start=None)
    _record(name, entry)  # from now on `down` can stop it, even if this process dies
    started = time.monotonic()
    _wait(lambda: _link_exists(link), deadline, entry, f"link {link}")
    _ip("addr", "add", f"{gateway}/30", "dev", link)
    _ip("link", "set", link, "up")
    # Only IPv4 on our link: no link-local chatter.
    Path(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6").write_text("1")
    # Forward between sandbox links only (per-link; the machine's own ip_forward stays as it is).
    Path(f"/proc/sys/net/ipv4/conf/{link}/forwarding").write_text("1")
    linked = time.monotonic()
    leader = _wait(lambda: _find_leader(proc.pid), deadline, entry, "container PID 1")
    entry.update(leader_pid=leader, leader_start=_start_time(leader))
    _record(name, entry)
    host = _host(entry)
    _wait(lambda: run(host, "true", timeout=15).returncode == 0, deadline, entry, "sshd")
    log(f"{name}: {address} link after {linked - started:.1f} s, ssh after {time.monotonic() - started:.1f} s")
    return entry


def _mount_root(name: str, rootfs: Path) -> Path:
    """Mount the host's root: an overlay of the image (read-only below) and its own upper dir."""
    upper, work, root = (_run_dir(name) / layer for layer in ROOT_LAYERS)
    for directory in (upper, work, root):
        directory.mkdir()
    if any(c in str(p) for p in (rootfs, upper, work) for c in ",:"):
        raise RuntimeError(f"paths under {rootfs} and {upper} must not hold ',' or ':' (overlay options)")
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={rootfs},upperdir={upper},workdir={work}", str(root)],
        check=True,
        capture_output=True,
        text=True,
    )
    return root


def _unmount_root(name: str) -> None:
    """Unmount the host's root if it is mounted (lazily if still busy), so its run dir can go."""
    root = _run_dir(name) / "root"
    if os.path.ismount(root):
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], check=True, capture_output=True)


def _wait(probe, deadline: float, entry: dict, what: str):
    """Poll ``probe`` until it returns a truthy value; fail early if nspawn died."""
    while True:
        try:
            value = probe()
        except subprocess.TimeoutExpired:
            value = None
        if value:
            return value
        if not _alive(entry["pid"], entry["pid_start"]):
            raise RuntimeError(f"systemd-nspawn exited while waiting for {what}:\n{_log_tail(entry)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}:\n{_log_tail(entry)}")
        time.sleep(0.2)


def _stop(entry: dict, timeout: float = 30.0) -> None:
    """Power the host off; SIGTERM (then SIGKILL) its recorded PIDs if it does not go; delete its link."""
    pid, start = entry["pid"], entry["pid_start"]
    leader, leader_start = entry.get("leader_pid"), entry.get("leader_start")
    powering_off = False
    if _alive(pid, start) and leader and _alive(leader, leader_start):
        with contextlib.suppress(subprocess.TimeoutExpired):
            powering_off = (
                subprocess.run(
                    ["nsenter", "-t", str(leader), "-a", "systemctl", "poweroff"], capture_output=True, timeout=15
                ).returncode
                == 0
            )
    for sig, grace in ((signal.SIGTERM, timeout if powering_off else 0), (signal.SIGKILL, 15)):
        if not _wait_gone(pid, start, grace):
            log(f"{entry['name']}: still running, sending {sig.name} to {pid}")
            if sig == signal.SIGKILL and leader and _alive(leader, leader_start):
                _kill(leader, sig)
            _kill(pid, sig)
    _wait_gone(pid, start, 10)
    if _link_exists(entry["link"]):
        _ip("link", "del", entry["link"])
    _unmount_root(entry["name"])  # before the run dir goes: it holds the root's layers
    for cgroup in _cgroups(entry["name"]):
        # Deepest first; a cgroup directory goes with rmdir once empty (its files are virtual).
        for sub in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    shutil.rmtree(_run_dir(entry["name"]), ignore_errors=True)


def _kill(pid: int, sig: signal.Signals) -> None:
    if pid <= 0:  # not started yet: never signal a process group
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, start, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid, start):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    _children.pop(pid, None)
    return True


def _healthy(entry: dict) -> bool:
    """Its processes are the recorded ones, its link is there and sshd answers."""
    if not (
        _alive(entry["pid"], entry["pid_start"])
        and entry.get("leader_pid")
        and _alive(entry["leader_pid"], entry["leader_start"])
        and _link_exists(entry["link"])
    ):
        return False
    try:
        return run(_host(entry), "true", timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _cgroups(name: str, create: bool = False) -> list[Path]:
    """``edd-sandbox/NAME`` in each cgroup hierarchy systemd uses here (name=systemd v1, cgroup2)."""
    found = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            fstype, options = fields[fields.index("-") + 1], fields[fields.index("-") + 3].split(",")
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
                found.append(Path(fields[4]) / "edd-sandbox" / name)
    if create:
        for cgroup in found:
            cgroup.mkdir(parents=True, exist_ok=True)
    return [c for c in found if c.is_dir()]


def _find_leader(nspawn_pid: int) -> int | None:
    """The container's PID 1: the descendant of nspawn whose innermost PID is 1."""
    for pid in _descendants(nspawn_pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        nspid = next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), [])
        if len(nspid) > 1 and nspid[-1] == "1":
            return pid
    return None


def _descendants(root: int) -> list[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            continue
        found += map(int, kids)
        todo += map(int, kids)
    return found


# --- processes, links, state ------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of ``pid``: tells a reused PID from ours."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid: int, start) -> bool:
    """True if ``pid`` is running (not a zombie) and is the process that started at ``start``."""
    if pid in _children:
        _children[pid].poll()  # reaps it if it has exited
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z" and (start is None or int(fields[19]) == start)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _link_exists(link: str) -> bool:
    return Path("/sys/class/net", link).exists()


def _free_indexes(state: dict, count: int) -> list[int]:
    """``count`` subnet indexes (10.57.<i>.0/30) used neither by a host nor by any address here."""
    on_machine = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    taken = {e["index"] for e in state.values()}
    taken |= {int(m) for m in re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)\.", on_machine)}
    free = [i for i in range(1, 255) if i not in taken][:count]
    if len(free) < count:
        raise RuntimeError(f"no free {SUBNET}.<i>.0/30 subnets left")
    return free


def _host(entry: dict) -> SandboxHost:
    return SandboxHost(**{f: entry[f] for f in SandboxHost.__dataclass_fields__})


def _log_tail(entry: dict, lines: int = 20) -> str:
    path = _log_path(entry["name"])
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:]) if path.exists() else ""


def _state_dir() -> Path:
    return cache_dir() / "sandbox"


def _run_dir(name: str) -> Path:
    return _state_dir() / "run" / name


def _log_path(name: str) -> Path:
    """The host's console and nspawn output: ``<cache>/sandbox/logs/NAME.log``."""
    return _state_dir() / "logs" / f"{name}.log"


def _load_state() -> dict[str, dict]:
    path = _state_dir() / "hosts.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _record(name: str, entry: dict | None) -> None:
    """Set (or with None, drop) one host's entry in hosts.json; callers hold the file lock."""
    with _state_mutex:  # boot threads of this process record concurrently
        state = _load_state()
        if entry is None:
            state.pop(name, None)
        else:
            state[name] = entry
        _save_state(state)


def _save_state(state: dict[str, dict]) -> None:
    path = _state_dir() / "hosts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
