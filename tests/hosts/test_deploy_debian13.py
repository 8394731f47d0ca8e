"""The core suite (tests/hosts/deploy_suite.py) on Debian 13: trixie, RabbitMQ 4.0."""

from tests.hosts.deploy_suite import *  # noqa: F403 - the suite's tests and fixture

DEBIAN = 13
