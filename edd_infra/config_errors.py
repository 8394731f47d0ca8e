"""Turn bad stack configuration into one message per problem, each naming its config key.

Pure: takes raw values and returns problems, so the program can stop before it registers
any resource and tests can check every message without an engine.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timezone
from pathlib import Path

from typing import Any, Iterable, Mapping, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from .render.apt_source import looks_like_public_key
from .render.result_backend import result_backend_problems
from .settings import OPTIONAL_SECRETS, PROJECT, REQUIRED_SECRETS, CelerySigning, StackSettings


class ConfigError(Exception):
    """Raised with every problem found, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid stack configuration ({len(problems)} problem(s)):\n{lines}")


def config_key(loc: Iterable[Any]) -> str:
    """`('workers', 1, 'concurrency')` -> `edd-infra:workers[1].concurrency`."""
    text = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for a bad dict key: the key itself is the path
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = str(part)
    return f"{PROJECT}:{text}"


def _allowed_keys(model: Any, loc: tuple) -> list[str]:
    """The camelCase keys the model at `loc` accepts, for "unknown key" messages."""
    in_dict = False
    for part in loc[:-1]:
        if isinstance(part, int) or model is None or in_dict:
            in_dict = False  # a list index or a dict key (hosts.<name>) names no field
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        annotation = field.annotation
        in_dict = getattr(annotation, "__origin__", None) is dict
        # Unwrap list[X] / dict[K, X] / Optional[X] to the model inside.
        for arg in getattr(annotation, "__args__", ()) or ():
            if hasattr(arg, "model_fields"):
                annotation = arg
        model = annotation if hasattr(annotation, "model_fields") else None
    if model is None:
        return []
    return sorted(f.alias or n for n, f in model.model_fields.items())


def validation_problems(err: ValidationError) -> list[str]:
    """One message per pydantic error, with the key path and what is allowed."""
    problems = []
    for item in err.errors():
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(StackSettings, loc)
            problems.append(f"{config_key(loc)}: unknown key; allowed here: {', '.join(allowed)}")
            continue
        if item["type"] == "missing":
            problems.append(f"{config_key(loc)}: required, not set")
            continue
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "string_pattern_mismatch":
            msg = f"must match {item['ctx']['pattern']}"
        if loc[-1:] == ("[key]",):
            msg = f"the name {msg}"
        problems.append(f"{config_key(loc)}: {msg} (got {item.get('input')!r})")
    return problems


def _same_socket(a: str, b: str) -> bool:
    """Listen addresses that overlap: equal, `::` (every address), or `0.0.0.0` and IPv4."""
    return a == b or "::" in (a, b) or ("0.0.0.0" in (a, b) and ":" not in a + b)


