"""rabbitmq.conf: listeners on loopback only, loopback users, epmd and distribution bound."""

from edd_infra.render.rabbitmq_conf import (
    TlsListeners,
    epmd_socket_listen,
    render_enabled_plugins,
    render_epmd_environment,
    render_rabbitmq_conf,
)
from edd_infra.settings import Tasks
from tests.unit.golden import assert_golden


def parse_conf(text):
    pairs = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" = ")
            assert key and value, f"not a `key = value` line: {line!r}"
            assert key not in pairs, f"duplicate key {key}"
            pairs[key] = value
    return pairs


def seed_conf():
    return render_rabbitmq_conf(
        amqp_listeners=["127.0.0.1", "::1"],
        amqp_port=5672,
        management_address="127.0.0.1",
        management_port=15672,
        node_address="127.0.0.1",
        loopback_users=["guest", "edd_user"],
        consumer_timeout_ms=Tasks().consumer_timeout_ms,
        memory_high_watermark=0.4,
        prometheus_port=15692,
    )


def test_seed_listeners_and_loopback_users():
    conf = parse_conf(seed_conf())
    assert conf == {
        "listeners.tcp.1": "127.0.0.1:5672",
        "listeners.tcp.2": "::1:5672",  # unbracketed: RabbitMQ refuses [::1]:5672
        "management.tcp.ip": "127.0.0.1",
        "management.tcp.port": "15672",
        "distribution.listener.interface": "127.0.0.1",
        # rabbitmq_prometheus beside the management API, on the same address only.
        "prometheus.tcp.ip": "127.0.0.1",
        "prometheus.tcp.port": "15692",
        "loopback_users.guest": "true",
        "loopback_users.edd_user": "true",
        # Password logins only: no ANONYMOUS mechanism (RabbitMQ 4 offers it by default).
        "auth_mechanisms.1": "PLAIN",
        "auth_mechanisms.2": "AMQPLAIN",
        # An unacked delivery closes its channel only after the hard time limit (3600 s) + 60 s.
        "consumer_timeout": "3660000",
        # Production defaults: publishers blocked at 40 % of memory, or below as much free disk.
        "vm_memory_high_watermark.relative": "0.4",
        "disk_free_limit.relative": "0.4",
    }


def test_golden():
    assert_golden("rabbitmq.conf", seed_conf())


def test_epmd_socket_brackets_ipv6():
    assert epmd_socket_listen("::1") == [
        ("ListenStream", ""),
        ("ListenStream", "127.0.0.1:4369"),
        ("ListenStream", "[::1]:4369"),
    ]
    assert epmd_socket_listen("127.0.0.1") == [("ListenStream", ""), ("ListenStream", "127.0.0.1:4369")]


def test_epmd_listens_on_loopback_too_for_rabbitmqs_localhost_helper_nodes():
    assert epmd_socket_listen("10.0.0.2")[1:] == [("ListenStream", "127.0.0.1:4369"), ("ListenStream", "10.0.0.2:4369")]
    assert render_epmd_environment("10.0.0.2") == {"ERL_EPMD_ADDRESS": "127.0.0.1,10.0.0.2"}


def test_plugins_and_epmd():
    assert render_enabled_plugins() == "[rabbitmq_management,rabbitmq_prometheus].\n"
    assert render_epmd_environment("127.0.0.1") == {"ERL_EPMD_ADDRESS": "127.0.0.1"}


