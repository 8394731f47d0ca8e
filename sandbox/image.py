"""The sandbox image: a cached Debian root filesystem that boots systemd, one per release.

``ensure_image(debian)`` builds it once with debootstrap and returns the path of its
rootfs; later calls return the cached one. ``debian`` is 12 (bookworm, RabbitMQ 3.10),
13 (trixie, RabbitMQ 4.0) or 14 (forky, testing: a canary); None means ``$SANDBOX_DEBIAN``,
else ``DEFAULT_DEBIAN``. The cache key covers everything that goes in (release, packages,
Python requirements, the sandbox app, the client SSH key and a recipe version), so
changing any of them builds a new image next to the old.

What the image holds, and why:
- systemd as init, sshd, networkd: a host the Pulumi program reaches over SSH.
- rabbitmq-server *downloaded, not installed* (.debs in /var/cache/apt/archives,
  lists in /var/lib/apt/lists): the program's ``apt-get install -y rabbitmq-server``
  then works inside a host that has no route to any registry. postgresql likewise, for
  the test that runs Celery's PostgreSQL result backend (not installed, so no host
  starts a database it does not use).
- /opt/edd-sandbox/venv with pinned Celery and Flower (and SQLAlchemy + psycopg 3 for
  ``db+postgresql`` results), and the stand-in EDD app in /opt/edd-sandbox/app, which
  the program's worker and Flower units run.
- root's authorized_keys = the cache's client key; one set of SSH host keys whose
  ed25519 public half sits beside the rootfs so callers can pin it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# Bumped when the build steps change in a way the inputs below do not show.
RECIPE_VERSION = "2"


@dataclass(frozen=True)
class Release:
    """A Debian release the sandbox can boot: its suite, its Python, and how to bootstrap it."""

    number: int
    suite: str
    python: str  # the release's python3, for the wheels downloaded on this machine
    script: str | None = None  # debootstrap script when this machine's debootstrap lacks the suite's
    security: bool = True  # has a <suite>-security suite
    # forky's systemd refuses the legacy cgroup layout this machine's nspawn (252) offers it.
    unified_cgroups: bool = False

    @property
    def nspawn_env(self) -> dict[str, str]:
        """Environment systemd-nspawn needs to boot this release here."""
        return {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"} if self.unified_cgroups else {}


RELEASES = {
    12: Release(12, "bookworm", "3.11"),
    13: Release(13, "trixie", "3.13"),
    14: Release(14, "forky", "3.14", script="sid", security=False, unified_cgroups=True),
}
DEFAULT_DEBIAN = 13


def release(debian: int | str | None = None) -> Release:
    """The release ``debian`` names (None: ``$SANDBOX_DEBIAN``, else the default); ValueError if unknown."""
    chosen = debian if debian is not None else os.environ.get("SANDBOX_DEBIAN") or DEFAULT_DEBIAN
    try:
        return RELEASES[int(chosen)]
    except (KeyError, ValueError):
        raise ValueError(f"SANDBOX_DEBIAN={chosen}: allowed are {', '.join(map(str, RELEASES))}") from None


PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "libnss-myhostname",
    "openssh-server",
    "iproute2",
    "iputils-ping",
    "procps",
    "curl",
    "ca-certificates",
    "python3",
    "python3-venv",
    "sudo",
    "libcap2-bin",
    "less",
]
# Downloaded into the apt cache only; the program under test (rabbitmq-server; nftables, for a
# cluster node's firewall table) or a test (postgresql, Debian 12's PostgreSQL 15, for the
# result backend) installs them offline.
OFFLINE_PACKAGES = ["rabbitmq-server", "nftables", "postgresql"]
# celery[auth] brings the cryptography release Celery pins for message signing;
# celery[sqlalchemy] + psycopg 3 the `db+postgresql` result backend (SQLAlchemy 2.1's default
# PostgreSQL driver is psycopg 3; kombu[sqlalchemy] allows sqlalchemy>=1.4.54,<2.2).
PYTHON_REQUIREMENTS = ["celery[auth,sqlalchemy]==5.7.0", "flower==2.2.0", "SQLAlchemy==2.1.9", "psycopg[binary]==3.3.9"]

APP_DIR = Path(__file__).resolve().parent / "app"
VENV = "/opt/edd-sandbox/venv"
APP_TARGET = "/opt/edd-sandbox/app"
MACHINE_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def cache_dir() -> Path:
    """The cache root: ``$EDD_INFRA_CACHE`` or ``~/.cache/edd-infra`` (outside the work tree)."""
    return Path(os.environ.get("EDD_INFRA_CACHE") or Path.home() / ".cache" / "edd-infra")


def log(message: str) -> None:
    """One progress line on stderr."""
    print(f"[sandbox] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive flock on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_machine_tools() -> None:
    """Install debootstrap, systemd-nspawn and the ssh client on this machine if missing.

    ``apt-get update`` runs only when the first install attempt fails (stale or no lists).
    Raises RuntimeError naming the missing tools and the command that provides them.
    """
    missing = {tool: pkg for tool, pkg in MACHINE_TOOLS.items() if not shutil.which(tool)}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    what = f"{', '.join(missing)} missing (apt-get install -y {' '.join(packages)})"
    if os.geteuid() != 0:
        raise RuntimeError(f"{what}, and not root to install it")
    log(f"installing {' '.join(packages)} on this machine")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"{what}, and installing failed: {last}")


def client_key() -> Path:
    """The ed25519 key pair callers log in with, made once in the cache (``ssh/id_ed25519``)."""
    key = cache_dir() / "ssh" / "id_ed25519"
    with file_lock(cache_dir() / "ssh.lock"):
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edd-sandbox", "-f", str(key)], check=True
            )
    return key


def _app_files() -> list[Path]:
    return sorted(p for p in APP_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def image_key(debian: int | None = None) -> str:
    """Short sha256 of everything that goes into the image of release ``debian``."""
    digest = hashlib.sha256()
    rel = release(debian)
    for part in [RECIPE_VERSION, rel.suite, rel.python, *PACKAGES, "|", *OFFLINE_PACKAGES, "|", *PYTHON_REQUIREMENTS]:
        digest.update(part.encode() + b"\0")
    for path in _app_files():
        digest.update(str(path.relative_to(APP_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(client_key().with_suffix(".pub").read_bytes())
    return digest.hexdigest()[:12]


def image_dir(key: str | None = None, debian: int | None = None) -> Path:
    """``<cache>/images/<key>``: holds ``rootfs``, ``host_ed25519.pub`` and ``manifest.json``."""
    return cache_dir() / "images" / (key or image_key(debian))


def host_public_key(rootfs: Path) -> str:
    """The image's ed25519 host key as ``ssh-ed25519 AAAA...`` (no comment), for pinning."""
    algo, blob = (rootfs.parent / "host_ed25519.pub").read_text().split()[:2]
    return f"{algo} {blob}"