def reference_problems(settings: StackSettings) -> list[str]:
    """Rules across keys: host names resolve, worker names are unique, hosts fit their roles."""
    problems = []
    hosts = settings.hosts

    def check_host(key: str, name: str) -> None:
        if name not in hosts:
            problems.append(
                f"{PROJECT}:{key}: host {name!r} is not in {PROJECT}:hosts (have: {', '.join(sorted(hosts))})"
            )

    check_host("broker.host", settings.broker.host)
    broker_host = hosts.get(settings.broker.host)
    if broker_host and settings.broker.install == "managed" and broker_host.service_manager != "systemd":
        problems.append(
            f"{PROJECT}:broker.install: 'managed' needs a systemd (Debian) host; for {settings.broker.host!r} "
            "(launchd) run RabbitMQ yourself (brew services start rabbitmq) and set install: external"
        )
    check_host("flower.host", settings.flower.host)
    if settings.edd_settings is not None:
        check_host("eddSettings.host", settings.edd_settings.host)
        if settings.edd_settings.host in hosts and settings.edd_settings.host != settings.broker.host:
            problems.append(
                f"{PROJECT}:eddSettings.host: EDD must run on the broker host ({settings.broker.host!r}) "
                "while the app user may log in from loopback only"
            )
    seen: dict[str, int] = {}
    for i, worker in enumerate(settings.workers):
        check_host(f"workers[{i}].host", worker.host)
        if worker.name in seen:
            problems.append(
                f"{PROJECT}:workers[{i}].name: duplicate worker name {worker.name!r} (also workers[{seen[worker.name]}])"
            )
        seen.setdefault(worker.name, i)
        # A worker on another host reaches the broker over TLS on a non-loopback listener.
        if worker.host != settings.broker.host and worker.host in hosts and settings.broker.remote_amqp_address is None:
            problems.append(
                f"{PROJECT}:workers[{i}].host: a worker off the broker host ({settings.broker.host!r}) needs "
                "broker.tls and a non-loopback address in broker.amqpListeners (AMQP leaves the host only over TLS)"
            )
    problems += cluster_problems(settings) + migration_problems(settings)
    if settings.flower.host != settings.broker.host:
        problems.append(f"{PROJECT}:flower.host: Flower must run on the broker host ({settings.broker.host!r})")
    problems += flower_problems(settings)
    # Listeners on the broker host (Flower runs there too) cannot share an address and port.
    # With broker.tls the plain ones stay on loopback and TLS ones take the configured addresses.
    broker, tls = settings.broker, settings.broker.tls
    listeners = [
        (f"broker.amqpListeners[{i}]", a, broker.amqp_port)
        for i, a in enumerate(broker.amqp_listeners)
        if a in broker.plain_amqp_addresses
    ]
    plain_management = "127.0.0.1" if tls else broker.management_address
    listeners.append(("broker.managementPort", plain_management, broker.management_port))
    listeners.append(("broker.prometheusPort", plain_management, broker.prometheus_port))
    if tls is not None:
        listeners += [("broker.tls.amqpPort", a, tls.amqp_port) for a in broker.amqp_listeners]
        listeners.append(("broker.tls.managementPort", broker.management_address, tls.management_port))
        listeners.append(("broker.tls.prometheusPort", broker.management_address, tls.prometheus_port))
    if settings.flower.enabled:
        listeners.append(("flower.port", settings.flower.address, settings.flower.port))
    for i, (key, address, port) in enumerate(listeners):
        for other, other_address, other_port in listeners[:i]:
            if port == other_port and _same_socket(address, other_address):
                shown = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
                problems.append(
                    f"{PROJECT}:{key}: {shown} is also {PROJECT}:{other}; each listener needs its own address and port"
                )
                break
    for name, host in hosts.items():
        if settings.require_host_keys and host.connection == "ssh" and host.host_key is None:
            problems.append(
                f"{PROJECT}:hosts.{name}.hostKey: required while requireHostKeys is true "
                "(the host's 'ssh-ed25519 AAAA...' line, from ssh-keyscan)"
            )
    users = {
        settings.broker.admin_user: "broker.adminUser",
        settings.app_user.name: "appUser.name",
        settings.flower_broker_user.name: "flowerBrokerUser.name",
    }
    if len(users) < 3:
        problems.append(
            f"{PROJECT}:broker.adminUser, appUser.name, flowerBrokerUser.name: must be three different users"
        )
    for name, key in users.items():
        if name == "guest":
            problems.append(f"{PROJECT}:{key}: 'guest' is removed from the broker; choose another name")
    return problems


