"""Bad stack config: one message per problem, naming the Pulumi config key and what is allowed."""

import pytest

from edd_infra.config_errors import ConfigError, secret_problems, validate
from tests.unit.samples import DELETE, sample_raw, with_changes


def problems_for(raw):
    settings, problems = validate(raw)
    return problems


def test_sample_is_valid():
    settings, problems = validate(sample_raw())
    assert problems == []
    assert settings.vhost == "/edd"
    assert settings.app_user.name == "edd_user"
    assert settings.flower_broker_user.profile == "monitoring"
    assert settings.broker.amqp_listeners == ["127.0.0.1", "::1"]


def mutate(path, value):
    return with_changes(sample_raw(), [(path, DELETE if value is KeyError else value)])


CASES = [
    (("workers", 0, "concurcency"), 4, "edd-infra:workers[0].concurcency: unknown key; allowed here:"),
    (("workers", 0, "concurrency"), "four", "edd-infra:workers[0].concurrency:"),
    (("workers", 0, "concurrency"), 0, "edd-infra:workers[0].concurrency: Input should be greater than or equal to 1"),
    (("hosts", "queue", "address"), "bad host!", "edd-infra:hosts.queue.address:"),
    (("hosts", "queue", "port"), 70000, "edd-infra:hosts.queue.port: Input should be less than or equal to 65535"),
    (
        ("hosts", "queue", "serviceManager"),
        "upstart",
        "edd-infra:hosts.queue.serviceManager: Input should be 'systemd' or 'launchd'",
    ),
    (("vhost",), "edd", "edd-infra:vhost: must match ^/"),
    (
        ("appUser",),
        {"permissions": {"read": "(unclosed"}},
        "edd-infra:appUser.permissions.read: must be a regular expression that compiles",
    ),
    (("broker", "amqpListeners"), ["localhost"], "edd-infra:broker.amqpListeners[0]: must be an IPv4 or IPv6 address"),
    (("broker",), KeyError, "edd-infra:broker: required, not set"),
    (("flower", "port"), "5555", "edd-infra:flower.port: Input should be a valid integer"),
    # A bad host name is reported at its own key, not at a pydantic "[key]" marker.
    (
        ("hosts", "Queue_1"),
        {"address": "192.0.2.11", "hostKey": "ssh-ed25519 AAAA"},
        "edd-infra:hosts.Queue_1: the name must match ^[a-z][a-z0-9-]{0,62}$ (got 'Queue_1')",
    ),
    (
        ("hosts", "queue", "adress"),
        "192.0.2.10",
        "edd-infra:hosts.queue.adress: unknown key; allowed here: address, connection, hostKey, port, serviceManager",
    ),
    (("hosts", "queue", "address"), "192.0.2.300", "edd-infra:hosts.queue.address: must be a DNS host name or an IP"),
    (("hosts", "queue", "address"), "192.0.2", "edd-infra:hosts.queue.address: must be a DNS host name or an IP"),
    (("broker", "managementUrl"), "http://127.0.0.1:156720", "edd-infra:broker.managementUrl: must be http(s)://host"),
    (("broker", "managementUrl"), "http://127.0.0.1:0", "edd-infra:broker.managementUrl: must be http(s)://host"),
    (("broker", "managementUrl"), "http://:15672", "edd-infra:broker.managementUrl: must be http(s)://host"),
    (("broker", "managementUrl"), "http://mq_1:15672", "edd-infra:broker.managementUrl: must be http(s)://host"),
    (("flower", "urlPrefix"), "/flower", "edd-infra:flower.urlPrefix: must match"),
    (
        ("broker", "managementPort"),
        5672,
        "edd-infra:broker.managementPort: 127.0.0.1:5672 is also edd-infra:broker.amqpListeners[0]",
    ),
    (
        ("broker", "amqpListeners"),
        ["::1", "::1"],
        "edd-infra:broker.amqpListeners[1]: [::1]:5672 is also edd-infra:broker.amqpListeners[0]",
    ),
    (("flower", "port"), 15672, "edd-infra:flower.port: 127.0.0.1:15672 is also edd-infra:broker.managementPort"),
    (
        ("eddSettings",),
        {"host": "queue", "restartUnits": ["edd web"]},
        "edd-infra:eddSettings.restartUnits[0]: must match",
    ),
    (
        ("tasks",),
        {"softTimeLimit": 600, "timeLimit": 600},
        "edd-infra:tasks: softTimeLimit (600 s) must be below timeLimit (600 s)",
    ),
    (("tasks",), {"timeLimit": 0}, "edd-infra:tasks.timeLimit: Input should be greater than or equal to 2"),
]


@pytest.mark.parametrize("path,value,expected", CASES, ids=[".".join(map(str, c[0])) for c in CASES])
def test_each_bad_value_names_its_key(path, value, expected):
    problems = problems_for(mutate(path, value))
    assert any(p.startswith(expected) for p in problems), problems


