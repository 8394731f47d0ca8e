"""Cluster traffic: a 3-node cluster (seed edd-ct1 with the worker, nodes edd-ct2 and edd-ct3)
with broker.interNodeTls on and the nodes' firewall tables, and a fourth network host, edd-ctx,
that is not a node.

Proves: the cluster forms and the quorum queue replicates over TLS distribution, and the CLI
tools reach their node over it (a CLI tool without TLS distribution is refused); epmd (4369),
distribution (25672) and the CLI range (35672) are dropped for edd-ctx and reachable from the
other nodes; a message body replicated between the nodes never crosses their links in
plaintext while TLS records do, with a control (the same capture sees that body in plaintext
on the seed's loopback, where it was published over plain AMQP); `destroy` removes the tables.

Captures are raw AF_PACKET sockets (a small script, `CAPTURE`, run on this machine for the
nodes' `ve-*` links and in the seed's network namespace for its loopback), each stopped by its
PID, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid

import pytest

from sandbox import hosts as sandbox_hosts
from edd_infra.settings import AppUser
from sandbox.image import VENV
from tests.hosts.deployment import deployment, print_figures, print_line

pytestmark = pytest.mark.hosts
SEED, NODES, OUTSIDER = "edd-ct1", ("edd-ct2", "edd-ct3"), "edd-ctx"
ERLANG_PORTS = (4369, 25672, 35672)
FIGURES: dict[str, float] = {}
TABLE_GONE: dict[str, str] = {}


@pytest.fixture(scope="module")
def cluster(plugins_ready, sandbox_hosts, tmp_path_factory, request):
    seed, *nodes, outsider = sandbox_hosts(SEED, *NODES, OUTSIDER)
    try:
        with deployment(
            seed, tmp_path_factory.mktemp("cluster-tls"), prefix="ct", hardened=True, broker_nodes=tuple(nodes)
        ) as d:
            d.nodes, d.outsider = nodes, outsider
            FIGURES["fresh up, 3 nodes with inter-node TLS"] = d.fresh_up_seconds
            yield d
        # `destroy` (when the block ended) stopped each node's firewall unit: its table is gone.
        TABLE_GONE.update(tables_left(seed, *nodes))
    finally:
        print_figures(request, "cluster-tls", FIGURES)
    assert TABLE_GONE == {}, f"nftables table inet edd_infra left after destroy: {TABLE_GONE}"


def tables_left(*hosts) -> dict[str, str]:
    """The hosts that still have the program's nftables table, with what it holds."""
    left = {}
    for host in hosts:
        result = sandbox_hosts.run(host, "nft list table inet edd_infra", timeout=60)
        if result.returncode == 0:
            left[host.name] = result.stdout
    return left


def sh(host, command: str, timeout: float = 180, input: str | None = None) -> str:
    result = sandbox_hosts.run(host, command, timeout=timeout, input=input)
    assert result.returncode == 0, f"{host.name}: {command}: {result.stderr[-800:]}"
    return result.stdout


def running_nodes(host) -> list[str]:
    return sorted(json.loads(sh(host, "rabbitmqctl -q cluster_status --formatter json"))["running_nodes"])


def node_names(*hosts) -> list[str]:
    return sorted(f"rabbit@{h.address}" for h in hosts)


def test_the_cluster_forms_and_the_quorum_queue_replicates_over_tls_distribution(cluster):
    d = cluster
    nodes = (d.host, *d.nodes)
    everyone = node_names(*nodes)
    for host in nodes:
        # The CLI reaches its node (over TLS distribution, or it would be refused: see below).
        assert running_nodes(host) == everyone, host.name
        # The node itself runs distribution over TLS.
        proto = sh(host, "rabbitmqctl -q eval 'init:get_argument(proto_dist).'").strip()
        assert proto == '{ok,[["inet_tls"]]}', (host.name, proto)
    queue = next(
        q
        for q in json.loads(sh(d.host, "rabbitmqctl -q list_queues -p /edd name type members --formatter json"))
        if q["name"] == "edd"
    )
    assert (queue["type"], sorted(queue["members"])) == ("quorum", everyone)