def cluster_problems(settings: StackSettings) -> list[str]:
    """broker.clusterNodes: members on their own systemd hosts, reached over TLS, with node
    names the others can resolve, and a queue that survives losing a node."""
    broker, problems = settings.broker, []
    nodes = broker.cluster_nodes
    if not nodes:
        return []
    key = f"{PROJECT}:broker.clusterNodes"
    if broker.install != "managed":
        problems.append(f"{key}: only for install: managed (an external broker's cluster is its own)")
    if broker.tls is None or broker.remote_amqp_address is None:
        problems.append(
            f"{key}: a cluster needs broker.tls and a non-loopback address in broker.amqpListeners "
            "(services fail over between nodes over TLS)"
        )
    if ipaddress.ip_address(broker.node_address).is_loopback or broker.node_name != f"rabbit@{broker.node_address}":
        problems.append(
            f"{PROJECT}:broker.nodeName: in a cluster, rabbit@<broker.nodeAddress> with a non-loopback "
            f"nodeAddress (the other nodes dial it), got {broker.node_name!r} and {broker.node_address!r}; "
            "renaming a node starts it with empty data, so set both before the first up"
        )
    if settings.app_queue.queue_type != "quorum":
        problems.append(
            f"{PROJECT}:appQueue.queueType: must be quorum with broker.clusterNodes "
            "(a classic queue lives on one node and is lost with it)"
        )
    seen = {broker.host: "broker.host"}
    addresses = {broker.node_address: "broker.nodeAddress"}
    for i, node in enumerate(nodes):
        where = f"{key}[{i}]"
        if node.host not in settings.hosts:
            problems.append(
                f"{where}.host: host {node.host!r} is not in {PROJECT}:hosts (have: {', '.join(sorted(settings.hosts))})"
            )
        elif settings.hosts[node.host].service_manager != "systemd":
            problems.append(f"{where}.host: a cluster node needs a systemd (Debian) host")
        if node.host in seen:
            problems.append(f"{where}.host: {node.host!r} already runs a node ({PROJECT}:{seen[node.host]})")
        seen.setdefault(node.host, f"broker.clusterNodes[{i}].host")
        if ":" in node.address:
            problems.append(f"{where}.address: IPv4 only (it is the host part of the node name rabbit@<address>)")
        elif ipaddress.ip_address(node.address).is_loopback:
            problems.append(f"{where}.address: must not be loopback (the other nodes and the workers dial it)")
        if node.address in addresses:
            problems.append(f"{where}.address: {node.address} is also {PROJECT}:{addresses[node.address]}")
        addresses.setdefault(node.address, f"broker.clusterNodes[{i}].address")
    return problems


def migration_problems(settings: StackSettings) -> list[str]:
    """broker.migrateFrom: the old broker is another systemd host of this stack, and the new
    broker takes the shovel over TLS (it crosses the network; plain AMQP stays on loopback)."""
    broker = settings.broker
    old = broker.migrate_from
    if old is None:
        return []
    key, problems = f"{PROJECT}:broker.migrateFrom", []
    if old.host == broker.host:
        problems.append(f"{key}.host: the host the broker moves away from, not broker.host ({broker.host!r}) itself")
    elif old.host not in settings.hosts:
        problems.append(
            f"{key}.host: host {old.host!r} is not in {PROJECT}:hosts (have: {', '.join(sorted(settings.hosts))}); "
            "keep the old host there until the migration is retired"
        )
    elif settings.hosts[old.host].service_manager != "systemd":
        problems.append(f"{key}.host: the old broker must be a managed Debian (systemd) host")
    if broker.install != "managed":
        problems.append(f"{key}: only for install: managed (the program installs the new broker)")
    if broker.cluster_nodes:
        problems.append(f"{key}: moves a single node; migrate before adding broker.clusterNodes")
    if broker.remote_amqp_address is None:
        problems.append(
            f"{key}: needs broker.tls and a non-loopback address in broker.amqpListeners on the new broker "
            "(the old broker's shovel reaches it over the network, and AMQP leaves a host only over TLS)"
        )
    return problems


