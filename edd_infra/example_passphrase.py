"""The published example passphrase may key only the committed examples and the sandbox.

`edd-infra-example` (README, the Makefile's default PULUMI_CONFIG_PASSPHRASE) decrypts the
committed stacks so that `make preview` runs anywhere. Anyone can read a secret encrypted with
it. So a stack keyed with it may hold only what is already public: the committed example
stacks (`prod`, `dev`) with exactly their committed example secrets, or the sandbox (its
throw-away hosts on this machine's host-only links). Any other stack is refused before a
resource is registered, so nothing reaches a host, with how to re-key.

Which passphrase keys the stack is read from the stack file itself, not from the environment:
the passphrase provider's `encryptionsalt` holds "pulumi" encrypted under the key, so trying
the example passphrase on it answers whatever way the passphrase was given (environment,
PULUMI_CONFIG_PASSPHRASE_FILE, a prompt, an Automation API workspace). Pure: no Pulumi import.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from typing import Mapping, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

EXAMPLE_PASSPHRASE = "edd-infra-example"
# Pulumi's passphrase provider (pkg/secrets/passphrase): PBKDF2-HMAC-SHA256, this many rounds,
# a 32-byte AES-256-GCM key; the state is "v1:<salt>:v1:<nonce>:<ciphertext of 'pulumi'>".
PBKDF2_ROUNDS = 1_000_000

# sha256 (first 16 hex digits) of each secret of the committed example stacks, decrypted. These
# values are public (the passphrase is): a stack holding only them leaks nothing. A change to a
# committed stack's secrets changes these (tests/engine checks them against the files).
EXAMPLE_SECRETS = {
    "prod": {
        "adminPassword": "10f13d79ff3ae6ec",
        "appPassword": "772e4c8c6cb5214e",
        "brokerTlsKey": "0a03f3830d139bc2",
        "flowerBrokerPassword": "3cc5de5b0c20229f",
        "flowerUiPassword": "30f4800e5d6fa46d",
        "sshPrivateKey": "ef1721fa68ef1471",
    },
    "dev": {
        "adminPassword": "393ab35956f0f135",
        "appPassword": "aa7a79b185eb4ef5",
        "flowerBrokerPassword": "770d570c217acabf",
        "flowerUiPassword": "980f4a855b2f2038",
    },
}
# The sandbox's hosts (sandbox/hosts.py): systemd-nspawn containers at 10.57.<i>.2 on a /30
# host-only link of the machine running `make sandbox` or the hosts tier.
SANDBOX_NETWORK = ipaddress.ip_network("10.57.0.0/16")


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def keyed_with(encryption_salt: Optional[str], passphrase: str) -> bool:
    """Whether a passphrase provider state (`encryptionsalt`) was made with `passphrase`."""
    parts = (encryption_salt or "").split(":")
    if len(parts) != 5 or parts[0] != "v1" or parts[2] != "v1":
        return False  # another secrets provider, or no secrets yet
    try:
        salt, nonce, sealed = (base64.b64decode(p, validate=True) for p in (parts[1], parts[3], parts[4]))
        key = hashlib.pbkdf2_hmac("sha256", passphrase.encode(), salt, PBKDF2_ROUNDS, 32)
        return AESGCM(key).decrypt(nonce, sealed, None) == b"pulumi"
    except (ValueError, InvalidTag):
        return False


def is_example_stack(stack: str, secrets: Mapping[str, Optional[str]]) -> bool:
    """The committed example `stack`, holding exactly its published secrets and no other."""
    published = EXAMPLE_SECRETS.get(stack)
    held = {key: digest(value) for key, value in secrets.items() if value}
    return published is not None and held == published


def is_sandbox(hosts: Mapping[str, object]) -> bool:
    """Every host is a sandbox host: SSH to an address on the sandbox's host-only links."""

    def sandbox_host(host) -> bool:
        try:
            address = ipaddress.ip_address(getattr(host, "address", None) or "")
        except ValueError:
            return False
        return getattr(host, "connection", None) == "ssh" and address in SANDBOX_NETWORK

    return bool(hosts) and all(sandbox_host(h) for h in hosts.values())


def rekey_hint(stack: str) -> str:
    return (
        f"re-key it: put a new passphrase (not on a command line) in a file only you can read, then "
        f"`PULUMI_CONFIG_PASSPHRASE={EXAMPLE_PASSPHRASE} scripts/pulumi stack change-secrets-provider -s {stack} "
        f"passphrase < new-passphrase` (at a terminal it asks for the new one instead; with nothing on stdin the "
        f"CLI re-keys with an empty passphrase), or move to a KMS with `scripts/pulumi stack change-secrets-provider "
        f"-s {stack} awskms://...`; then export PULUMI_CONFIG_PASSPHRASE_FILE=new-passphrase (or "
        f"PULUMI_CONFIG_PASSPHRASE) for every run, and rotate every secret set so far: anyone with the stack file "
        f"could read it"
    )


def example_passphrase_problem(
    stack: str, encryption_salt: Optional[str], secrets: Mapping[str, Optional[str]], hosts: Mapping[str, object]
) -> Optional[str]:
    """Why `stack` may not run (keyed with the example passphrase, and neither a committed example
    with its published secrets nor the sandbox), or None."""
    # The cheap tests first: the key derivation costs ~0.3 s of CPU at every preview and `up`.
    if is_example_stack(stack, secrets) or is_sandbox(hosts):
        return None
    if not keyed_with(encryption_salt, EXAMPLE_PASSPHRASE):
        return None
    what = (
        "holds secrets other than the committed example's"
        if stack in EXAMPLE_SECRETS
        else "is not one of the committed example stacks (prod, dev) nor the sandbox"
    )
    return (
        f"stack {stack!r}: its secrets are encrypted with the published example passphrase "
        f"'{EXAMPLE_PASSPHRASE}' (README; the Makefile's default PULUMI_CONFIG_PASSPHRASE), and it {what}, so "
        f"anyone can decrypt them. Nothing was deployed; {rekey_hint(stack)}"
    )
