"""Offline password-hash checks and the drift read against a stand-in management API."""

import base64
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from edd_infra import broker_drift
from edd_infra.render.password_hash import hash_password, password_matches
from tests.unit.samples import HOSTILE_PASSWORDS


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_hash_round_trip_for_hostile_passwords(password):
    stored = hash_password(password, os.urandom(4))
    assert password_matches(stored, password)
    assert not password_matches(stored, password + "x")


def test_known_rabbitmq_hash():
    # Computed by hand from the documented layout: salt CAFEBABE + sha256(salt + "test12").
    salt = bytes.fromhex("cafebabe")
    expected = base64.b64encode(salt + hashlib.sha256(salt + b"test12").digest()).decode()
    assert password_matches(expected, "test12")
    assert password_matches(
        hash_password("test12", salt, "rabbit_password_hashing_sha512"), "test12", "rabbit_password_hashing_sha512"
    )


@pytest.mark.parametrize("stored", ["", "not base64!", base64.b64encode(b"abc").decode()])
def test_malformed_or_empty_hashes_never_match(stored):
    assert not password_matches(stored, "")


def test_unknown_algorithm_never_matches():
    assert not password_matches(hash_password("x", b"1234"), "x", "rabbit_password_hashing_unknown")


class FakeManagementApi(BaseHTTPRequestHandler):
    users: list = []
    admin = ("edd-infra-admin", "adm pw")
    requests: list = []

    def do_GET(self):  # http.server's name
        type(self).requests.append((self.command, self.path))
        expected = "Basic " + base64.b64encode(":".join(self.admin).encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps(self.users).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    FakeManagementApi.requests = []
    server = HTTPServer(("127.0.0.1", 0), FakeManagementApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def user(name, password):
    return {
        "name": name,
        "password_hash": hash_password(password, os.urandom(4)),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": [],
    }


def test_in_sync_broker(api):
    FakeManagementApi.users = [user("edd-infra-admin", "adm pw"), user("edd_user", "app:pw")]
    drift = broker_drift.observe(api, "edd-infra-admin", "adm pw", {"edd_user": "app:pw", "flower": "f"})
    assert drift == broker_drift.BrokerDrift(admin="ok")
    assert drift.admin_token() is None
    # One read, only GETs: nothing is changed and no user but the admin logs in.
    assert FakeManagementApi.requests == [("GET", "/api/users")]


def test_password_changed_by_hand_and_guest_back(api):
    FakeManagementApi.users = [user("edd_user", "changed by hand"), user("guest", "guest")]
    drift = broker_drift.observe(api, "edd-infra-admin", "adm pw", {"edd_user": "app:pw"})
    assert set(drift.drifted_users) == {"edd_user"} and drift.drifted_users["edd_user"].startswith("drift-")
    assert drift.guest_present
    assert drift.admin_token().startswith("guest-present-")


def test_admin_refused(api):
    drift = broker_drift.observe(api, "edd-infra-admin", "wrong", {"edd_user": "x"})
    assert drift.admin == "refused" and drift.admin_token().startswith("admin-refused-")
    # The users cannot be read with a refused admin: every account is restored in the same up.
    assert drift.user_token("edd_user") == drift.admin_token()


def test_unreachable_broker_is_unknown():
    drift = broker_drift.observe("http://127.0.0.1:9", "a", "b", {}, timeout=1)
    assert drift == broker_drift.NOT_CHECKED and drift.admin_token() is None


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://192.0.2.10:15672",
        "http://10.0.0.5:15672",
        "HTTP://edd-queue:15672",
        "http://[2001:db8::1]:15672",
        "http://0.0.0.0:15672",
    ],
)
def test_the_probe_refuses_plain_http_off_loopback_before_dialling(monkeypatch, endpoint):
    def dial(*args, **kwargs):
        raise AssertionError("the probe dialled a plain-HTTP management API off loopback")

    monkeypatch.setattr(broker_drift.urllib.request, "urlopen", dial)
    with pytest.raises(broker_drift.PlainHttpRefused) as refused:
        broker_drift.observe(endpoint, "edd-infra-admin", "adm pw", {"edd_user": "x"})
    message = str(refused.value)
    assert "plain HTTP" in message and "cleartext" in message and "broker.tls" in message
    assert "adm pw" not in message


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:15672",
        "http://[::1]:15672",
        "http://localhost:15672",
        "https://192.0.2.10:15671",
        "https://edd-queue:15671",
    ],
)
def test_the_probe_dials_loopback_and_https(endpoint):
    assert broker_drift.plain_http_problem(endpoint) is None


def drift_settings(**broker):
    from edd_infra.settings import StackSettings
    from tests.unit.samples import sample_raw

    return StackSettings.model_validate(sample_raw(broker={"host": "queue", **broker}))


@pytest.mark.parametrize("stack, refused", [("prod", True), ("prod-eu", True), ("staging", False), ("dev", False)])
def test_up_stops_before_any_change_in_prod_and_skips_the_probe_elsewhere(monkeypatch, stack, refused):
    """observe_drift runs before any resource is registered: in a prod stack plain HTTP off loopback
    stops `up` there; elsewhere `up` goes on with a warning and no probe (as the policy's levels)."""
    import asyncio

    import pulumi

    from edd_infra import program
    from edd_infra.config_errors import ConfigError

    warnings = []
    monkeypatch.setattr(pulumi.runtime, "is_dry_run", lambda: False)
    monkeypatch.setattr(pulumi, "get_stack", lambda: stack)
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: warnings.append(message))
    monkeypatch.setattr(broker_drift, "observe", lambda *a, **k: pytest.fail("the probe ran"))
    settings = drift_settings(managementAddress="192.0.2.10")
    # No secret is awaited before the refusal.
    if refused:
        with pytest.raises(ConfigError, match=r"edd-infra:broker\.managementAddress: .*plain HTTP on 192\.0\.2\.10"):
            asyncio.run(program.observe_drift(settings, None))
    else:
        assert asyncio.run(program.observe_drift(settings, None)) == broker_drift.NOT_CHECKED
        assert len(warnings) == 1 and "drift on the broker not checked" in warnings[0]


def test_the_program_and_the_policy_pack_agree_on_prod_stacks():
    import ast
    from pathlib import Path

    from edd_infra.settings import PROD_STACKS, is_prod_stack

    tree = ast.parse((Path(__file__).resolve().parents[2] / "policy" / "__main__.py").read_text())
    pack = next(
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PROD_STACKS"
    )
    assert pack == PROD_STACKS
    assert [is_prod_stack(s) for s in ("prod", "prod-eu", "production", "dev", "staging")] == [
        True,
        True,
        False,
        False,
        False,
    ]
