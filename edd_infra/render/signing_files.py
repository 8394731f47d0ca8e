"""Files and environment for Celery message signing (the `auth` serializer).

Each service gets its own copy under /etc/edd-infra/signing/<service>/ (so removing one
service never takes another's key): the private key (0640, root:<service group>; not for
Flower unless flower.canSendTasks: it only verifies), its certificate, and a store of the certificates it trusts: the current one, and during a key
rotation the previous one too (`store/previous.pem`), so tasks queued under the old key still
run. The app reads the paths from CELERY_SECURITY_KEY, CELERY_SECURITY_CERTIFICATE and
CELERY_SECURITY_CERT_STORE (a glob: Celery loads every file it matches) and calls
`app.setup_security()`; Celery has no environment names of its own for them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from .host_scripts import FileSpec

SIGNING_DIR = "/etc/edd-infra/signing"


def signing_paths(service: str) -> tuple[str, str, str, str]:
    """Where one service's key, certificate, stored certificate and stored previous certificate go."""
    base = f"{SIGNING_DIR}/{service}"
    return f"{base}/key.pem", f"{base}/cert.pem", f"{base}/store/cert.pem", f"{base}/store/previous.pem"


def signing_files(
    service: str,
    group: str,
    key_pem: Optional[str],
    cert_pem: str,
    previous_pem: Optional[str] = None,
    private: bool = False,
) -> tuple[list[FileSpec], dict[str, str]]:
    """(files for the secret bundle, environment entries) for one service; `previous_pem`: the
    certificate of the key signed with before a rotation, while it is still trusted.

    `key_pem` None: verify only (Flower without flower.canSendTasks): the certificate and the
    store, no key file and no CELERY_SECURITY_KEY. `private`: the certificates too are
    0640 root:<group> (a service whose files no other service may read)."""
    base = f"{SIGNING_DIR}/{service}"
    key, cert, stored, previous = signing_paths(service)
    public = ("0640", "root", group) if private else ("0644", "root", "root")
    files = [FileSpec(key, key_pem, "0640", "root", group)] if key_pem is not None else []
    files += [FileSpec(cert, cert_pem, *public), FileSpec(stored, cert_pem, *public)]
    if previous_pem is not None:
        files.append(FileSpec(previous, previous_pem, *public))
    env = {"CELERY_SECURITY_KEY": key} if key_pem is not None else {}
    env |= {
        "CELERY_SECURITY_CERTIFICATE": cert,
        "CELERY_SECURITY_CERT_STORE": f"{base}/store/*.pem",
    }
    return files, env


def untrusted_paths(service: str, previous_pem: Optional[str], key: bool = True) -> list[str]:
    """Files to remove: the previous certificate once it is no longer trusted (a store file left
    behind stays trusted, and stops the worker from starting once it expires); with `key` False
    the signing key too (a service that no longer signs: it was there before)."""
    paths = [] if previous_pem is not None else [signing_paths(service)[3]]
    return paths + ([] if key else [signing_paths(service)[0]])


def previous_certificate_warning(trusted_until: datetime) -> str:
    """What `up` and `preview` say once celerySigning.previousTrustedUntil has passed."""
    return (
        f"celerySigning.previousTrustedUntil ({trusted_until:%Y-%m-%dT%H:%M:%SZ}) has passed: the previous signing "
        "certificate is no longer trusted (up removes it from every service's store, which restarts them; tasks "
        "signed with the old key are refused); remove celerySigning.previousCertFile and "
        "celerySigning.previousTrustedUntil from the stack config"
    )
