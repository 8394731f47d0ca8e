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
