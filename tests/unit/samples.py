"""Shared sample configuration and hostile passwords for unit tests."""

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
        "workers": [{"name": "edd-worker-1", "host": "queue", "workingDirectory": "/opt/edd/code",
                     "virtualenv": "/opt/edd/venv", "autoscale": "10,1", "extraGroups": ["www-data"]}],
        "flower": {"host": "queue", "workingDirectory": "/opt/edd/code", "virtualenv": "/opt/edd/venv"},
    }
    raw.update(overrides)
    return raw
