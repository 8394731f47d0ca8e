"""Broker URLs carry any printable password through kombu's and Flower's own parsers."""

from urllib.parse import urlparse

import pytest
from flower.utils.broker import RabbitMQ
from kombu import Connection

from edd_infra.render.broker_urls import amqp_url, flower_broker_api, management_endpoint
from tests.unit.samples import HOSTILE_PASSWORDS


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_kombu_reads_back_user_password_and_vhost(password):
    conn = Connection(amqp_url("edd_user", password, "127.0.0.1", 5672, "/edd"))
    assert (conn.transport_cls, conn.hostname, conn.port) == ("amqp", "127.0.0.1", 5672)
    assert (conn.userid, conn.password, conn.virtual_host) == ("edd_user", password, "/edd")


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_flower_logs_in_to_the_management_api_with_the_exact_password(password):
    broker = RabbitMQ(amqp_url("bunny", password, "127.0.0.1", 5672, "/edd"), flower_broker_api("127.0.0.1", 15672))
    # Flower quotes the vhost from the path once: `//edd` must come out as %2Fedd, not %252Fedd.
    assert broker.vhost == "%2Fedd"
    # No userinfo in broker_api: tornado would send it still quoted. Flower then uses these.
    assert urlparse(broker.http_api).username is None
    assert (broker.username, broker.password) == ("bunny", password)
    assert broker.http_api == "http://127.0.0.1:15672/api/"


def test_ipv6_hosts_are_bracketed():
    assert amqp_url("u", "p", "::1", 5672, "/edd") == "amqp://u:p@[::1]:5672//edd"
    assert management_endpoint("::1", 15672) == "http://[::1]:15672"
    assert Connection(amqp_url("u", "p", "::1", 5672, "/edd")).hostname == "::1"


def test_password_never_appears_unquoted():
    url = amqp_url("edd_user", "a;b#c", "127.0.0.1", 5672, "/edd")
    assert "a;b#c" not in url and ";" not in url and "#" not in url