def flower_problems(settings: StackSettings) -> list[str]:
    """Flower off loopback only over HTTPS, with a CA that says who issued its certificate."""
    flower, problems = settings.flower, list[str]()
    if not flower.enabled:
        return problems
    if flower.tls is None and not flower.loopback:
        problems.append(
            f"{PROJECT}:flower.address: {flower.address} is not loopback, so flower.tls is required: over plain HTTP "
            "Flower's login travels with every request and its pages show task arguments and results. Set "
            "flower.tls.certFile (a certificate for that address from the stack's CA) and the secret flowerTlsKey "
            "(pulumi config set --secret flowerTlsKey < flower.key), or keep Flower on 127.0.0.1 (behind a TLS proxy "
            "of your own)"
        )
    if flower.tls is not None and flower.tls.ca_file is None and settings.broker.tls is None:
        problems.append(
            f"{PROJECT}:flower.tls.caFile: required without broker.tls (the CA that issued "
            "flower.tls.certFile: Flower's health check and scrapers verify it)"
        )
    return problems


def flower_warnings(settings: StackSettings) -> list[str]:
    """Config the program accepts (older stacks set it) that leaves a door open between Flower
    and the workers; `up` and `preview` print each."""
    flower, warnings = settings.flower, list[str]()
    if not flower.enabled:
        return warnings
    for i, worker in enumerate(settings.workers):
        if worker.host != flower.host:
            continue
        if worker.user == flower.user:
            warnings.append(
                f"flower.user: Flower runs as workers[{i}]'s user {worker.user!r}: it can read the workers' "
                "environment files (the app password) and they its UI password. Remove flower.user and "
                "flower.group (Flower then gets its own account, flower) or set ones no worker uses"
            )
        elif flower.group == worker.group or flower.group in worker.extra_groups:
            warnings.append(
                f"flower.group: Flower's group {flower.group!r} is also workers[{i}]'s: the worker can read "
                "Flower's files (its UI password, its database) or Flower the worker's. Set flower.group to "
                "a group of its own (default flower)"
            )
    if (
        flower.can_send_tasks
        and settings.celery_signing is not None
        and settings.flower_broker_user.profile != "administrator"
    ):
        warnings.append(
            "flower.canSendTasks: Flower holds the signing key, but its broker user (flowerBrokerUser.profile "
            f"{settings.flower_broker_user.profile}) may not publish tasks: the key sends none, and only "
            "lets Flower's UI control the workers (inspect, revoke, shutdown); remove flower.canSendTasks "
            "unless that is what you want"
        )
    return warnings


def secret_problems(values: Mapping[str, str | None], is_secret: Mapping[str, bool]) -> list[str]:
    """Checks on secret values; messages name the key and the rule, never the value."""
    problems = []
    for key in REQUIRED_SECRETS + OPTIONAL_SECRETS:
        value = values.get(key)
        full = f"{PROJECT}:{key}"
        if value is None or (value == "" and key in OPTIONAL_SECRETS):
            if key in REQUIRED_SECRETS:
                problems.append(f"{full}: required, not set (pulumi config set --secret {key})")
            continue
        if not is_secret.get(key, False):
            problems.append(f"{full}: stored in plaintext; set it with `pulumi config set --secret {key}`")
        if key in ("sshPrivateKey", "brokerTlsKey", "celerySigningKey", "flowerTlsKey"):
            if "PRIVATE KEY-----" not in value:
                problems.append(f"{full}: must be an OpenSSH or PEM private key")
            continue
        if key == "erlangCookie":
            if not re.fullmatch(r"[A-Za-z0-9]{20,255}", value):
                problems.append(f"{full}: 20 to 255 letters and digits (the Erlang cookie every cluster node shares)")
            elif re.fullmatch(r"[A-Z]{20}", value):
                # Debian's package writes such a cookie on every install: copied from a node, it is
                # not a secret chosen for the cluster and changes with the next reinstall.
                problems.append(
                    f"{full}: looks like the cookie Debian's rabbitmq-server generates (20 capital "
                    "letters); use a random one: openssl rand -hex 32 | scripts/pulumi config set --secret "
                    "erlangCookie"
                )
            continue
        if key == "resultBackend":
            problems += result_backend_problems(value, full)
            continue
        if value == "":
            problems.append(f"{full}: must not be empty")
        elif not value.isprintable():
            problems.append(f"{full}: printable characters only (no newline, tab or control characters)")
        elif len(value.encode()) > 1024:
            problems.append(f"{full}: at most 1024 bytes")
        elif key == "flowerUiPassword" and not value.isascii():
            # Flower 2.2 compares basic-auth credentials with hmac.compare_digest on str,
            # which raises (HTTP 500) for non-ASCII text.
            problems.append(f"{full}: printable ASCII only (Flower 2.2's basic auth fails on other characters)")
    return problems


