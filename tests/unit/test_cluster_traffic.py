"""Cluster traffic: Erlang distribution over TLS (broker.interNodeTls) and the nodes' nftables
table (broker.clusterFirewall): renderers, the config checks, the mode guard run as shell."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from edd_infra.config_errors import inter_node_certificate_problems, validate
from edd_infra.render.cluster_firewall import (
    RULES_PATH,
    TABLE_NAME,
    UNIT_NAME,
    render_cluster_table,
    render_firewall_unit,
)
from edd_infra.render.host_scripts import FileSpec, distribution_mode_guard, firewall_install, firewall_remove
from edd_infra.render.rabbitmq_conf import (
    INTER_NODE_TLS_MARK,
    INTER_NODE_TLS_PATH,
    TlsListeners,
    render_inter_node_tls,
    render_rabbitmq_env,
)
from edd_infra.settings import Broker
from tests.unit.certificates import server_certificate_pem
from tests.unit.samples import sample_raw, with_changes
from tests.unit.script_fixtures import run_script

TLS = TlsListeners(5671, 15671)


def test_inter_node_tls_options_verify_the_peer_both_ways_with_the_brokers_files():
    text = render_inter_node_tls(TLS)
    server, client = text.split("{client,")
    for section in (server, client):
        for option in (
            '{cacertfile, "/etc/rabbitmq/tls/ca.pem"}',
            '{certfile, "/etc/rabbitmq/tls/cert.pem"}',
            '{keyfile, "/etc/rabbitmq/tls/key.pem"}',
            "{verify, verify_peer}",
        ):
            assert option in section, (option, section)
    # Only a server can require the peer's certificate; a client always gets the server's.
    assert "{fail_if_no_peer_cert, true}" in server and "fail_if_no_peer_cert" not in client
    # Erlang's own hostname check stays on: nothing turns off server_name_indication.
    assert "server_name_indication" not in text and "verify_none" not in text
    assert text.rstrip().endswith("]}].")


@pytest.mark.skipif(not shutil.which("erl"), reason="erl not installed")
def test_inter_node_tls_options_are_an_erlang_term_file(tmp_path):
    path = tmp_path / "inter_node_tls.config"
    path.write_text(render_inter_node_tls(TLS))
    result = subprocess.run(
        [
            "erl",
            "-noshell",
            "-eval",
            f'{{ok, [Opts]}} = file:consult("{path}"), io:format("~p~n", [[K || {{K, _}} <- Opts]]), halt().',
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, HOME=str(tmp_path)),
    )
    assert result.stdout.strip() == "[server,client]", result.stderr


def test_the_env_file_turns_tls_distribution_on_for_the_node_and_every_cli_tool():
    plain = render_rabbitmq_env("rabbit@10.0.0.2")
    assert INTER_NODE_TLS_MARK not in plain
    text = render_rabbitmq_env("rabbit@10.0.0.2", INTER_NODE_TLS_PATH)
    args = f"-proto_dist inet_tls -ssl_dist_optfile {INTER_NODE_TLS_PATH}"
    assert text.splitlines()[1:] == [
        "NODENAME=rabbit@10.0.0.2",
        "USE_LONGNAME=true",
        f'SERVER_ADDITIONAL_ERL_ARGS="{args}"',
        f'CTL_ERL_ARGS="{args}"',
    ]
    with pytest.raises(ValueError):
        render_rabbitmq_env("rabbit@10.0.0.2", "/etc/x y")


def test_the_table_lets_only_the_peers_and_loopback_reach_the_erlang_ports():
    text = render_cluster_table(["10.0.0.4", "10.0.0.3"], [4369, 25672, (35672, 35682)])
    lines = [line.strip() for line in text.splitlines()]
    # Replaced in one transaction, whether or not the table exists yet.
    assert lines[2:5] == [f"table inet {TABLE_NAME}", f"delete table inet {TABLE_NAME}", f"table inet {TABLE_NAME} {{"]
    assert "elements = { 10.0.0.3, 10.0.0.4 }" in lines
    assert "tcp dport { 4369, 25672, 35672-35682 } jump erlang_ports" in lines
    chain = lines[lines.index("chain erlang_ports {") + 1 :]
    assert chain[:6] == [
        "ct state established,related accept",
        'iif "lo" accept',
        "ip saddr @peers_v4 accept",
        "ip6 saddr @peers_v6 accept",
        "drop",
        "}",
    ]
    # Nothing else is filtered and nothing of a site's own is touched.
    assert "policy accept;" in text and "flush" not in text and text.count("table inet") == 3


def test_the_table_takes_ipv6_peers_in_their_own_set_and_refuses_bad_ports():
    text = render_cluster_table(["fd00::3", "10.0.0.3"], [4369])
    assert "elements = { fd00::3 }" in text and "elements = { 10.0.0.3 }" in text
    assert render_cluster_table([], [4369]).count("elements") == 0  # a lone node: loopback only
    for ports in ([0], [(35682, 35672)], [70000]):
        with pytest.raises(ValueError):
            render_cluster_table(["10.0.0.3"], ports)


def test_the_unit_loads_the_table_before_epmd_and_deletes_it_when_stopped():
    unit = render_firewall_unit()
    assert f"ExecStart=/usr/sbin/nft -f {RULES_PATH}" in unit
    assert f"ExecStop=-/usr/sbin/nft delete table inet {TABLE_NAME}" in unit
    before = next(line for line in unit.splitlines() if line.startswith("Before="))
    assert {"epmd.socket", "rabbitmq-server.service", "network-pre.target"} <= set(before[7:].split())


def test_the_firewall_script_installs_nftables_checks_then_reloads_and_its_delete_stops_the_unit():
    rules, unit = FileSpec(RULES_PATH, render_cluster_table(["10.0.0.3"], [4369])), FileSpec("/etc/u.service", "u")
    text = firewall_install(rules=rules, unit=unit, unit_name=UNIT_NAME, nft="/usr/sbin/nft")
    check, reload = text.index(f"/usr/sbin/nft -c -f {RULES_PATH}"), text.index(f"reload-or-restart {UNIT_NAME}; fi")
    assert text.index("apt-get install -y -q nftables") < text.index(RULES_PATH) < check < reload
    removed = firewall_remove(paths=[RULES_PATH], unit_name=UNIT_NAME)
    assert f"systemctl disable --now -q {UNIT_NAME}" in removed and RULES_PATH in removed


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_the_new_scripts_pass_shellcheck(tmp_path):
    rules = FileSpec(RULES_PATH, render_cluster_table(["10.0.0.3"], [4369]))
    for name, text in {
        "firewall": firewall_install(
            rules=rules, unit=FileSpec("/etc/u.service", "u"), unit_name=UNIT_NAME, nft="/usr/sbin/nft"
        ),
        "guard": distribution_mode_guard(
            env_path="/etc/rabbitmq/rabbitmq-env.conf", mark=INTER_NODE_TLS_MARK, inter_node_tls=True
        ),
    }.items():
        (tmp_path / name).write_text(text)
        result = subprocess.run(["shellcheck", "-s", "sh", str(tmp_path / name)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


# (wanted interNodeTls, installed env file: None = absent, node running) -> refused
GUARD_CASES = [
    (True, None, True, False),  # a fresh node
    (True, "plain", False, False),  # every node stopped first: the runbook
    (True, "plain", True, True),  # running without: cannot roll
    (True, "tls", True, False),  # already on: a no-op
    (False, "tls", True, True),  # turning it off while running
    (False, "plain", True, False),
]


@pytest.mark.parametrize("want, installed, running, refused", GUARD_CASES)
def test_the_mode_guard_refuses_only_a_switch_on_a_running_node(tmp_path, want, installed, running, refused):
    env = tmp_path / "rabbitmq-env.conf"
    if installed:
        env.write_text(render_rabbitmq_env("rabbit@10.0.0.2", INTER_NODE_TLS_PATH if installed == "tls" else None))
    guard = distribution_mode_guard(env_path=str(env), mark=INTER_NODE_TLS_MARK, inter_node_tls=want)
    systemctl = f"exit {0 if running else 3}"
    result = run_script(f"set -eu\n{guard}\necho went-on", tmp_path, tools={"systemctl": systemctl})
    if refused:
        assert result.returncode == 1 and "went-on" not in result.stdout
        assert "cannot roll" in result.stderr and "Stop rabbitmq-server on every cluster node" in result.stderr
    else:
        assert result.returncode == 0 and "went-on" in result.stdout, result.stderr


def cluster_raw(**broker):
    raw = sample_raw()
    raw["broker"].update(broker)
    return raw


def test_inter_node_tls_without_a_cluster_is_refused_naming_the_key():
    _, problems = validate(cluster_raw(interNodeTls=True))
    assert any(p.startswith("edd-infra:broker: interNodeTls is for a cluster") for p in problems), problems
    assert Broker(host="queue").cluster_firewall and not Broker(host="queue").inter_node_tls


def test_the_erlang_ports_follow_the_amqp_port():
    broker = Broker(host="queue", amqp_port=5673)
    assert (broker.distribution_port, broker.cli_ports) == (25673, (35673, 35683))


def node_broker(tmp_path, pem: str) -> Broker:
    (tmp_path / "ca.pem").write_text(pem)
    (tmp_path / "server.pem").write_text(pem)
    return Broker(
        host="queue",
        tls={"caFile": str(tmp_path / "ca.pem"), "certFile": str(tmp_path / "server.pem")},
        amqp_listeners=["127.0.0.1", "10.0.0.2"],
        node_address="10.0.0.2",
        node_name="rabbit@10.0.0.2",
        cluster_nodes=[{"host": "n2", "address": "10.0.0.3"}],
        inter_node_tls=True,
    )


def test_a_node_certificate_must_name_every_node_address_as_dns_and_ip(tmp_path):
    good = server_certificate_pem(dns=("10.0.0.2", "10.0.0.3"), ips=("10.0.0.2", "10.0.0.3"))
    assert inter_node_certificate_problems(node_broker(tmp_path, good), tmp_path) == []
    ip_only = server_certificate_pem(ips=("10.0.0.2", "10.0.0.3"))
    problems = inter_node_certificate_problems(node_broker(tmp_path, ip_only), tmp_path)
    assert len(problems) == 1 and problems[0].startswith("edd-infra:broker.tls.certFile: with broker.interNodeTls")
    assert problems[0].endswith("missing: 10.0.0.2, 10.0.0.3")
    partly = server_certificate_pem(dns=("10.0.0.2", "10.0.0.3"), ips=("10.0.0.2",))
    assert inter_node_certificate_problems(node_broker(tmp_path, partly), tmp_path)[0].endswith("missing: 10.0.0.3")


def test_a_node_certificate_for_servers_only_is_refused(tmp_path):
    names = dict(dns=("10.0.0.2", "10.0.0.3"), ips=("10.0.0.2", "10.0.0.3"))
    server_only = server_certificate_pem(**names, usages=("serverAuth",))
    problems = inter_node_certificate_problems(node_broker(tmp_path, server_only), tmp_path)
    assert problems == [
        "edd-infra:broker.tls.certFile: with broker.interNodeTls each node uses the certificate as "
        "TLS server and as client; its extended key usage lacks clientAuth"
    ]
    both = server_certificate_pem(**names, usages=("serverAuth", "clientAuth"))
    assert inter_node_certificate_problems(node_broker(tmp_path, both), tmp_path) == []


def test_sample_without_the_keys_is_unchanged():
    settings, problems = validate(with_changes(sample_raw(), []))
    assert problems == [] and not settings.broker.inter_node_tls


# (what `rabbitmqctl enable_feature_flag all` answers, its exit status, clustered) -> the script fails (1) or not (0)
FLAG_CASES = [
    ("", 0, True, 0),
    ("Error:\nmissing_clustered_nodes", 69, True, 0),  # a node back before its peers (the runbook)
    ("Error:\nsomething else", 69, True, 1),
    ("Error:\nmissing_clustered_nodes", 69, False, 1),  # a single node has no peers to wait for
]


@pytest.mark.parametrize("answer, status, clustered, expected", FLAG_CASES)
def test_feature_flags_wait_for_the_last_node_only_when_peers_are_down(tmp_path, answer, status, clustered, expected):
    from edd_infra.render.host_scripts import enable_feature_flags

    rabbitmqctl = f"printf '%s\\n' '{answer}'\nexit {status}"
    result = run_script(f"set -eu\n{enable_feature_flags(clustered)}", tmp_path, tools={"rabbitmqctl": rabbitmqctl})
    assert (result.returncode != 0) == (expected != 0), (result.returncode, result.stderr)
    if expected == 0 and status:
        assert "the last node to start enables them" in result.stderr