def test_tls_moves_plain_listeners_to_loopback_and_adds_tls_ones():
    conf = render_rabbitmq_conf(
        amqp_listeners=["127.0.0.1", "::1", "10.0.0.2"],
        amqp_port=5672,
        management_address="10.0.0.2",
        management_port=15672,
        node_address="127.0.0.1",
        loopback_users=["guest"],
        tls=TlsListeners(amqp_port=5671, management_port=15671, prometheus_port=15691),
        prometheus_port=15692,
    )
    lines = conf.splitlines()
    assert [line for line in lines if line.startswith("listeners.tcp.")] == [
        "listeners.tcp.1 = 127.0.0.1:5672",
        "listeners.tcp.2 = ::1:5672",
    ]
    assert [line for line in lines if line.startswith("listeners.ssl.")] == [
        "listeners.ssl.1 = 127.0.0.1:5671",
        "listeners.ssl.2 = ::1:5671",
        "listeners.ssl.3 = 10.0.0.2:5671",
    ]
    assert "management.tcp.ip = 127.0.0.1" in lines and "management.ssl.ip = 10.0.0.2" in lines
    assert "management.ssl.port = 15671" in lines
    assert "ssl_options.keyfile = /etc/rabbitmq/tls/key.pem" in lines
    assert "management.ssl.certfile = /etc/rabbitmq/tls/cert.pem" in lines
    # Metrics like the management API: plain on loopback, HTTPS with the stack's certificate outside.
    assert [line for line in lines if line.startswith("prometheus.")] == [
        "prometheus.tcp.ip = 127.0.0.1",
        "prometheus.tcp.port = 15692",
        "prometheus.ssl.ip = 10.0.0.2",
        "prometheus.ssl.port = 15691",
        "prometheus.ssl.cacertfile = /etc/rabbitmq/tls/ca.pem",
        "prometheus.ssl.certfile = /etc/rabbitmq/tls/cert.pem",
        "prometheus.ssl.keyfile = /etc/rabbitmq/tls/key.pem",
    ]


def test_cluster_member_serves_metrics_on_its_node_address():
    conf = render_rabbitmq_conf(
        amqp_listeners=["127.0.0.1", "10.0.0.3"],
        amqp_port=5672,
        management_address="127.0.0.1",
        management_port=15672,
        node_address="10.0.0.3",
        loopback_users=["guest"],
        tls=TlsListeners(5671, 15671, 15691),
        prometheus_port=15692,
        prometheus_address="10.0.0.3",
    )
    lines = conf.splitlines()
    assert "management.ssl.ip = 127.0.0.1" in lines
    assert "prometheus.tcp.ip = 127.0.0.1" in lines and "prometheus.ssl.ip = 10.0.0.3" in lines


def test_tls_with_only_public_listeners_turns_plain_amqp_off():
    conf = render_rabbitmq_conf(
        amqp_listeners=["10.0.0.2"],
        amqp_port=5672,
        management_address="10.0.0.2",
        management_port=15672,
        node_address="127.0.0.1",
        loopback_users=[],
        tls=TlsListeners(5671, 15671),
    )
    assert "listeners.tcp = none" in conf.splitlines()


# cuttlefish's key grammar (conf_parse.peg): `key <- word ("." word)*`, `word <- ("\\." / [A-Za-z0-9_-])+`.
CUTTLEFISH_KEY = __import__("re").compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def broker_confs():
    """rabbitmq.conf for the unit tests' sample stack in its shapes: seed, TLS, cluster member."""
    from edd_infra.components.rabbit_broker import broker_files
    from edd_infra.settings import BrokerTls, StackSettings
    from tests.unit.samples import sample_raw

    settings = StackSettings.model_validate(sample_raw(appUser={"name": "Edd_app-user-2"}))
    tls = settings.broker.model_copy(update={"tls": BrokerTls(ca_file="ca.pem", cert_file="server.pem")})
    for broker in (settings.broker, tls):
        files = broker_files(broker, ["guest", settings.app_user.name], ("CA", "CERT"), 1000, clustered=True)
        yield next(f.text for f in files if f.path == "/etc/rabbitmq/rabbitmq.conf")


def test_every_rendered_key_fits_cuttlefish_key_syntax():
    """A name written into a key (loopback_users.<name>) is one key word: RabbitMQ reads the file with
    cuttlefish, which splits keys at "." and knows no other sign."""
    for text in broker_confs():
        for key in parse_conf(text):
            assert CUTTLEFISH_KEY.fullmatch(key), key
        assert "loopback_users.Edd_app-user-2" in parse_conf(text)


def test_a_name_that_is_no_key_word_is_refused_before_rendering():
    import pytest
    from pydantic import ValidationError

    from edd_infra.settings import AppUser

    for name in ("edd.user", "edd user", "edd@x", "ed\u00fc", "a=b", ""):
        with pytest.raises(ValidationError, match="loopback_users.<name>"):
            AppUser(name=name)
        with pytest.raises(ValueError, match="may hold only letters"):
            render_rabbitmq_conf(
                amqp_listeners=["127.0.0.1"],
                amqp_port=5672,
                management_address="127.0.0.1",
                management_port=15672,
                node_address="127.0.0.1",
                loopback_users=["guest", name],
            )
