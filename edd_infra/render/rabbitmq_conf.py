"""RabbitMQ's new-format rabbitmq.conf and the environment that binds epmd.

The seed's "listen only on localhost" and "loopback_users" steps, in the sysctl-like
format RabbitMQ 3.7+ reads. An explicit `loopback_users` entry replaces the default list,
so guest is named again even though the program deletes it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Optional

TLS_DIR = "/etc/rabbitmq/tls"
LOOPBACK = "127.0.0.1"
# One word of a rabbitmq.conf key (cuttlefish's grammar, "\\." escapes aside): what a name
# placed in a key may hold. settings.ConfKeyUserName refuses others before anything renders.
KEY_WORD = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class TlsListeners:
    """Where the TLS listeners go and the files they use on the broker host."""

    amqp_port: int
    management_port: int
    prometheus_port: Optional[int] = None
    ca_path: str = f"{TLS_DIR}/ca.pem"
    cert_path: str = f"{TLS_DIR}/cert.pem"
    key_path: str = f"{TLS_DIR}/key.pem"


def _tls_lines(
    tls: TlsListeners, amqp_listeners: Iterable[str], management_address: str, prometheus_address: str
) -> list[str]:
    files = {"cacertfile": tls.ca_path, "certfile": tls.cert_path, "keyfile": tls.key_path}
    lines = [f"listeners.ssl.{i} = {_listener(a, tls.amqp_port)}" for i, a in enumerate(amqp_listeners, 1)]
    lines += [f"ssl_options.{k} = {v}" for k, v in files.items()]
    # Clients authenticate with passwords; they check the server, the server does not ask for theirs.
    lines += [
        "ssl_options.verify = verify_none",
        "ssl_options.fail_if_no_peer_cert = false",
        f"management.ssl.ip = {management_address}",
        f"management.ssl.port = {tls.management_port}",
    ]
    lines += [f"management.ssl.{k} = {v}" for k, v in files.items()]
    if tls.prometheus_port is not None:
        lines += [f"prometheus.ssl.ip = {prometheus_address}", f"prometheus.ssl.port = {tls.prometheus_port}"]
        lines += [f"prometheus.ssl.{k} = {v}" for k, v in files.items()]
    return lines


def _listener(address: str, port: int) -> str:
    # rabbitmq.conf takes IPv6 listeners unbracketed (`::1:5672`); "[::1]:5672" fails to boot.
    return f"{address}:{port}"


def _socket_address(address: str, port: int) -> str:
    # systemd's ListenStream= needs the brackets.
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def render_rabbitmq_conf(
    *,
    amqp_listeners: Iterable[str],
    amqp_port: int,
    management_address: str,
    management_port: int,
    node_address: str,
    loopback_users: Iterable[str],
    tls: Optional[TlsListeners] = None,
    consumer_timeout_ms: Optional[int] = None,
    memory_high_watermark: Optional[float] = None,
    clustered: bool = False,
    prometheus_port: Optional[int] = None,
    prometheus_address: Optional[str] = None,
) -> str:
    """rabbitmq.conf: AMQP and management on the given addresses only, loopback-only users.

    With `tls`, the given addresses get TLS listeners and the plain ones move to loopback
    (where the workers and Flower on the broker host connect). With `prometheus_port`,
    rabbitmq_prometheus listens like the management API, on `prometheus_address` (default
    `management_address`)."""
    amqp_listeners = list(amqp_listeners)
    plain_amqp = [a for a in amqp_listeners if ipaddress.ip_address(a).is_loopback] if tls else amqp_listeners
    plain_management = LOOPBACK if tls else management_address
    lines = ["# Written by edd-infra; changes here are overwritten by the next `pulumi up`."]
    lines += [f"listeners.tcp.{i} = {_listener(a, amqp_port)}" for i, a in enumerate(plain_amqp, 1)]
    if not plain_amqp:
        lines.append("listeners.tcp = none")
    lines += [
        f"management.tcp.ip = {plain_management}",
        f"management.tcp.port = {management_port}",
        f"distribution.listener.interface = {node_address}",
    ]
    prometheus_address = prometheus_address or management_address
    if prometheus_port is not None:
        lines += [
            f"prometheus.tcp.ip = {LOOPBACK if tls else prometheus_address}",
            f"prometheus.tcp.port = {prometheus_port}",
        ]
    for user in loopback_users:
        if not KEY_WORD.fullmatch(user):
            raise ValueError(
                f"loopback_users.{user}: a user name in a rabbitmq.conf key may hold only letters, digits, '_' and '-'"
            )
        lines.append(f"loopback_users.{user} = true")
    # Password mechanisms only (RabbitMQ 4 also offers ANONYMOUS, a login without one).
    lines += ["auth_mechanisms.1 = PLAIN", "auth_mechanisms.2 = AMQPLAIN"]
    if consumer_timeout_ms is not None:
        # A delivery not acked within this closes its channel: longer than any task may run.
        lines.append(f"consumer_timeout = {consumer_timeout_ms}")
    if memory_high_watermark is not None:
        # RabbitMQ's production checklist: the node blocks publishers at this share of the
        # host's memory, and at a free disk below as much (not the 50 MB default), so a node
        # that must page its messages out to disk still has room to.
        lines += [
            f"vm_memory_high_watermark.relative = {memory_high_watermark}",
            f"disk_free_limit.relative = {memory_high_watermark}",
        ]
    if clustered:
        # A node cut off from the majority pauses instead of serving a split cluster.
        lines.append("cluster_partition_handling = pause_minority")
    if tls:
        lines += _tls_lines(tls, amqp_listeners, management_address, prometheus_address)
    return "\n".join(lines) + "\n"


RABBITMQ4_CONF_PATH = "/etc/rabbitmq/conf.d/20-edd-infra-rabbitmq4.conf"


def render_rabbitmq4_conf() -> str:
    """Settings only RabbitMQ 4.0+ knows (3.x refuses to boot on an unknown key): the
    ANONYMOUS mechanism's user, so no login without a password exists even if a later
    auth_mechanisms list brought the mechanism back."""
    return "# Written by edd-infra: RabbitMQ 4.0 and newer only.\nanonymous_login_user = none\n"


def render_enabled_plugins(plugins: Iterable[str] = ("rabbitmq_management", "rabbitmq_prometheus")) -> str:
    """enabled_plugins, an Erlang term list."""
    return "[" + ",".join(plugins) + "].\n"


def render_rabbitmq_env(node_name: str, inter_node_tls: Optional[str] = None) -> str:
    """rabbitmq-env.conf, read by the server and by rabbitmqctl alike: the node name, with
    Erlang long names when its host part has dots (`rabbit@10.0.0.2`, a cluster node).

    With `inter_node_tls` (the path of `render_inter_node_tls`'s file), Erlang distribution runs
    over TLS for the node (SERVER_ADDITIONAL_ERL_ARGS) and for every CLI tool (CTL_ERL_ARGS:
    rabbitmqctl, rabbitmq-diagnostics, rabbitmq-upgrade, rabbitmq-queues): a node with TLS
    distribution refuses a CLI tool without it."""
    longname = "USE_LONGNAME=true\n" if "." in node_name.split("@", 1)[1] else ""
    text = f"# Written by edd-infra.\nNODENAME={node_name}\n{longname}"
    if inter_node_tls:
        if not re.fullmatch(r"/[A-Za-z0-9_./-]+", inter_node_tls):
            raise ValueError(f"inter-node TLS options file: a plain absolute path, got {inter_node_tls!r}")
        args = f"-proto_dist inet_tls -ssl_dist_optfile {inter_node_tls}"
        text += f'SERVER_ADDITIONAL_ERL_ARGS="{args}"\nCTL_ERL_ARGS="{args}"\n'
    return text


INTER_NODE_TLS_PATH = f"{TLS_DIR}/inter_node_tls.config"
# What rabbitmq-env.conf holds when distribution is TLS (host_scripts tells the modes apart by it).
INTER_NODE_TLS_MARK = "-proto_dist inet_tls"


def _erlang_string(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", text):
        raise ValueError(f"not a plain path for an Erlang string: {text!r}")
    return f'"{text}"'


def render_inter_node_tls(tls: TlsListeners) -> str:
    """The `-ssl_dist_optfile` of Erlang's TLS distribution (an Erlang term file): both ends
    present the broker's certificate and key and require the other's, signed by the stack's CA
    (`verify_peer` as client and server, `fail_if_no_peer_cert` as server). As client, Erlang
    also checks that the certificate names the host part of the node name it dials
    (`rabbit@<address>`) as a DNS name (config_errors.inter_node_certificate_problems)."""
    files = [
        f"{{cacertfile, {_erlang_string(tls.ca_path)}}}",
        f"{{certfile, {_erlang_string(tls.cert_path)}}}",
        f"{{keyfile, {_erlang_string(tls.key_path)}}}",
        "{secure_renegotiate, true}",
        "{verify, verify_peer}",
    ]
    server = ",\n    ".join([*files, "{fail_if_no_peer_cert, true}"])
    client = ",\n    ".join(files)
    return (
        "%% Written by edd-infra: Erlang distribution over TLS (rabbitmq-env.conf names this file).\n"
        f"[{{server, [\n    {server}\n  ]}},\n {{client, [\n    {client}\n  ]}}].\n"
    )


def _epmd_addresses(node_address: str) -> list[str]:
    # Loopback always: RabbitMQ's prelaunch and CLI nodes are `<name>@localhost` short names.
    return list(dict.fromkeys([LOOPBACK, node_address]))


def render_epmd_environment(node_address: str) -> dict[str, str]:
    """Environment for the broker's service so an epmd it starts binds only there (and loopback)."""
    return {"ERL_EPMD_ADDRESS": ",".join(_epmd_addresses(node_address))}


def epmd_socket_listen(node_address: str, port: int = 4369) -> list[tuple[str, str]]:
    """Debian socket-activates epmd on every address (epmd.socket): listen only there and on loopback."""
    return [("ListenStream", "")] + [("ListenStream", _socket_address(a, port)) for a in _epmd_addresses(node_address)]