def test_unknown_key_lists_what_is_allowed():
    (problem,) = problems_for(mutate(("flower", "adress"), "127.0.0.1"))
    assert "allowed here:" in problem and "address" in problem and "urlPrefix" in problem


def test_every_problem_is_reported_at_once():
    raw = mutate(("workers", 0, "concurrency"), 0)
    raw["hosts"]["queue"]["port"] = 0
    raw["vhost"] = "edd"
    assert len(problems_for(raw)) == 3


def test_cross_key_rules():
    raw = sample_raw()
    raw["workers"] = raw["workers"] * 2
    raw["broker"] = {"host": "nowhere"}
    problems = problems_for(raw)
    assert "edd-infra:workers[1].name: duplicate worker name 'edd-worker-1' (also workers[0])" in problems
    assert any(p.startswith("edd-infra:broker.host: host 'nowhere' is not in edd-infra:hosts") for p in problems)


def test_concurrency_and_autoscale_exclude_each_other():
    problems = problems_for(mutate(("workers", 0, "concurrency"), 3))
    assert any("set concurrency or autoscale, not both" in p for p in problems)


def test_host_key_required_unless_turned_off():
    raw = sample_raw()
    del raw["hosts"]["queue"]["hostKey"]
    assert any(p.startswith("edd-infra:hosts.queue.hostKey: required") for p in problems_for(raw))
    raw["requireHostKeys"] = False
    assert problems_for(raw) == []


def test_guest_cannot_be_configured():
    problems = problems_for(sample_raw(appUser={"name": "guest"}))
    assert "edd-infra:appUser.name: 'guest' is removed from the broker; choose another name" in problems


GOOD = {"adminPassword": "a", "appPassword": "b", "flowerBrokerPassword": "c", "flowerUiPassword": "d"}
ALL_SECRET = dict.fromkeys(list(GOOD) + ["sshPrivateKey"], True)


def test_secrets_ok():
    assert secret_problems(GOOD, ALL_SECRET) == []


def test_secret_problems_name_key_never_value():
    values = dict(GOOD, appPassword="", flowerUiPassword="two\nlines", adminPassword="visible-in-plaintext")
    flags = dict(ALL_SECRET, adminPassword=False)
    problems = secret_problems(values, flags)
    assert "edd-infra:appPassword: must not be empty" in problems
    assert any(p.startswith("edd-infra:flowerUiPassword: printable characters only") for p in problems)
    assert any(p.startswith("edd-infra:adminPassword: stored in plaintext") for p in problems)
    assert not any("two" in p or "visible-in-plaintext" in p for p in problems)


def test_flower_ui_password_must_be_ascii_but_broker_passwords_need_not():
    values = dict(GOOD, flowerUiPassword="ünïcødé", appPassword="ünïcødé-密码")
    assert secret_problems(values, ALL_SECRET) == [
        "edd-infra:flowerUiPassword: printable ASCII only (Flower 2.2's basic auth fails on other characters)"
    ]


def test_missing_secret_says_how_to_set_it():
    values = {k: v for k, v in GOOD.items() if k != "appPassword"}
    assert secret_problems(values, ALL_SECRET) == [
        "edd-infra:appPassword: required, not set (pulumi config set --secret appPassword)"
    ]


def test_config_error_lists_every_problem():
    err = ConfigError(["edd-infra:a: x", "edd-infra:b: y"])
    assert "2 problem(s)" in str(err) and "  - edd-infra:b: y" in str(err)


def test_managed_broker_needs_systemd():
    raw = sample_raw()
    raw["hosts"]["queue"]["serviceManager"] = "launchd"
    (problem,) = problems_for(raw)
    assert problem.startswith("edd-infra:broker.install: 'managed' needs a systemd (Debian) host")
    raw["broker"]["install"] = "external"
    assert problems_for(raw) == []


@pytest.mark.parametrize(
    "path,value",
    [
        (("hosts", "queue", "address"), "queue.example.org"),
        (("hosts", "queue", "address"), "1.example.org"),
        (("hosts", "queue", "address"), "2001:db8::10"),
        (("broker", "managementUrl"), "http://mq.example.org"),
        (("broker", "managementUrl"), "https://[::1]:15671"),
        (("flower", "urlPrefix"), "flower/v1"),
        # Same port, different addresses: no clash.
        (("flower", "address"), "127.0.0.2"),
    ],
)
def test_good_values_next_to_the_refused_ones_are_accepted(path, value):
    raw = mutate(path, value)
    if path[-1] == "address" and path[0] == "flower":
        raw["flower"]["port"] = 5672
    assert problems_for(raw) == []


