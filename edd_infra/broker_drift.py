"""What changed on the broker behind Pulumi's back, read at `up` time through the management API.

pulumi_rabbitmq never reads passwords back and pulumi_command has no read at all, so
`refresh` cannot see a password changed by hand or a re-added `guest`. Before registering
resources, `observe` logs in as the Pulumi admin (the provider does the same a moment later),
lists the users and checks each configured password against its stored hash offline: no
login as the app or Flower user, no password on any command line. The result is a token per
drifted account; components put it on the stdin of the command that repairs that account,
so the repair runs in this `up`, and ignore stdin changes otherwise, so the next `up` (and
`preview`, which reads nothing from the broker) is a no-op again. A changed admin password
in config is found the same way: the broker refuses it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import secrets
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Literal, Optional
from urllib.parse import urlsplit

from .render.password_hash import password_matches

AdminState = Literal["ok", "refused", "unknown"]


@dataclass(frozen=True)
class BrokerDrift:
    """Drift found on the broker; `unknown` when it could not be read (not installed yet,
    unreachable, or preview)."""

    admin: AdminState = "unknown"
    guest_present: bool = False
    # user name -> repair token, for users whose stored hash is not the configured password
    drifted_users: dict[str, str] = field(default_factory=dict)
    # Makes this run's tokens differ from any earlier run's.
    nonce: str = field(default_factory=lambda: secrets.token_hex(6), compare=False)

    @property
    def checked(self) -> bool:
        return self.admin == "ok"

    def admin_token(self) -> Optional[str]:
        """Token that makes the admin command rerun: wrong admin password or guest back."""
        if self.admin == "refused":
            return "admin-refused-" + self.nonce
        if self.admin == "ok" and self.guest_present:
            return "guest-present-" + self.nonce
        return None

    def user_token(self, name: str) -> Optional[str]:
        """Token that restores `name`'s password. With the admin refused the users cannot be
        read: whoever changed the admin's password may have changed theirs, so restore all."""
        if self.admin == "refused":
            return "admin-refused-" + self.nonce
        return self.drifted_users.get(name)


NOT_CHECKED = BrokerDrift()


class PlainHttpRefused(ValueError):
    """The probe would send the admin password in cleartext off the machine: it does not dial."""


def plain_http_problem(endpoint: str) -> Optional[str]:
    """Why the probe refuses `endpoint` (plain http:// to an address that is not loopback), or None."""
    split = urlsplit(endpoint)
    if split.scheme.lower() != "http":
        return None
    host = split.hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (
        f"the management API at {endpoint} is plain HTTP on {host or 'no host'}, not loopback: the drift probe "
        "(and the rabbitmq provider) would send the admin password in cleartext across the network. Turn on "
        "broker.tls (the API is then HTTPS on broker.managementAddress, checked against the stack's CA), or use "
        "a loopback broker.managementAddress"
    )


def _get(url: str, user: str, password: str, timeout: float, context: Optional[ssl.SSLContext]):
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return json.load(response)


def observe(
    endpoint: str,
    admin_user: str,
    admin_password: str,
    passwords: dict[str, str],
    *,
    timeout: float = 3.0,
    ca_file: Optional[str] = None,
) -> BrokerDrift:
    """Read the broker's users once and compare them with the configured passwords. Raises
    PlainHttpRefused, before dialling, for plain HTTP off loopback."""
    problem = plain_http_problem(endpoint)
    if problem:
        raise PlainHttpRefused(problem)
    context = ssl.create_default_context(cafile=ca_file) if endpoint.startswith("https:") else None
    try:
        users = _get(f"{endpoint}/api/users", admin_user, admin_password, timeout, context)
    except urllib.error.HTTPError as err:
        return BrokerDrift(admin="refused" if err.code == 401 else "unknown")
    except (OSError, ValueError):
        return NOT_CHECKED
    stored = {u.get("name"): u for u in users if isinstance(u, dict)}
    drifted = {}
    for name, password in passwords.items():
        user = stored.get(name)
        if user is None:
            continue  # not created yet, or deleted by hand: the provider's refresh sees that
        stored_hash = user.get("password_hash", "")
        if not password_matches(stored_hash, password, user.get("hashing_algorithm", "rabbit_password_hashing_sha256")):
            drifted[name] = "drift-" + hashlib.sha256(stored_hash.encode()).hexdigest()[:12]
    return BrokerDrift(admin="ok", guest_present="guest" in stored, drifted_users=drifted)