def _certificate_problems(key: str, name: str, root: Path) -> list[str]:
    path = root / name
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        return [
            f"{PROJECT}:{key}: cannot read {str(path)!r} ({type(err).__name__}); "
            "a PEM certificate file, relative to the project directory or absolute"
        ]
    if "-----BEGIN CERTIFICATE-----" not in text:
        return [f"{PROJECT}:{key}: {str(path)!r} holds no PEM certificate"]
    return []


def inter_node_certificate_problems(broker, root: Path) -> list[str]:
    """broker.interNodeTls: every node presents broker.tls.certFile to the others, as server and as
    client. Erlang's TLS distribution checks the host part of the node name it dials
    (`rabbit@<address>`) against the certificate's DNS names, even for an address (Erlang 25 and
    27), so every node address must be a DNS name of the certificate (as well as the IP address
    AMQP clients check); an extended key usage, if any, must allow both ends."""
    key = "broker.tls.certFile"
    cert, problems = _load_certificate(key, broker.tls.cert_file, root)
    if cert is None:
        return problems
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns, ips = (
            set(names.get_values_for_type(x509.DNSName)),
            {str(a) for a in names.get_values_for_type(x509.IPAddress)},
        )
    except x509.ExtensionNotFound:
        dns, ips = set(), set()
    addresses = [broker.node_address, *(n.address for n in broker.cluster_nodes)]
    missing = [a for a in addresses if a not in dns]
    if missing:
        problems.append(
            f"{PROJECT}:{key}: with broker.interNodeTls, every node address must be a DNS name of the "
            f"certificate (subjectAltName DNS:<address>; Erlang's TLS distribution checks the node name's "
            f"host part as a DNS name, also when it is an address); missing: {', '.join(missing)}"
        )
    missing_ip = [a for a in addresses if a not in ips]
    if missing_ip:
        problems.append(
            f"{PROJECT}:{key}: every cluster node address must be an IP address of the certificate "
            f"(subjectAltName IP:<address>; clients check it); missing: {', '.join(missing_ip)}"
        )
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None:
        need = {
            x509.oid.ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
            x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
        }
        lacking = [name for oid, name in need.items() if oid not in usages]
        if lacking:
            problems.append(
                f"{PROJECT}:{key}: with broker.interNodeTls each node uses the certificate as TLS server "
                f"and as client; its extended key usage lacks {' and '.join(lacking)}"
            )
    return problems


def celery_certificate_id(cert: x509.Certificate) -> str:
    """How Celery's certificate store names a certificate (celery.security.certificate.get_id):
    two with the same id make the store raise, and the worker does not start."""
    return f"{' '.join(str(a.value) for a in cert.issuer)} {cert.serial_number}"


def _load_certificate(key: str, name: str, root: Path) -> tuple[x509.Certificate | None, list[str]]:
    """The first certificate in a PEM file, as Celery reads it, or the problem with it."""
    path = root / name
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()), []
    except OSError as err:
        return None, [
            f"{PROJECT}:{key}: cannot read {str(path)!r} ({type(err).__name__}); "
            "a PEM certificate file, relative to the project directory or absolute"
        ]
    except ValueError:
        return None, [f"{PROJECT}:{key}: {str(path)!r} holds no PEM certificate that can be read"]


