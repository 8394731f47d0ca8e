"""Shared sample configuration and hostile passwords for unit tests."""

import copy

# A change's value that removes the key instead of setting it.
DELETE = object()


def with_changes(raw, changes):
    """A deep copy of `raw` with each (path, value) of `changes` set, or removed for DELETE."""
    raw = copy.deepcopy(raw)
    for path, value in changes:
        target = raw
        for part in path[:-1]:
            target = target[part]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return raw


HOSTILE_PASSWORDS = [
    "plain",
    "p@ss:w/rd",
    "semi;colon#hash%percent",
    "comma,quote'double\"back\\slash",
    "with space and trailing space ",
    " leading",
    "%2F%25already-quoted",
    "?query&amp=1+plus",
    "dollar$HOME`backtick`$(whoami)",
    "ünïcødé-密码",
    "!*~()[]{}<>|^",
]


def sample_raw(**overrides):
    """A valid stack config as `pulumi.Config().get_object` returns it (camelCase keys)."""
    raw = {
        "hosts": {"queue": {"address": "192.0.2.10", "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"}},
        "broker": {"host": "queue"},
        "workers": [
            {
                "name": "edd-worker-1",
                "host": "queue",
                "workingDirectory": "/opt/edd/code",
                "virtualenv": "/opt/edd/venv",
                "autoscale": "10,1",
                "extraGroups": ["www-data"],
            }
        ],
        "flower": {"host": "queue", "workingDirectory": "/opt/edd/code", "virtualenv": "/opt/edd/venv"},
    }
    raw.update(overrides)
    return raw


# A two-node cluster with TLS, Flower on IPv6 loopback under a URL prefix: the overrides of
# `sample_raw` the scrape-target and Prometheus-config tests share.
TLS_CLUSTER = {
    "broker": {
        "host": "queue",
        "managementAddress": "10.0.0.2",
        "nodeAddress": "10.0.0.2",
        "nodeName": "rabbit@10.0.0.2",
        "tls": {"caFile": "ca.pem", "certFile": "server.pem"},
        "clusterNodes": [{"host": "n2", "address": "10.0.0.3"}],
    },
    "flower": {
        "host": "queue",
        "workingDirectory": "/opt/edd/code",
        "virtualenv": "/opt/edd/venv",
        "address": "::1",
        "urlPrefix": "flower",
    },
}
