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
    assert password_matches(hash_password("test12", salt, "rabbit_password_hashing_sha512"), "test12",
                            "rabbit_password_hashing_sha512")


@pytest.mark.parametrize("stored", ["", "not base64!", base64.b64encode(b"abc").decode()])
def test_malformed_or_empty_hashes_never_match(stored):
    assert not password_matches(stored, "")


def test_unknown_algorithm_never_matches():
    assert not password_matches(hash_password("x", b"1234"), "x", "rabbit_password_hashing_unknown")


class FakeManagementApi(BaseHTTPRequestHandler):
    users: list = []
    admin = ("edd-infra-admin", "adm pw")
    requests: list = []

    def do_GET(self):  # noqa: N802
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
    return {"name": name, "password_hash": hash_password(password, os.urandom(4)),
            "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}


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