def previous_certificate_problems(signing: CelerySigning, root: Path, now: datetime) -> list[str]:
    """celerySigning.previousCertFile, while it is trusted: a certificate Celery's store accepts
    beside certFile (another id, not expired before previousTrustedUntil, RSA)."""
    if not signing.previous_trusted(now):
        return []  # not deployed: nothing on a host depends on it
    key = "celerySigning.previousCertFile"
    # previous_trusted: previousCertFile and previousTrustedUntil are both set.
    previous, problems = _load_certificate(key, cast(str, signing.previous_cert_file), root)
    if previous is None:
        return problems
    until = cast(datetime, signing.previous_trusted_until)
    if previous.not_valid_after_utc < until:
        expires = previous.not_valid_after_utc
        problems.append(
            f"{PROJECT}:{key}: the certificate expires at {expires:%Y-%m-%dT%H:%M:%SZ}, "
            f"before celerySigning.previousTrustedUntil ({until:%Y-%m-%dT%H:%M:%SZ}); Celery refuses to "
            "start with an expired certificate in its store: set previousTrustedUntil no later than that"
        )
    if not isinstance(previous.public_key(), rsa.RSAPublicKey):
        problems.append(f"{PROJECT}:{key}: must be an RSA certificate (Celery's auth serializer supports no other)")
    current, _ = _load_certificate("celerySigning.certFile", signing.cert_file, root)
    if current is None:
        problems.append(
            f"{PROJECT}:celerySigning.certFile: holds no PEM certificate that can be read, "
            "so previousCertFile cannot be checked against it"
        )
    elif previous == current:
        problems.append(
            f"{PROJECT}:{key}: is the same certificate as celerySigning.certFile; set it to the "
            "certificate of the key used before the rotation"
        )
    elif celery_certificate_id(previous) == celery_certificate_id(current):
        problems.append(
            f"{PROJECT}:{key}: has the same issuer and serial number as celerySigning.certFile "
            f"({celery_certificate_id(current)!r}); Celery's store refuses duplicates: issue the new "
            "certificate with another serial number"
        )
    return problems


def _apt_source_problems(settings: StackSettings, root: Path) -> list[str]:
    source = settings.broker.apt_source
    if source is None:
        return []
    problems = []
    if settings.broker.package_version is None:
        problems.append(
            f"{PROJECT}:broker.packageVersion: required with broker.aptSource (the version it pins, "
            "e.g. from `apt-cache policy rabbitmq-server` on a host with the source)"
        )
    if settings.broker.install != "managed":
        problems.append(f"{PROJECT}:broker.aptSource: only for install: managed")
    path = root / source.key_file
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        return problems + [
            f"{PROJECT}:broker.aptSource.keyFile: cannot read {str(path)!r} ({type(err).__name__}); "
            "the repository's ASCII-armored public key, relative to the project directory or absolute"
        ]
    if not looks_like_public_key(text):
        problems.append(
            f"{PROJECT}:broker.aptSource.keyFile: {str(path)!r} holds no ASCII-armored public key "
            "(-----BEGIN PGP PUBLIC KEY BLOCK-----; `gpg --armor --export` makes one)"
        )
    return problems