def test_a_cli_tool_without_tls_distribution_is_refused(cluster):
    """The control for the test above: the CLI with plain distribution (RABBITMQ_CTL_ERL_ARGS set,
    so rabbitmq-env.conf's CTL_ERL_ARGS is not used) cannot talk to the node."""
    d = cluster
    host = d.nodes[0]
    plain = sandbox_hosts.run(host, "RABBITMQ_CTL_ERL_ARGS=-hidden rabbitmq-diagnostics -q -t 15 ping", timeout=120)
    assert plain.returncode != 0, plain.stdout
    assert sandbox_hosts.run(host, "rabbitmq-diagnostics -q -t 15 ping", timeout=120).returncode == 0


# Tries a TCP connection to each (address, port) of argv[1] (JSON), 3 s each, in parallel;
# prints {"address:port": "open" | "refused" | "timeout" | error}.
PROBE = """import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    address, port = target
    try:
        socket.create_connection((address, port), timeout=3).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as error:
        return type(error).__name__
targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps({f"{a}:{p}": r for (a, p), r in zip(targets, pool.map(probe, targets))}))
"""


def probe(host, targets: list[tuple[str, int]]) -> dict[str, str]:
    out = sh(host, f"python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(targets))}", timeout=60)
    return json.loads(out.splitlines()[-1])


# Listens on the first CLI port (the node's CLI tools then take the next one) until killed.
LISTENER = "import socket, time; s = socket.create_server(('0.0.0.0', 35672)); s.listen(); time.sleep(600)"


def test_erlang_ports_are_dropped_for_a_fourth_host_and_open_to_the_other_nodes(cluster):
    d = cluster
    nodes = (d.host, *d.nodes)
    peers = {h.name: sorted(n.address for n in nodes if n is not h) for h in nodes}
    for host in nodes:
        table = sh(host, "nft -j list table inet edd_infra")
        elements = [
            item["set"].get("elem", [])
            for item in json.loads(table)["nftables"]
            if "set" in item and item["set"]["name"] == "peers_v4"
        ][0]
        assert sorted(elements) == peers[host.name], (host.name, elements)
    # Something listens on 35672 on every node, so "open" there means the firewall let it through.
    listeners = {}
    try:
        for host in nodes:
            listeners[host.name] = sh(
                host, f"nohup python3 -c {shlex.quote(LISTENER)} >/dev/null 2>&1 & echo $!"
            ).strip()
        time.sleep(1)
        targets = [(h.address, port) for h in nodes for port in (*ERLANG_PORTS, 5671)]
        outside = probe(d.outsider, targets)
        for h in nodes:
            for port in ERLANG_PORTS:
                assert outside[f"{h.address}:{port}"] == "timeout", (h.name, port, outside)
            # The control: edd-ctx does reach the nodes (AMQP over TLS is for everyone).
            assert outside[f"{h.address}:5671"] == "open", (h.name, outside)
        for host in nodes:
            inside = probe(host, [(n.address, port) for n in nodes if n is not host for port in ERLANG_PORTS])
            assert set(inside.values()) == {"open"}, (host.name, inside)
    finally:
        for host in nodes:
            if listeners.get(host.name, "").isdigit():
                sandbox_hosts.run(host, f"kill {listeners[host.name]}", timeout=30)


# Records TCP segments to or from argv[2]'s ports (comma-separated) seen on the interfaces of
# argv[1] (comma-separated) as JSON lines in argv[3] until SIGTERM; prints "ready" once listening.
CAPTURE = r"""import json, signal, socket, struct, sys
interfaces, ports, out = set(sys.argv[1].split(",")), {int(p) for p in sys.argv[2].split(",")}, sys.argv[3]
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
sock.settimeout(0.2)
running = True
def stop(*_):
    global running
    running = False
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
with open(out, "w") as f:
    while running:
        try:
            frame, where = sock.recvfrom(65535)
        except socket.timeout:
            continue
        if where[0] not in interfaces or len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        if ip[9] != 6:
            continue
        tcp = ip[(ip[0] & 0x0F) * 4:struct.unpack("!H", ip[2:4])[0]]
        sport, dport = struct.unpack("!HH", tcp[:4])
        if sport not in ports and dport not in ports:
            continue
        payload = tcp[(tcp[12] >> 4) * 4:]
        f.write(json.dumps({"if": where[0], "src": socket.inet_ntoa(ip[12:16]), "dst": socket.inet_ntoa(ip[16:20]),
                            "sport": sport, "dport": dport, "data": payload.hex()}) + "\n")
        f.flush()
"""


