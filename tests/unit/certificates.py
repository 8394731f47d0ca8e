"""Real X.509 certificates for tests of message signing, made with `cryptography`."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    # One key serves every test certificate: what differs between them is id and validity.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate_pem(
    *, serial: int, issuer: str = "edd-infra test signing", not_after: datetime | None = None, key: str = "rsa"
) -> str:
    """A self-signed certificate, valid from a day ago until `not_after` (default: 2100)."""
    private = _rsa_key() if key == "rsa" else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(not_after or datetime(2100, 1, 1, tzinfo=timezone.utc))
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def ca_and_server_pems(
    address: str, ca_name: str = "edd-infra test CA", ca_key_usage: bool = True
) -> tuple[str, str, str]:
    """(CA certificate, server certificate for `address` as an IP SAN issued by that CA, server
    key) as PEM: what flower.tls and broker.tls hold. `ca_key_usage` False: a CA certificate
    without keyUsage (as `openssl req -x509` makes by default)."""
    import ipaddress

    ca_key, server_key = _rsa_key(), rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(timezone.utc)
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(10)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if ca_key_usage:
        ca = ca.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    ca = ca.sign(ca_key, hashes.SHA256())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_subject)
        .public_key(server_key.public_key())
        .serial_number(11)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem).decode(), server.public_bytes(pem).decode(), key


def server_certificate_pem(
    *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), usages: tuple[str, ...] | None = None
) -> str:
    """A self-signed server certificate with these subjectAltName DNS names and IP addresses and,
    with `usages` ("serverAuth", "clientAuth"), an extended key usage."""
    import ipaddress

    from cryptography.x509.oid import ExtendedKeyUsageOID

    private = _rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edd-infra test node")])
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(7)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
    )
    names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usages is not None:
        oids = {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH, "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH}
        builder = builder.add_extension(x509.ExtendedKeyUsage([oids[u] for u in usages]), critical=False)
    return builder.sign(private, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
