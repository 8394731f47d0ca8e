"""Broker URLs carry any printable password through kombu's and Flower's own parsers."""

from urllib.parse import unquote, urlparse

import pytest
from flower.utils.broker import RabbitMQ
from kombu import Connection

from edd_infra.render.broker_urls import amqp_url, management_api_url, management_endpoint
from tests.unit.samples import HOSTILE_PASSWORDS


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_kombu_reads_back_user_password_and_vhost(password):
    conn = Connection(amqp_url("edd_user", password, "127.0.0.1", 5672, "/edd"))
    assert (conn.transport_cls, conn.hostname, conn.port) == ("amqp", "127.0.0.1", 5672)
    assert (conn.userid, conn.password, conn.virtual_host) == ("edd_user", password, "/edd")


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_flower_reads_back_broker_api_credentials_and_vhost(password):
    broker_url = amqp_url("edd_user", "x", "127.0.0.1", 5672, "/edd")
    api = management_api_url("bunny", password, "127.0.0.1", 15672)
    broker = RabbitMQ(broker_url, api)
    # Flower quotes the vhost from the path once: `//edd` must come out as %2Fedd, not %252Fedd.
    assert broker.vhost == "%2Fedd"
    parsed = urlparse(broker.http_api)
    assert (unquote(parsed.username), unquote(parsed.password)) == ("bunny", password)
    assert parsed.path == "/api/"


def test_ipv6_hosts_are_bracketed():
    assert amqp_url("u", "p", "::1", 5672, "/edd") == "amqp://u:p@[::1]:5672//edd"
    assert management_endpoint("::1", 15672) == "http://[::1]:15672"
    assert Connection(amqp_url("u", "p", "::1", 5672, "/edd")).hostname == "::1"


def test_password_never_appears_unquoted():
    url = amqp_url("edd_user", "a;b#c", "127.0.0.1", 5672, "/edd")
    assert "a;b#c" not in url and ";" not in url and "#" not in url
