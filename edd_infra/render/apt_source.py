"""apt files that take rabbitmq-server from a repository of the stack's choosing, pinned.

The guide installs RabbitMQ from RabbitMQ's own apt repository, not Debian's older one. Three
files do that the way Debian recommends for a third-party repository: its key in
/etc/apt/keyrings (trusted for that source only, `Signed-By`), the source in deb822 form, and
an apt preference that holds rabbitmq-server at the configured version (and prefers the
source's Erlang where it has one), so neither `apt upgrade` nor unattended-upgrades moves it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

KEYRING_PATH = "/etc/apt/keyrings/edd-infra-rabbitmq.asc"
SOURCES_PATH = "/etc/apt/sources.list.d/edd-infra-rabbitmq.sources"
PREFERENCES_PATH = "/etc/apt/preferences.d/edd-infra-rabbitmq"
HEADER = "# Written by edd-infra; changes here are overwritten by the next `pulumi up`.\n"


def render_apt_sources(url: str, suite: str, component: str, keyring: str = KEYRING_PATH) -> str:
    """The repository as a deb822 source that trusts only its own key."""
    return f"{HEADER}Types: deb\nURIs: {url}\nSuites: {suite}\nComponents: {component}\nSigned-By: {keyring}\n"


def render_apt_preferences(url: str, package_version: str) -> str:
    """rabbitmq-server pinned to `package_version` (priority > 1000 also allows going back to
    it); Erlang from the source's host when the source has it (RabbitMQ's repositories carry
    the Erlang they support), else Debian's as before."""
    origin = urlsplit(url).hostname
    return (
        f"{HEADER}Package: rabbitmq-server\nPin: version {package_version}\nPin-Priority: 1001\n\n"
        f'Package: erlang*\nPin: origin "{origin}"\nPin-Priority: 700\n'
    )


def looks_like_public_key(text: str) -> bool:
    """An ASCII-armored OpenPGP public key block (what `Signed-By` reads from a .asc file)."""
    return "-----BEGIN PGP PUBLIC KEY BLOCK-----" in text and "-----END PGP PUBLIC KEY BLOCK-----" in text
