"""Files and environment for Celery message signing (the `auth` serializer).

Each service gets its own copy under /etc/edd-infra/signing/<service>/ (so removing one
service never takes another's key): the private key (0640, root:<service group>), its
certificate, and a one-certificate store of the certificates it trusts. The app reads the
paths from CELERY_SECURITY_KEY, CELERY_SECURITY_CERTIFICATE and CELERY_SECURITY_CERT_STORE
and calls `app.setup_security()`; Celery has no environment names of its own for them.
"""

from __future__ import annotations

from .host_scripts import FileSpec

SIGNING_DIR = "/etc/edd-infra/signing"


def signing_paths(service: str) -> tuple[str, str, str]:
    """Where one service's key, certificate and stored certificate go."""
    base = f"{SIGNING_DIR}/{service}"
    return f"{base}/key.pem", f"{base}/cert.pem", f"{base}/store/cert.pem"


def signing_files(service: str, group: str, key_pem: str, cert_pem: str) -> tuple[list[FileSpec], dict[str, str]]:
    """(files for the secret bundle, environment entries) for one service."""
    base = f"{SIGNING_DIR}/{service}"
    key, cert, stored = signing_paths(service)
    files = [
        FileSpec(key, key_pem, "0640", "root", group),
        FileSpec(cert, cert_pem, "0644"),
        FileSpec(stored, cert_pem, "0644"),
    ]
    env = {
        "CELERY_SECURITY_KEY": key,
        "CELERY_SECURITY_CERTIFICATE": cert,
        "CELERY_SECURITY_CERT_STORE": f"{base}/store/*.pem",
    }
    return files, env