class Capture:
    """A CAPTURE process (on this machine, or with `netns_pid` in that process's network
    namespace), stopped by its PID."""

    def __init__(self, workdir, name: str, interfaces: list[str], ports: list[int], netns_pid: int | None = None):
        self.script, self.out = workdir / f"{name}.py", workdir / f"{name}.jsonl"
        self.script.write_text(CAPTURE)
        command = [sys.executable, str(self.script), ",".join(interfaces), ",".join(map(str, ports)), str(self.out)]
        if netns_pid is not None:
            command = ["nsenter", "-t", str(netns_pid), "-n", "--", *command]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise RuntimeError(f"capture {name} did not start: {self.process.stderr.read()[-500:]}")

    def stop(self) -> list[dict]:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]


def streams(segments: list[dict]) -> dict[tuple, bytes]:
    """Each direction of each connection (per interface): its payload bytes in capture order."""
    flows: dict[tuple, bytes] = {}
    for s in segments:
        key = (s["if"], s["src"], s["sport"], s["dst"], s["dport"])
        flows[key] = flows.get(key, b"") + bytes.fromhex(s["data"])
    return flows


# Publishes argv[1] (the marker) to the `edd` queue over plain AMQP on loopback as the app
# user (password on stdin), with a publisher confirm: on a quorum queue the confirm comes once a
# majority of the nodes holds the message, so it crossed to another node.
PUBLISH = """import sys, amqp
password = sys.stdin.read()
with amqp.Connection(host="127.0.0.1:5672", userid=sys.argv[2], password=password, virtual_host="/edd") as conn:
    channel = conn.channel()
    channel.confirm_select()
    channel.basic_publish_confirm(amqp.Message(sys.argv[1], delivery_mode=2), exchange="", routing_key="edd")
print("confirmed")
"""

TLS_APPLICATION_DATA, TLS_HANDSHAKE = b"\x17\x03\x03", b"\x16\x03"