def test_listener_clashes_follow_addresses():
    raw = sample_raw()
    # Off loopback Flower needs TLS (checked below); its files are read later, at load.
    flower_tls = {"certFile": "flower.pem", "caFile": "ca.pem"}
    raw["flower"].update(address="::", port=15672, tls=flower_tls)
    assert problems_for(raw) == [
        "edd-infra:flower.port: [::]:15672 is also edd-infra:broker.managementPort; "
        "each listener needs its own address and port"
    ]
    raw["flower"]["enabled"] = False
    assert problems_for(raw) == []
    raw = sample_raw()
    raw["flower"].update(address="0.0.0.0", port=5672, tls=flower_tls)
    (problem,) = problems_for(raw)
    assert problem.startswith("edd-infra:flower.port: 0.0.0.0:5672 is also edd-infra:broker.amqpListeners[0]")
    raw["broker"]["amqpListeners"] = ["::1"]
    assert problems_for(raw) == []


def test_listener_clashes_with_tls_follow_where_rabbitmq_listens():
    # With broker.tls, plain AMQP stays on the loopback listeners and plain management on
    # 127.0.0.1; the TLS listeners take amqpListeners and managementAddress.
    raw = sample_raw()
    raw["broker"].update(
        tls={"caFile": "ca.pem", "certFile": "server.pem"},
        managementAddress="192.0.2.10",
        amqpListeners=["127.0.0.1", "192.0.2.10"],
    )
    raw["flower"].update(address="192.0.2.10", port=15672, tls={"certFile": "flower.pem"})
    assert problems_for(raw) == []
    raw["flower"]["port"] = 15671
    assert problems_for(raw) == [
        "edd-infra:flower.port: 192.0.2.10:15671 is also edd-infra:broker.tls.managementPort; "
        "each listener needs its own address and port"
    ]
    raw["flower"]["port"] = 5555
    raw["broker"]["tls"]["amqpPort"] = 5672
    assert problems_for(raw) == [
        "edd-infra:broker.tls.amqpPort: 127.0.0.1:5672 is also "
        "edd-infra:broker.amqpListeners[0]; each listener needs its own address and port"
    ]


@pytest.mark.parametrize(
    "cookie, refused",
    [
        ("QWERTYUIOPASDFGHJKLZ", "looks like the cookie Debian's rabbitmq-server generates"),  # Debian's shape
        ("c00kie" * 6, None),
        ("short", "20 to 255 letters and digits"),
    ],
)
def test_an_erlang_cookie_debian_made_is_refused_without_showing_it(cookie, refused):
    problems = secret_problems(dict(GOOD, erlangCookie=cookie), dict(ALL_SECRET, erlangCookie=True))
    if refused is None:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.startswith("edd-infra:erlangCookie: ") and refused in problem and cookie not in problem


def test_flower_has_its_own_account_by_default_and_an_explicit_user_keeps_its_old_group():
    settings, _ = validate(sample_raw())
    assert (settings.flower.user, settings.flower.group) == ("flower", "flower")
    assert (settings.workers[0].user, settings.workers[0].group) == ("celery", "celery")
    assert not settings.flower.can_send_tasks and settings.flower.tls is None
    for flower, account in [
        ({"user": "celery"}, ("celery", "celery")),
        ({"user": "bob"}, ("bob", "celery")),
        ({"user": "bob", "group": "bob"}, ("bob", "bob")),
        ({"group": "mon"}, ("flower", "mon")),
        ({"user": "flower"}, ("flower", "flower")),
        ({"tls": {}}, ("flower", "flower")),
    ]:
        raw = sample_raw()
        raw["flower"].update(flower)
        settings, problems = validate(raw)
        assert problems == [] and (settings.flower.user, settings.flower.group) == account, flower
        assert settings.flower.tls is None


def test_flower_off_loopback_without_tls_is_refused_naming_the_keys():
    raw = sample_raw()
    raw["flower"]["address"] = "192.0.2.10"
    (problem,) = problems_for(raw)
    assert problem.startswith("edd-infra:flower.address: 192.0.2.10 is not loopback, so flower.tls is required")
    assert "flower.tls.certFile" in problem and "flowerTlsKey" in problem
    raw["flower"]["enabled"] = False
    assert problems_for(raw) == []
    raw["flower"].update(enabled=True, tls={"certFile": "flower.pem"})
    assert problems_for(raw) == [
        "edd-infra:flower.tls.caFile: required without broker.tls (the CA that issued "
        "flower.tls.certFile: Flower's health check and scrapers verify it)"
    ]
    raw["flower"]["tls"]["caFile"] = "ca.pem"
    assert problems_for(raw) == []
    for loopback in ("127.0.0.1", "::1"):  # TLS stays optional on loopback
        raw = sample_raw()
        raw["flower"]["address"] = loopback
        raw["flower"]["port"] = 5556
        assert problems_for(raw) == [], loopback


def test_a_flower_tls_key_must_be_a_private_key_and_secret():
    problems = secret_problems(dict(GOOD, flowerTlsKey="not a key"), dict(ALL_SECRET, flowerTlsKey=False))
    assert problems == [
        "edd-infra:flowerTlsKey: stored in plaintext; set it with `pulumi config set --secret flowerTlsKey`",
        "edd-infra:flowerTlsKey: must be an OpenSSH or PEM private key",
    ]
