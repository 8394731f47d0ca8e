"""RabbitMQ's stored password hashes, checked offline.

The management API returns `password_hash` = base64(salt + H(salt + utf8(password))) with a
4-byte salt, and `hashing_algorithm` naming H. Comparing against it tells whether the broker
still holds the configured password without a login attempt (which would show in the broker
log and count against the user) and without the password leaving this process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

ALGORITHMS = {
    "rabbit_password_hashing_sha256": hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
    "rabbit_password_hashing_md5": hashlib.md5,
}
SALT_BYTES = 4


def password_matches(stored_hash: str, password: str, algorithm: str = "rabbit_password_hashing_sha256") -> bool:
    """True when `stored_hash` is `password` hashed with `algorithm`; False for anything else,
    including an empty hash (a user without a password) and an unknown algorithm."""
    digest = ALGORITHMS.get(algorithm)
    try:
        raw = base64.b64decode(stored_hash, validate=True)
    except (binascii.Error, ValueError):
        return False
    if digest is None or len(raw) <= SALT_BYTES:
        return False
    salt, expected = raw[:SALT_BYTES], raw[SALT_BYTES:]
    return hmac.compare_digest(digest(salt + password.encode()).digest(), expected)


def hash_password(password: str, salt: bytes, algorithm: str = "rabbit_password_hashing_sha256") -> str:
    """The stored form RabbitMQ would keep for `password` with this salt (for tests and
    `password_hash` imports)."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt must be {SALT_BYTES} bytes")
    return base64.b64encode(salt + ALGORITHMS[algorithm](salt + password.encode()).digest()).decode()
