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


def certificate_pem(*, serial: int, issuer: str = "edd-infra test signing", not_after: datetime | None = None,
                    key: str = "rsa") -> str:
    """A self-signed certificate, valid from a day ago until `not_after` (default: 2100)."""
    private = _rsa_key() if key == "rsa" else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(serial).not_valid_before(now - timedelta(days=1))
            .not_valid_after(not_after or datetime(2100, 1, 1, tzinfo=timezone.utc))
            .sign(private, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def server_certificate_pem(*, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
                           usages: tuple[str, ...] | None = None) -> str:
    """A self-signed server certificate with these subjectAltName DNS names and IP addresses and,
    with `usages` ("serverAuth", "clientAuth"), an extended key usage."""
    import ipaddress

    from cryptography.x509.oid import ExtendedKeyUsageOID

    private = _rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edd-infra test node")])
    now = datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
               .serial_number(7).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30)))
    names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usages is not None:
        oids = {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH, "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH}
        builder = builder.add_extension(x509.ExtendedKeyUsage([oids[u] for u in usages]), critical=False)
    return builder.sign(private, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