def flower_tls_problems(settings: StackSettings, secrets: Mapping[str, str | None], root: Path) -> list[str]:
    """flower.tls: its key, a certificate for flower.address issued by its CA (flower.tls.caFile,
    else broker.tls.caFile)."""
    flower = settings.flower
    if not flower.enabled or flower.tls is None:
        return []
    problems = []
    if not secrets.get("flowerTlsKey"):
        problems.append(
            f"{PROJECT}:flowerTlsKey: required when flower.tls is set "
            "(pulumi config set --secret flowerTlsKey < flower.key)"
        )
    cert, cert_problems = _load_certificate("flower.tls.certFile", flower.tls.cert_file, root)
    ca_key = "flower.tls.caFile" if flower.tls.ca_file else "broker.tls.caFile"
    ca_name = flower.tls.ca_file or (settings.broker.tls.ca_file if settings.broker.tls else None)
    ca, ca_problems = _load_certificate(ca_key, ca_name, root) if ca_name else (None, [])
    problems += cert_problems + (ca_problems if ca_key == "flower.tls.caFile" else [])
    if cert is None:
        return problems
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        addresses = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        addresses = set()
    if str(ipaddress.ip_address(flower.address)) not in addresses:
        problems.append(
            f"{PROJECT}:flower.tls.certFile: the certificate is not for flower.address {flower.address} "
            f"(its IP subject alternative names: {', '.join(sorted(addresses)) or 'none'}); browsers and "
            "scrapers would refuse it"
        )
    if ca is not None:
        try:
            usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
            signs = usage.key_cert_sign
        except x509.ExtensionNotFound:
            signs = False
        if not signs:
            problems.append(
                f"{PROJECT}:{ca_key}: the CA certificate has no key usage allowing it to sign "
                "certificates (keyUsage keyCertSign): Python 3.13 (Debian 13) refuses such a CA, so "
                "Flower's health check would fail; reissue the CA with keyUsage=critical,keyCertSign,cRLSign"
            )
        try:
            cert.verify_directly_issued_by(ca)
        except Exception:  # noqa: BLE001 - a bad signature or another issuer: not issued by this CA
            problems.append(
                f"{PROJECT}:flower.tls.certFile: not issued by {ca_key} (the CA that verifies Flower "
                "for its health check and scrapers)"
            )
    return problems


def file_problems(
    settings: StackSettings, secrets: Mapping[str, str | None], root: Path, now: datetime | None = None
) -> list[str]:
    """broker.tls and celerySigning need their secret keys and readable PEM certificates
    (celerySigning's previous one while it is trusted at `now`, default: now); broker.aptSource
    its key file and a version to pin."""
    problems = _apt_source_problems(settings, root)
    tls = settings.broker.tls
    if tls is not None:
        if not secrets.get("brokerTlsKey"):
            problems.append(
                f"{PROJECT}:brokerTlsKey: required when broker.tls is set "
                "(pulumi config set --secret brokerTlsKey < server.key)"
            )
        unreadable = _certificate_problems("broker.tls.caFile", tls.ca_file, root) + _certificate_problems(
            "broker.tls.certFile", tls.cert_file, root
        )
        problems += unreadable
        if settings.broker.install != "managed":
            problems.append(f"{PROJECT}:broker.tls: only for install: managed (an external broker's TLS is its own)")
        if settings.broker.inter_node_tls and not unreadable:
            problems += inter_node_certificate_problems(settings.broker, root)
        if not settings.broker.plain_amqp_addresses:
            problems.append(
                f"{PROJECT}:broker.amqpListeners: with broker.tls, include 127.0.0.1 or ::1 "
                "(services on the broker host connect there without TLS)"
            )
    if settings.broker.cluster_nodes and not secrets.get("erlangCookie"):
        problems.append(
            f"{PROJECT}:erlangCookie: required when broker.clusterNodes is set "
            "(the value on stdin, never on a command line: "
            "openssl rand -hex 32 | pulumi config set --secret erlangCookie)"
        )
    problems += flower_tls_problems(settings, secrets, root)
    if settings.celery_signing is not None:
        if not secrets.get("celerySigningKey"):
            problems.append(
                f"{PROJECT}:celerySigningKey: required when celerySigning is set "
                "(pulumi config set --secret celerySigningKey < signing.key)"
            )
        problems += _certificate_problems("celerySigning.certFile", settings.celery_signing.cert_file, root)
        problems += previous_certificate_problems(settings.celery_signing, root, now or datetime.now(timezone.utc))
    return problems


def validate(raw: Mapping[str, Any]) -> tuple[StackSettings | None, list[str]]:
    """Model plus cross-key rules; returns (settings, problems)."""
    try:
        settings = StackSettings.model_validate(dict(raw))
    except ValidationError as err:
        return None, validation_problems(err)
    return settings, reference_problems(settings)
