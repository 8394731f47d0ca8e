"""A signed apt repository made in the test, served on a sandbox link: RabbitMQ's "own
repository" as a host sees it, with nothing from outside.

`build_repo` repackages the rabbitmq-server .deb Debian ships in the image's apt cache under
new versions (optionally broken: its server script exits 1, so the node never starts), writes
`Packages` and a `Release` signed with a throw-away ed25519 key, and returns the repository
directory and the key (ASCII-armored). `serve` answers HTTP for it on this machine's end of
a host's veth link, the only address the host can reach, until the block ends.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

from tests.http_serving import serving

SUITE = "edd-test"
TOOLS = {"gpg": "gnupg", "dpkg-deb": "dpkg", "dpkg-scanpackages": "dpkg-dev"}
BROKEN_SERVER = "#!/bin/sh\necho 'edd-infra test: this rabbitmq-server build is broken on purpose' >&2\nexit 1\n"


def missing_tools() -> list[str]:
    """`tool (package)` for each tool this machine lacks."""
    return [f"{tool} ({package})" for tool, package in TOOLS.items() if not shutil.which(tool)]


def debian_deb(rootfs: Path) -> Path:
    """The rabbitmq-server .deb in the image's apt cache (the version Debian ships)."""
    (deb,) = sorted((rootfs / "var/cache/apt/archives").glob("rabbitmq-server_*.deb"))
    return deb


def deb_version(deb: Path) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _repackage(base: Path, version: str, broken: bool, out: Path, work: Path) -> None:
    tree = work / version
    subprocess.run(["dpkg-deb", "-R", str(base), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(
        "".join(
            f"Version: {version}\n" if line.startswith("Version:") else line
            for line in control.read_text().splitlines(keepends=True)
        )
    )
    if broken:
        (tree / "usr/lib/rabbitmq/bin/rabbitmq-server").write_text(BROKEN_SERVER)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(tree), str(out)], check=True, capture_output=True
    )
    shutil.rmtree(tree)


def _release(dists: Path) -> str:
    lines = [
        f"Origin: edd-infra-test\nLabel: edd-infra-test\nSuite: {SUITE}\nCodename: {SUITE}\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\n"
        "Architectures: amd64 all\nComponents: main\nSHA256:\n"
    ]
    for path in sorted(p for p in dists.rglob("Packages*") if p.is_file()):
        data = path.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {path.relative_to(dists)}\n")
    return "".join(lines)


def build_repo(base: Path, versions: dict[str, bool], work: Path) -> tuple[Path, str]:
    """Repository in `work/repo` holding `base` repackaged as each version (True: broken).
    Returns (repository directory, armored public key)."""
    repo, gnupg = work / "repo", work / "gnupg"
    pool = repo / "pool" / "main"
    pool.mkdir(parents=True)
    gnupg.mkdir(mode=0o700)
    for version, broken in versions.items():
        _repackage(base, version, broken, pool / f"rabbitmq-server_{version}_all.deb", work)
    binary = repo / "dists" / SUITE / "main" / "binary-amd64"
    binary.mkdir(parents=True)
    packages = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "pool"], cwd=repo, capture_output=True, check=True
    ).stdout
    (binary / "Packages").write_bytes(packages)
    (binary / "Packages.gz").write_bytes(gzip.compress(packages))
    dists = repo / "dists" / SUITE
    (dists / "Release").write_text(_release(dists))
    gpg = ["gpg", "--homedir", str(gnupg), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run(
        [*gpg, "--quick-gen-key", "edd-infra test repository <repo@sandbox.invalid>", "ed25519", "sign", "never"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*gpg, "--yes", "--clearsign", "-o", str(dists / "InRelease"), str(dists / "Release")],
        check=True,
        capture_output=True,
    )
    key = subprocess.run([*gpg, "--armor", "--export"], check=True, capture_output=True, text=True).stdout
    # gpg-agent was started for this home only: stop it (by its own command, not by a signal).
    subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"], capture_output=True)
    return repo, key


@contextlib.contextmanager
def serve(directory: Path, address: str) -> Iterator[str]:
    """HTTP for `directory` on `address` (a veth address of this machine); yields the base URL."""
    with serving(functools.partial(_QuietHandler, directory=str(directory)), address) as url:
        yield url


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # `format`: the base class names it so
        pass