def ensure_image(debian: int | None = None) -> Path:
    """Return the rootfs of release ``debian``'s current image, building it first if it is not cached.

    Safe to call from several processes at once: one builds under a lock, the
    others wait and reuse. A failed build leaves only ``<key>.failed.log``.
    """
    if os.geteuid() != 0:
        raise RuntimeError("not root (debootstrap and systemd-nspawn need root: run as root)")
    ensure_machine_tools()
    rel = release(debian)
    key = image_key(rel.number)
    final = image_dir(key)
    if (final / "rootfs").is_dir():
        return final / "rootfs"
    images = final.parent
    with file_lock(images / ".build.lock"):
        if (final / "rootfs").is_dir():
            return final / "rootfs"
        _remove_stale_builds(images)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=images))
        try:
            started = time.monotonic()
            _build(work, key, rel)
            os.rename(work, final)
            (images / f"{key}.failed.log").unlink(missing_ok=True)
            log(
                f"image {key} (Debian {rel.number}, {rel.suite}) built in {time.monotonic() - started:.0f} s: {final / 'rootfs'}"
            )
        except BaseException as error:
            failed_log = images / f"{key}.failed.log"
            if (work / "build.log").exists():
                shutil.copy(work / "build.log", failed_log)
            _remove_tree(work)
            if isinstance(error, Exception):
                head, _, tail = str(error).partition("\n")
                raise RuntimeError(f"image build failed: {head} (log: {failed_log})\n{tail}".strip()) from error
            raise
    return final / "rootfs"


