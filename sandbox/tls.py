"""A throw-away CA and a broker certificate for the sandbox, made with the openssl CLI.

Real sites bring their own PKI; the sandbox makes one per stack so `broker.tls` is tested
against real certificates: a CA, and a server certificate for the host's address (IP SAN)
and loopback, signed by it. The keys stay in `directory` (0600) and the server key goes
into the stack as the secret `brokerTlsKey`. Flower gets a certificate of its own from the
same CA (its key is `flowerTlsKey`: Flower never holds the broker's key).
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()[-400:]}")


def make_broker_certificates(directory: Path, address: str, *cluster_addresses: str) -> dict[str, Path]:
    """ca.pem, ca.key, server.pem, server.key in `directory` (reused when present). With
    `cluster_addresses`, one certificate (and key) serves every node of the cluster, naming each
    node address as an IP address and as a DNS name too (Erlang's TLS distribution checks the
    host part of a node name, `rabbit@<address>`, as a DNS name)."""
    addresses = (address, *cluster_addresses)
    directory.mkdir(parents=True, exist_ok=True)
    files = {name: directory / name for name in ("ca.pem", "ca.key", "server.pem", "server.key")}
    names = {f"IP Address:{a}" for a in addresses} | ({f"DNS:{a}" for a in addresses} if cluster_addresses else set())
    if (
        all(p.exists() for p in files.values())
        and names <= _alt_names(files["server.pem"])
        and _has_key_usage(files["ca.pem"])
    ):
        return files
    # keyUsage: Python 3.13's default TLS context (VERIFY_X509_STRICT) refuses a CA without it.
    _self_signed(
        directory,
        "edd-infra sandbox CA",
        "ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    ips = "".join(f"IP:{a}, " for a in addresses) + "".join(f"DNS:{a}, " for a in addresses if cluster_addresses)
    _issued(directory, address, "server", f"{ips}IP:127.0.0.1, IP:::1, DNS:localhost")
    for key in ("ca.key", "server.key"):
        files[key].chmod(0o600)
    return files


def _issued(directory: Path, common_name: str, stem: str, alt_names: str) -> None:
    """<stem>.pem and <stem>.key in `directory`: an RSA certificate for 30 days signed by the CA
    there (ca.pem, ca.key), naming `alt_names` (openssl's subjectAltName syntax)."""
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={common_name}",
        "-keyout", f"{stem}.key", "-out", f"{stem}.csr", cwd=directory,
    )  # fmt: skip
    (directory / f"{stem}.ext").write_text(f"subjectAltName = {alt_names}\n")
    _openssl(
        "x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "30", "-extfile", f"{stem}.ext", "-out", f"{stem}.pem", cwd=directory,
    )  # fmt: skip


def _self_signed(directory: Path, common_name: str, stem: str, *extensions: str) -> None:
    """<stem>.pem and <stem>.key in `directory`: a self-signed RSA certificate for 30 days."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", f"/CN={common_name}",
        *extensions, "-keyout", f"{stem}.key", "-out", f"{stem}.pem", cwd=directory,
    )  # fmt: skip


def _has_key_usage(cert: Path) -> bool:
    result = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-ext", "keyUsage"], capture_output=True, text=True
    )
    return "Certificate Sign" in result.stdout


def _alt_names(cert: Path) -> set[str]:
    """The certificate's subjectAltName entries as openssl prints them (`IP Address:...`, `DNS:...`)."""
    result = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"], capture_output=True, text=True
    )
    return {part.strip() for part in result.stdout.replace("\n", ",").split(",") if ":" in part}


def make_signing_certificate(directory: Path) -> dict[str, Path]:
    """signing.pem and signing.key in `directory`: a self-signed certificate tasks are signed with."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"signing.pem": directory / "signing.pem", "signing.key": directory / "signing.key"}
    if not all(p.exists() for p in files.values()):
        _self_signed(directory, "edd-infra sandbox signing", "signing")
        files["signing.key"].chmod(0o600)
    return files


def make_flower_certificate(directory: Path, address: str) -> dict[str, Path]:
    """flower.pem and flower.key in `directory` (beside the CA of `make_broker_certificates`,
    which signs it): Flower's HTTPS certificate for `address` (reused when it still matches the CA)."""
    files = {"flower.pem": directory / "flower.pem", "flower.key": directory / "flower.key"}
    if (
        all(p.exists() for p in files.values())
        and f"IP Address:{address}" in _alt_names(files["flower.pem"])
        and _issued_by(files["flower.pem"], directory / "ca.pem")
    ):
        return files
    _issued(directory, address, "flower", f"IP:{address}")
    files["flower.key"].chmod(0o600)
    return files


def _issued_by(cert: Path, ca: Path) -> bool:
    result = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True)
    return result.returncode == 0