def test_the_replication_stream_between_the_nodes_is_tls(cluster, tmp_path, request):
    d = cluster
    nodes = (d.host, *d.nodes)
    marker = f"edd-infra-plaintext-marker-{uuid.uuid4().hex}"
    links = [f"ve-{h.name}" for h in nodes]
    node_link = Capture(tmp_path, "links", links, [25672])
    try:
        loopback = Capture(tmp_path, "loopback", ["lo"], [5672], netns_pid=d.host.leader_pid)
        try:
            out = sh(
                d.host,
                f"cd /tmp && {VENV}/bin/python -c {shlex.quote(PUBLISH)} {shlex.quote(marker)} {AppUser().name}",
                input=d.secrets["appPassword"],
            )
            assert out.strip().endswith("confirmed")
            # A fresh distribution connection crosses a link: a CLI tool on the seed talking to
            # node 2 (TLS handshake from the seed's address to node 2's distribution port).
            sh(d.host, f"rabbitmq-diagnostics -q -n rabbit@{d.nodes[0].address} ping")
            time.sleep(2)
        finally:
            plain = loopback.stop()
    finally:
        between = node_link.stop()
    ours = marker.encode()
    plain_streams, link_streams = streams(plain), streams(between)
    # The control: the capture sees the marker where it travels in plaintext.
    assert any(ours in data for data in plain_streams.values()), "control failed: marker not seen on loopback"
    # Between the nodes: never in plaintext, while TLS records flow.
    assert between, "nothing captured on the nodes' distribution port"
    leaks = [key for key, data in link_streams.items() if ours in data]
    assert leaks == [], f"the marker crossed a node link in plaintext: {leaks}"
    records = [s for s in between if bytes.fromhex(s["data"]).startswith(TLS_APPLICATION_DATA)]
    assert records, "no TLS application data record seen on the distribution port"
    handshakes = [
        s
        for s in between
        if bytes.fromhex(s["data"]).startswith(TLS_HANDSHAKE)
        and s["src"] == d.host.address
        and s["dst"] == d.nodes[0].address
        and s["dport"] == 25672
    ]
    assert handshakes, "no TLS handshake from the seed's CLI tool to node 2's distribution port"
    size = sum(len(s["data"]) // 2 for s in between)
    print_line(
        request,
        f"cluster-tls capture: {len(between)} segments, {size} payload bytes on the nodes' links "
        f"(port 25672, {len(link_streams)} flows), {len(records)} starting a TLS application data "
        f"record, {len(handshakes)} handshake; loopback control {len(plain)} segments, marker seen",
    )


def test_turning_inter_node_tls_off_on_the_running_cluster_is_refused_before_anything_changes(cluster):
    """It cannot roll: the first node's script refuses while the node runs the other way, and
    names the runbook; no node's files change, the cluster stays whole, and with the setting
    back the next `up` succeeds."""
    d = cluster
    nodes = (d.host, *d.nodes)
    files = "/etc/rabbitmq/rabbitmq-env.conf /etc/rabbitmq/rabbitmq.conf /etc/rabbitmq/tls/inter_node_tls.config"
    before = {h.name: sh(h, f"sha256sum {files}") for h in nodes}
    broker = json.loads(d.stack.stack.get_config("edd-infra:broker").value)
    d.stack.set_plain({"broker": dict(broker, interNodeTls=False)})
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as failed:
            d.up()
        FIGURES["up refusing interNodeTls off"] = time.monotonic() - started
        said = str(failed.value) + "\n".join(d.output)
        assert "broker.interNodeTls turns off while this node runs with TLS distribution: this cannot roll" in said
        assert "Stop rabbitmq-server on every cluster node" in said
        assert {h.name: sh(h, f"sha256sum {files}") for h in nodes} == before
        for host in nodes:
            assert running_nodes(host) == node_names(*nodes), host.name
    finally:
        d.stack.set_plain({"broker": broker})
    result, _ = d.up()
    assert result.summary.result == "succeeded", result.summary


def stop_every_node(d) -> None:
    """The runbook's step: rabbitmq-server stopped on the other nodes, then on the broker host's."""
    for host in (*reversed(d.nodes), d.host):
        sh(host, "systemctl stop rabbitmq-server", timeout=300)


def test_the_runbook_switches_it_off_and_on_again_with_every_node_stopped_first(cluster):
    """README's runbook, both ways: every node stopped (the broker host's last), then `up`. The
    cluster comes back whole each time, plain then TLS again, and the quorum queue keeps its
    three members."""
    d = cluster
    nodes = (d.host, *d.nodes)
    everyone = node_names(*nodes)
    broker = json.loads(d.stack.stack.get_config("edd-infra:broker").value)
    try:
        for tls, proto in ((False, "error"), (True, '{ok,[["inet_tls"]]}')):
            stop_every_node(d)
            d.stack.set_plain({"broker": dict(broker, interNodeTls=tls)})
            result, seconds = d.up()
            assert result.summary.result == "succeeded", result.summary
            FIGURES[f"runbook up, interNodeTls {'on' if tls else 'off'}"] = seconds
            for host in nodes:
                assert running_nodes(host) == everyone, host.name
                assert sh(host, "rabbitmqctl -q eval 'init:get_argument(proto_dist).'").strip() == proto, host.name
            queue = next(
                q
                for q in json.loads(sh(d.host, "rabbitmqctl -q list_queues -p /edd name members --formatter json"))
                if q["name"] == "edd"
            )
            assert sorted(queue["members"]) == everyone
    finally:
        d.stack.set_plain({"broker": broker})