def prune_images(keep: set[Path]) -> list[Path]:
    """Delete cached images other than each release's current one and those in ``keep``; return them.

    The caller makes sure no running host uses a deleted image (its overlay's lower layer).
    """
    current = {image_dir(debian=number) for number in RELEASES}
    images = cache_dir() / "images"
    removed = []
    with file_lock(images / ".build.lock"):
        for old in images.iterdir():
            if old.is_dir() and not old.name.startswith(".") and old not in current and old not in keep:
                _remove_tree(old)
                removed.append(old)
    return removed


def _remove_stale_builds(images: Path) -> None:
    """Delete half-made builds of a crashed process (we hold the build lock)."""
    for stale in images.glob(".tmp-*"):
        log(f"removing stale build {stale.name}")
        _remove_tree(stale)


def _remove_tree(path: Path) -> None:
    """rmtree, refusing if anything is mounted below ``path`` (it would delete through it)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as info:
        mounted = [line.split()[4] for line in info if line.split()[4].startswith(prefix)]
    if mounted:
        raise RuntimeError(f"not removing {path}: still mounted: {mounted}")
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _phase(name: str):
    """Log ``name`` when the block starts and its duration when it ends."""
    started = time.monotonic()
    log(f"{name} ...")
    yield
    log(f"{name}: {time.monotonic() - started:.1f} s")


def _run(what: str, cmd: list[str], logfile: Path, **kwargs) -> None:
    """Run ``cmd`` with output appended to ``logfile``; on failure raise naming ``what``, with the log tail."""
    with open(logfile, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
    if done.returncode != 0:
        lines = [line for line in logfile.read_text(errors="replace").splitlines() if line.strip()]
        raise RuntimeError(f"{what} exited {done.returncode}: {lines[-1] if lines else ''}\n" + "\n".join(lines[-15:]))


def _build(work: Path, key: str, rel: Release) -> None:
    """Make ``work/rootfs`` and its side files. ``work`` is renamed into place by the caller."""
    rootfs = work / "rootfs"
    buildlog = work / "build.log"
    wheels = work / "wheels"

    with _phase("downloading wheels on this machine"):
        # The machine's pip has the registry access and CA setup; the chroot installs offline.
        _run(
            "pip download",
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--only-binary=:all:",
                "--dest",
                str(wheels),
                *_wheel_target(rel.python),
                *PYTHON_REQUIREMENTS,
            ],
            buildlog,
        )

    with _phase(f"debootstrap {rel.suite} ({len(PACKAGES)} packages)"):
        # A private mount namespace: if debootstrap dies, its /proc and /sys mounts die with it.
        _run(
            "debootstrap",
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                rel.suite,
                str(rootfs),
                MIRROR,
                *([f"/usr/share/debootstrap/scripts/{rel.script}"] if rel.script else []),
            ],
            buildlog,
        )

    with _phase("configuring"):
        _configure(rootfs, rel)

    with _phase(f"apt cache for offline {' '.join(OFFLINE_PACKAGES)}, venv with {' '.join(PYTHON_REQUIREMENTS)}"):
        script = f"""
            set -e
            export DEBIAN_FRONTEND=noninteractive
            apt-get clean  # drop debootstrap's .debs: only the offline set stays
            apt-get update
            apt-get install --download-only -y {" ".join(OFFLINE_PACKAGES)}
            python3 -m venv {VENV}
            {VENV}/bin/pip install --no-index --find-links /wheels --disable-pip-version-check {" ".join(shlex.quote(r) for r in PYTHON_REQUIREMENTS)}
            systemctl enable systemd-networkd
            systemctl mask systemd-resolved
            """
        # Not booted, network shared with the machine: apt reaches the registry from here.
        _run(
            "apt-get/pip in the image",
            [
                "systemd-nspawn",
                "-q",
                "-D",
                str(rootfs),
                "--register=no",
                "--keep-unit",
                "--pipe",
                f"--bind-ro={wheels}:/wheels",
                "--resolv-conf=copy-host",
                "/bin/sh",
                "-c",
                script,
            ],
            buildlog,
            env={**os.environ, **rel.nspawn_env},
        )
        (rootfs / "etc" / "resolv.conf").write_text("")  # hosts have no DNS server to ask

    with _phase("app, keys and manifest"):
        shutil.copytree(APP_DIR, rootfs / APP_TARGET.lstrip("/"), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(rootfs / "etc/ssh/ssh_host_ed25519_key.pub", work / "host_ed25519.pub")
        os.chmod(work / "host_ed25519.pub", 0o644)
        shutil.rmtree(wheels)
        archives = sorted(p.name for p in (rootfs / "var/cache/apt/archives").glob("*.deb"))
        for package in OFFLINE_PACKAGES:
            if not any(name.startswith(f"{package}_") for name in archives):
                raise RuntimeError(f"{package} .deb missing from the image's apt cache")
        manifest = {
            "key": key,
            "debian": rel.number,
            "suite": rel.suite,
            "packages": PACKAGES,
            "offline_debs": archives,
            "python": PYTHON_REQUIREMENTS,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(work, 0o755)


def _wheel_target(python: str) -> list[str]:
    """pip download options for the image's Python when it is not this machine's."""
    if python == f"{sys.version_info.major}.{sys.version_info.minor}":
        return []
    abi = "cp" + python.replace(".", "")
    return [
        "--python-version",
        python,
        "--implementation",
        "cp",
        "--abi",
        abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
        "--platform",
        "manylinux2014_x86_64",
        "--platform",
        "manylinux_2_17_x86_64",
        "--platform",
        "manylinux_2_28_x86_64",
        "--platform",
        "any",
    ]


def _configure(rootfs: Path, rel: Release) -> None:
    """Write the files that make a booted copy an SSH-reachable host named by nspawn."""
    etc = rootfs / "etc"
    # debootstrap copies the machine's /etc/hostname; without it `-M NAME` names the host.
    (etc / "hostname").unlink(missing_ok=True)
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    # Empty machine-id: every boot of a copy gets its own.
    (etc / "machine-id").write_text("")
    (etc / "apt/sources.list").write_text(
        f"deb {MIRROR} {rel.suite} main\n"
        f"deb {MIRROR} {rel.suite}-updates main\n"
        + (f"deb {SECURITY_MIRROR} {rel.suite}-security main\n" if rel.security else "")
    )
    (etc / "apt/apt.conf.d/90edd-sandbox").write_text(
        "// Keep the downloaded .debs: hosts install from them offline.\n"
        'APT::Keep-Downloaded-Packages "true";\n'
        'Binary::apt::APT::Keep-Downloaded-Packages "true";\n'
        "// The registry may serve a snapshot whose Release files are past Valid-Until.\n"
        'Acquire::Check-Valid-Until "false";\n'
    )
    (etc / "apt/apt.conf.d/docker-clean").unlink(missing_ok=True)
    (etc / "ssh/sshd_config.d/edd-sandbox.conf").write_text(
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n"
    )
    ssh_dir = rootfs / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(client_key().with_suffix(".pub").read_text())
    os.chmod(ssh_dir / "authorized_keys", 0o600)
