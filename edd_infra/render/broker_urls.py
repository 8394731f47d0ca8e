"""Broker URLs with passwords of any printable character.

kombu and Flower `unquote` every URL part, so user and password are percent-quoted with no
safe characters. The vhost goes into the path unquoted after a leading `/`, so `/edd` becomes
`//edd`: Flower quotes the vhost it reads from the path again, which turns `%2F` into `%252F`.
Flower's broker_api carries no credentials (see `flower_broker_api`). Vhost names are restricted to `/[A-Za-z0-9_.-]*` by the settings model, so nothing needs quoting.
"""

from __future__ import annotations

from urllib.parse import quote


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _credentials(user: str, password: str) -> str:
    return f"{quote(user, safe='')}:{quote(password, safe='')}"


def amqp_url(user: str, password: str, host: str, port: int, vhost: str, scheme: str = "amqp") -> str:
    """Celery's broker_url: amqp (or amqps) scheme, quoted user and password, host:port, then `//edd`."""
    return f"{scheme}://{_credentials(user, password)}@{_host_port(host, port)}/{vhost}"


def failover_url(urls: list[str]) -> str:
    """One broker_url for several nodes: Celery splits it at `;` and fails over in turn
    (a `;` inside a password is quoted, so it never splits)."""
    return ";".join(urls)


def flower_broker_api(host: str, port: int, scheme: str = "http") -> str:
    """`http://host:15672/api/` for Flower's broker_api, deliberately without credentials.

    Flower passes unquoted credentials to tornado, but tornado prefers the URL's own userinfo
    and sends it still percent-quoted, so a password with any quoted character gets 401.
    Without userinfo Flower logs in with its broker URL's user and password, unquoted.
    """
    return f"{scheme}://{_host_port(host, port)}/api/"


def management_endpoint(host: str, port: int, scheme: str = "http") -> str:
    """`http://host:15672` without credentials or trailing slash: the rabbitmq provider
    appends `/api/...` itself, and a doubled slash gets 405 from the management API."""
    return f"{scheme}://{_host_port(host, port)}"


def shovel_uri(user: str, password: str, host: str, port: int, vhost: str, ca_file: str) -> str:
    """The amqps URI a RabbitMQ shovel (the Erlang client) dials: the vhost percent-quoted (the
    Erlang client reads the whole path as the vhost), the peer checked against `ca_file`."""
    query = f"cacertfile={quote(ca_file, safe='/')}&verify=verify_peer"
    return f"amqps://{_credentials(user, password)}@{_host_port(host, port)}/{quote(vhost, safe='')}?{query}"
