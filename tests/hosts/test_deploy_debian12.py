"""The core suite (tests/hosts/deploy_suite.py) on Debian 12: bookworm, RabbitMQ 3.10."""

from tests.hosts.deploy_suite import *  # noqa: F403 - the suite's tests and fixture

DEBIAN = 12
