"""RabbitMQ's new-format rabbitmq.conf and the environment that binds epmd.

The seed's "listen only on localhost" and "loopback_users" steps, in the sysctl-like
format RabbitMQ 3.7+ reads. An explicit `loopback_users` entry replaces the default list,
so guest is named again even though the program deletes it.
"""

from __future__ import annotations

from typing import Iterable


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
) -> str:
    """rabbitmq.conf: AMQP and management on the given addresses only, loopback-only users."""
    lines = ["# Written by edd-infra; changes here are overwritten by the next `pulumi up`."]
    lines += [f"listeners.tcp.{i} = {_listener(a, amqp_port)}" for i, a in enumerate(amqp_listeners, 1)]
    lines += [
        f"management.tcp.ip = {management_address}",
        f"management.tcp.port = {management_port}",
        f"distribution.listener.interface = {node_address}",
    ]
    lines += [f"loopback_users.{user} = true" for user in loopback_users]
    return "\n".join(lines) + "\n"


def render_enabled_plugins(plugins: Iterable[str] = ("rabbitmq_management",)) -> str:
    """enabled_plugins, an Erlang term list."""
    return "[" + ",".join(plugins) + "].\n"


def render_rabbitmq_env(node_name: str) -> str:
    """rabbitmq-env.conf, read by the server and by rabbitmqctl alike: the node name."""
    return f"# Written by edd-infra.\nNODENAME={node_name}\n"


def render_epmd_environment(node_address: str) -> dict[str, str]:
    """Environment for the broker's service so an epmd it starts binds only there."""
    return {"ERL_EPMD_ADDRESS": node_address}


def epmd_socket_listen(node_address: str, port: int = 4369) -> list[tuple[str, str]]:
    """Debian socket-activates epmd on every address (epmd.socket): listen only here."""
    return [("ListenStream", ""), ("ListenStream", _socket_address(node_address, port))]
